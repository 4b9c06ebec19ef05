"""The ``auto`` mode: per-frame choice between split, offload and local from measured costs.

From its own recent frames the policy keeps:

* the link: RTT = the smallest network time among the smaller messages, uplink throughput = bytes sent /
  (network time - RTT) summed over recent remote frames;
* device costs: head + filter, bottleneck encode, JPEG encode, local tail; the filter's skip rate;
* server costs: total server time per remote mode; message sizes per remote mode.

Predicted latency per frame (a filtered frame stops after head + filter):

* local   = head + (1 - skip) * local_tail
* split   = head + (1 - skip) * (encode + bottleneck_bytes / throughput + RTT + server)
* offload = jpeg_encode + jpeg_bytes / throughput + RTT + server

Every mode is tried once at the start; every ``every`` frames the policy switches to the fastest prediction
when it beats the current one by more than ``hysteresis``; every ``probe_every`` frames one frame goes
through another mode (in turn) so its estimate stays fresh. A failed remote frame marks the server as down
(remote predictions are infinite) until a remote frame succeeds again.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable

from mobile_client.pipeline import FrameResult

CHOICES = ("split", "offload", "local")
COSTS = ("head", "encode", "jpeg", "local_tail", "split_server", "offload_server", "split_bytes", "offload_bytes")


def link_estimate(samples: list[tuple[int, float]]) -> tuple[float, float] | None:
    """``(rtt_ms, bytes_per_ms)`` from ``(bytes sent, network ms)`` samples, or None without samples."""
    if not samples:
        return None
    by_size = sorted(samples)
    rtt = min(ms for _, ms in by_size[: max(1, len(by_size) // 2)])
    transfer_ms = sum(max(ms - rtt, 0.0) for _, ms in samples)
    sent = sum(n for n, _ in samples)
    return rtt, sent / max(transfer_ms, 1e-3)


class AutoPolicy:
    """Thread-safe: :meth:`choose` runs on the head thread, :meth:`observe` on the reporting thread."""

    def __init__(
        self,
        every: int = 10,
        probe_every: int = 30,
        hysteresis: float = 0.15,
        history: int = 16,
        use_filter: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.every = every
        self.probe_every = probe_every
        self.hysteresis = hysteresis
        self.log = log
        self.use_filter = use_filter
        self.current = "split"
        self._lock = threading.Lock()
        self._costs: dict[str, deque[float]] = {key: deque(maxlen=history) for key in COSTS}
        self._link: deque[tuple[int, float]] = deque(maxlen=history)
        self._skips: deque[bool] = deque(maxlen=4 * history)
        self._server_down = False
        self._untried = list(CHOICES)
        self._chosen = 0
        self._probe_turn = 0

    def choose(self, index: int) -> str:
        """The mode for frame ``index``."""
        with self._lock:
            self._chosen += 1
            if self._untried:
                return self._untried.pop(0)
            if self._chosen % self.every == 0:
                self._evaluate(index)
            if self._chosen % self.probe_every == 0:
                others = [m for m in CHOICES if m != self.current]
                self._probe_turn += 1
                return others[self._probe_turn % len(others)]
            return self.current

    def observe(self, result: FrameResult) -> None:
        """Learn from a finished frame."""
        if result.mode not in CHOICES:
            return
        t = result.timing_ms
        with self._lock:
            if result.error is not None:
                if result.mode != "local":
                    self._server_down = True
                return
            if result.mode in ("split", "local"):
                self._costs["head"].append(t.get("head", 0.0) + t.get("filter", 0.0))
                if self.use_filter:
                    self._skips.append(result.skipped)
            if result.skipped:
                return
            if result.mode == "local":
                self._costs["local_tail"].append(t["tail"])
                return
            self._server_down = False
            self._costs["encode" if result.mode == "split" else "jpeg"].append(t["encode"])
            self._costs[f"{result.mode}_server"].append(result.server_ms or 0.0)
            self._costs[f"{result.mode}_bytes"].append(result.sent_bytes)
            self._link.append((result.sent_bytes, t["network"]))

    def predict(self) -> dict[str, float | None]:
        """Predicted ms per frame for each mode; None while a needed cost has not been measured yet."""
        with self._lock:
            return self._predict()

    def _median(self, key: str) -> float | None:
        values = self._costs[key]
        return statistics.median(values) if values else None

    def _predict(self) -> dict[str, float | None]:
        m = self._median
        skip = sum(self._skips) / len(self._skips) if self._skips else 0.0
        link = link_estimate(list(self._link))
        out: dict[str, float | None] = {"split": None, "offload": None, "local": None}
        if m("head") is not None and m("local_tail") is not None:
            out["local"] = m("head") + (1 - skip) * m("local_tail")
        if self._server_down:
            out["split"] = out["offload"] = math.inf
            return out
        if link is not None:
            rtt, throughput = link
            if None not in (m("head"), m("encode"), m("split_bytes"), m("split_server")):
                send = m("encode") + m("split_bytes") / throughput + rtt + m("split_server")
                out["split"] = m("head") + (1 - skip) * send
            if None not in (m("jpeg"), m("offload_bytes"), m("offload_server")):
                out["offload"] = m("jpeg") + m("offload_bytes") / throughput + rtt + m("offload_server")
        return out

    def _evaluate(self, index: int) -> None:
        predicted = self._predict()
        known = {mode: ms for mode, ms in predicted.items() if ms is not None}
        if not known:
            return
        best = min(known, key=known.get)
        current = known.get(self.current, math.inf)
        if best == self.current or known[best] >= (1 - self.hysteresis) * current:
            return
        link = link_estimate(list(self._link))
        numbers = ", ".join(f"{mode} {ms:.1f}" for mode, ms in sorted(known.items()))
        link_text = f"rtt {link[0]:.2f} ms, uplink {link[1] * 8 / 1000:.1f} Mbit/s" if link else "link unmeasured"
        skip = sum(self._skips) / len(self._skips) if self._skips else 0.0
        self.log(
            f"auto: frame {index}: {self.current} -> {best} (predicted ms/frame: {numbers}; {link_text}; "
            f"skip rate {skip:.2f}{'; server down' if self._server_down else ''})"
        )
        self.current = best
