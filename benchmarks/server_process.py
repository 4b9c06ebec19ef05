"""``edge-server`` as a child process on loopback, for benchmarks and fault tests: start, RSS, SIGKILL."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or stayed silent instead of listening; the message ends with its last log line."""


class ServerProcess:
    """``python -m splitdet.edge_server ARGS`` started and ready (its ``listening on`` line read); a context manager.

    ``--host 127.0.0.1`` and ``--port 0`` are added unless ``args`` names them; OpenMP gets ``threads`` threads;
    ``wrap`` may prefix the command (e.g. ``ip netns exec NS``). Its log goes to a temporary file (read it with
    :meth:`log`), so a chatty server never blocks on a full pipe.
    """

    def __init__(
        self,
        args: list[str],
        ready_timeout_s: float = 120.0,
        threads: int = 1,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "splitdet.edge_server", *args]
        if "--port" not in args:
            argv += ["--port", "0"]
        if "--host" not in args:
            argv += ["--host", "127.0.0.1"]
        host = argv[argv.index("--host") + 1]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            wrap(argv) if wrap else argv, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        port = self._wait_ready(ready_timeout_s)
        if isinstance(port, str):
            lines = self.log().strip().splitlines()
            self.__exit__()
            raise ServerStartError(f"edge-server did not start ({port}): {lines[-1] if lines else 'no output'}")
        self.port = port
        self.pid = self.proc.pid
        self.target = f"{host}:{port}"

    def _wait_ready(self, timeout_s: float) -> int | str:
        """The port from the ``listening on`` line, or why there is none (its exit status, or silence)."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if match := re.fullmatch(r"listening on .*:(\d+)\n", line):
                        return int(match.group(1))
                    if not line:
                        try:
                            return f"exit status {self.proc.wait(timeout=10)}"
                        except subprocess.TimeoutExpired:
                            return "it closed its output"
        return f"not listening after {timeout_s:g} s"

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB, from ``/proc/PID/status`` (VmRSS, VmHWM)."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))

    def kill(self) -> None:
        """SIGKILL: the server dies on the spot, mid-frame."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.proc.stdout.close()
        self._log.close()
