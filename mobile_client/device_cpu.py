"""A weak device on a strong machine: hold a process to a CPU quota of F cores (no torch here).

Mechanisms, in the order ``auto`` tries them:

* ``cgroup1``: the cgroup v1 ``cpu`` controller (``/sys/fs/cgroup/cpu``): a child group with
  ``cpu.cfs_quota_us = F x cpu.cfs_period_us``; needs write access (root);
* ``cgroup2``: the unified hierarchy (``/sys/fs/cgroup/cgroup.controllers`` lists ``cpu``): a child group with
  ``cpu.max = "F x period period"``; needs write access (root);
* ``cpulimit``: the ``cpulimit`` program (SIGSTOP/SIGCONT duty cycle) on the process, as a last resort.

The CFS period is :data:`PERIOD_US` (10 ms, not the kernel's default 100 ms), so a short burst of device work
(a head of a few ms) is slowed evenly rather than run at full speed and then frozen for most of 100 ms.
When no mechanism is available, :func:`detect` raises a one-line :class:`SetupError`: nothing pretends.

    quota = DeviceQuota(detect("auto"), 0.25)
    quota.add(pid)   # every thread of pid, now and later, shares 0.25 of one core
    ...
    quota.close()    # the process goes back to the root group, the group is removed
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from splitdet.mobile_client.settings import SetupError

MECHANISMS = ("cgroup1", "cgroup2", "cpulimit")
PERIOD_US = 10_000
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _writable(path: Path) -> bool:
    return path.exists() and os.access(path, os.W_OK)


def _cgroup1(root: Path) -> str | None:
    """Why the cgroup v1 cpu controller cannot be used here (None when it can)."""
    cpu = root / "cpu"
    if not (cpu / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {cpu}"
    if not os.access(cpu, os.W_OK):
        return f"{cpu} is not writable (run as root)"
    return None


def _cgroup2(root: Path) -> str | None:
    controllers = root / "cgroup.controllers"
    if not controllers.exists():
        return f"no cgroup v2 hierarchy at {root}"
    if "cpu" not in controllers.read_text().split():
        return f"cgroup v2 at {root} has no cpu controller"
    if not _writable(root / "cgroup.subtree_control"):
        return f"{root} is not writable (run as root)"
    return None


def _cpulimit(which: Callable[[str], str | None]) -> str | None:
    return None if which("cpulimit") else "no cpulimit program on PATH (apt-get install cpulimit)"


def detect(choice: str = "auto", root: Path | None = None, which: Callable[[str], str | None] | None = None) -> str:
    """The mechanism to use: ``choice`` itself when it works, or the first that works for ``auto``; a one-line
    :class:`SetupError` saying why when none does. ``root`` (default :data:`CGROUP_ROOT`) and ``which`` (default
    ``shutil.which``) are for tests."""
    root = CGROUP_ROOT if root is None else root
    which = shutil.which if which is None else which
    if choice not in ("auto", *MECHANISMS):
        raise SetupError(f"unknown CPU quota mechanism {choice!r} (use auto, {', '.join(MECHANISMS)})")
    reasons = {
        "cgroup1": lambda: _cgroup1(root),
        "cgroup2": lambda: _cgroup2(root),
        "cpulimit": lambda: _cpulimit(which),
    }
    tried = MECHANISMS if choice == "auto" else (choice,)
    why = {}
    for name in tried:
        why[name] = reasons[name]()
        if why[name] is None:
            return name
    listed = "; ".join(f"{name}: {reason}" for name, reason in why.items())
    raise SetupError(f"cannot hold the device to a CPU quota ({listed})")


def parse_cores(text: str, cpus: int | None = None) -> list[float]:
    """``--device-cpu F[,F...]``: positive core counts, at most the machine's CPUs; one-line SetupError."""
    try:
        cores = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SetupError(f"--device-cpu must be a comma list of core counts, got {text!r}") from None
    cpus = cpus or os.cpu_count() or 1
    if not cores or any(not 0.01 <= c <= cpus for c in cores):
        raise SetupError(f"--device-cpu values must be in [0.01, {cpus}] (cores of this machine)")
    return cores


def add_quota_argument(parser: argparse.ArgumentParser) -> None:
    """``--device-quota``: how ``--device-cpu`` is enforced (mobile-client and split-bench alike)."""
    parser.add_argument(
        "--device-quota",
        choices=("auto", *MECHANISMS),
        default="auto",
        help="how --device-cpu is enforced; auto tries them in this order (default: %(default)s)",
    )


def check_quota(device_cpu: str | float | None, mechanism: str) -> None:
    """Refuse bad ``--device-cpu`` values, and a quota this machine cannot enforce rather than run at full speed."""
    if device_cpu is not None:
        parse_cores(str(device_cpu))
        detect(mechanism)


class DeviceQuota:
    """A CPU quota of ``cores`` for the processes :meth:`add` puts under it; :meth:`close` undoes it."""

    def __init__(
        self,
        mechanism: str,
        cores: float,
        root: Path | None = None,
        name: str | None = None,
        period_us: int = PERIOD_US,
    ) -> None:
        root = CGROUP_ROOT if root is None else root
        self.mechanism = mechanism
        self.cores = cores
        self.period_us = period_us
        self._root = root
        self._pids: list[int] = []
        self._limiters: list[subprocess.Popen] = []
        self.group: Path | None = None
        name = name or f"splitdet-device-{os.getpid()}-{id(self):x}"
        if mechanism == "cgroup1":
            self.group = root / "cpu" / name
            self.group.mkdir(exist_ok=True)
            (self.group / "cpu.cfs_period_us").write_text(str(period_us))
            (self.group / "cpu.cfs_quota_us").write_text(str(max(1000, round(cores * period_us))))
        elif mechanism == "cgroup2":
            subtree = root / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            self.group = root / name
            self.group.mkdir(exist_ok=True)
            (self.group / "cpu.max").write_text(f"{max(1000, round(cores * period_us))} {period_us}")
        elif mechanism != "cpulimit":
            raise SetupError(f"unknown CPU quota mechanism {mechanism!r}")

    @property
    def description(self) -> str:
        if self.mechanism == "cgroup1":
            return f"cgroup v1 cpu.cfs_quota_us {round(self.cores * self.period_us)} per {self.period_us} us period"
        if self.mechanism == "cgroup2":
            return f"cgroup v2 cpu.max {round(self.cores * self.period_us)} {self.period_us}"
        return f"cpulimit -l {round(self.cores * 100)} (SIGSTOP/SIGCONT duty cycle)"

    def add(self, pid: int) -> None:
        """Put process ``pid`` (all its threads) under the quota."""
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(pid))
        else:
            cmd = ["cpulimit", "-p", str(pid), "-l", str(max(1, round(self.cores * 100))), "-z", "-q"]
            self._limiters.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._pids.append(pid)

    def close(self) -> None:
        """Release every process (back to the root group, or cpulimit stopped) and remove the group."""
        for limiter in self._limiters:
            if limiter.poll() is None:
                limiter.send_signal(signal.SIGTERM)
            limiter.wait()
        if self.group is not None and self.group.exists():
            top = self.group.parent
            for pid in (self.group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # it exited meanwhile
                    (top / "cgroup.procs").write_text(pid)
            self.group.rmdir()
        for pid in self._pids:  # cpulimit may leave a process stopped
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self._pids.clear()

    def __enter__(self) -> DeviceQuota:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
