"""Kernel link emulation with netem: the edge server in its own network namespace, reached over a veth pair.

    benchmark's namespace (client)                       namespace sbench-PID (edge server)
    sbPIDc  10.213.X.2/30  <------------ veth ------------>  sbPIDs  10.213.X.1/30
    netem on egress: uplink rate, RTT/2, loss               netem on egress: downlink rate, RTT/2, loss

The client stays in the benchmark's own namespace: a namespace belongs to a thread, and gRPC opens its sockets on
threads of its own, so an in-process client cannot be moved into another namespace reliably. Loss here is real
packet loss that TCP recovers from; jitter follows netem's own rules. The byte counters are the veth's, so they
include Ethernet, IP and TCP headers and the ACKs.

Needs root, ``ip`` and ``tc`` (iproute2) and a kernel with the ``sch_netem`` module; :func:`unavailable` and
:class:`NetemError` say in one line what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class NetemError(RuntimeError):
    """netem cannot be set up here; the message is one line."""


def unavailable() -> str | None:
    """Why netem cannot be used here, or None when it may (the kernel's sch_netem is only found out by trying)."""
    if os.geteuid() != 0:
        return "netem needs root (network namespaces and tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"netem needs {' and '.join(missing)} (iproute2)"
    return None


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        if "qdisc kind is unknown" in detail:
            detail += " (this kernel has no sch_netem)"
        raise NetemError(f"`{' '.join(cmd)}` failed: {detail}")


def netem_args(mbps: float | None, delay_ms: float, jitter_ms: float, loss: float) -> list[str]:
    """The ``netem`` qdisc options of one direction: delay (and jitter), rate in kbit/s when limited, loss in %."""
    args = ["netem", "delay", f"{delay_ms:g}ms"]
    if jitter_ms > 0:
        args.append(f"{jitter_ms:g}ms")
    if mbps is not None:
        args += ["rate", f"{mbps * 1000:g}kbit"]
    if loss > 0:
        args += ["loss", f"{loss * 100:g}%"]
    return args


class NetemLink:
    """The namespace, the veth pair and netem on both ends; a context manager that removes them all on exit."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.namespace = f"sbench-{pid}"
        self.client_if, self.server_if = f"sb{pid}c", f"sb{pid}s"
        subnet = f"10.213.{pid % 256}"
        self.server_host, self.client_host = f"{subnet}.1", f"{subnet}.2"

    def __enter__(self) -> NetemLink:
        reason = unavailable()
        if reason is not None:
            raise NetemError(reason)
        try:
            _run(["ip", "netns", "add", self.namespace])
            _run(["ip", "link", "add", self.client_if, "type", "veth", "peer", "name", self.server_if])
            _run(["ip", "link", "set", self.server_if, "netns", self.namespace])
            _run(["ip", "addr", "add", f"{self.client_host}/30", "dev", self.client_if])
            _run(["ip", "-n", self.namespace, "addr", "add", f"{self.server_host}/30", "dev", self.server_if])
            _run(["ip", "link", "set", self.client_if, "up"])
            _run(["ip", "-n", self.namespace, "link", "set", self.server_if, "up"])
            _run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])
            self.configure(None, None, 0.0)
        except NetemError:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespace (which deletes the veth pair with it); quiet when already gone."""
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.client_if], capture_output=True)

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the server's namespace."""
        return ["ip", "netns", "exec", self.namespace, *cmd]

    def configure(
        self, up_mbps: float | None, down_mbps: float | None, delay_ms: float, jitter_ms: float = 0.0, loss: float = 0.0
    ) -> None:
        """Shape both directions: each end's egress gets its rate, ``delay_ms`` one way, jitter and loss."""
        up, down = (netem_args(mbps, delay_ms, jitter_ms, loss) for mbps in (up_mbps, down_mbps))
        _run(["tc", "qdisc", "replace", "dev", self.client_if, "root", *up])
        _run(["tc", "-n", self.namespace, "qdisc", "replace", "dev", self.server_if, "root", *down])

    def counters(self) -> tuple[int, int]:
        """Bytes sent (uplink) and received (downlink) by the client's end of the veth pair, headers included."""
        stats = Path("/sys/class/net") / self.client_if / "statistics"
        return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())
