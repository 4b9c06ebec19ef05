"""The ``auto`` mode: per-frame choice between split, offload and local from measured costs.

From its own recent frames the policy keeps:

* the link: RTT = the intercept of network time against bytes over the last few remote frames whenever they
  carried messages of different sizes (split and offload frames: at the start and at every probe; kept until the
  next such fit), before that the smallest network time among the smaller messages; uplink throughput = bytes
  sent / (network time - RTT) summed over the last ``recent`` remote frames only, so a change of the link rate
  shows within a few frames;
* device costs: head + filter, bottleneck encode, JPEG encode, local tail; the filter's skip rate;
* server costs: total server time per remote mode; message sizes per remote mode.

Predicted latency per frame (a filtered frame stops after head + filter; a split frame reused as static,
``--skip-static``, too, but the prediction does not count on it: how still the scene was says little about the next
frames):

* local   = head + (1 - skip) * local_tail
* split   = head + (1 - skip) * (encode + bottleneck_bytes / throughput + RTT + server)
* offload = jpeg_encode + jpeg_bytes / throughput + RTT + server

The modes are ``choices``: all three, or split and offload for a device without the tail (the ONNX client).
Every mode is tried once at the start and the policy decides as soon as it has seen them; then every ``every``
frames (default: every frame) it switches to the fastest prediction when it beats the current one by more than
``hysteresis``; every ``probe_every`` frames one frame goes through another mode (in turn) so its estimate stays
fresh. A failed remote frame marks the server as down
(remote predictions are infinite) until a remote frame succeeds again.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable

from splitdet.mobile_client.pipeline import FrameResult

CHOICES = ("split", "offload", "local")
COSTS = ("head", "encode", "jpeg", "local_tail", "split_server", "offload_server", "split_bytes", "offload_bytes")


def link_estimate(samples: list[tuple[int, float]], recent: int | None = None) -> tuple[float, float] | None:
    """``(rtt_ms, bytes_per_ms)`` from ``(bytes sent, network ms)`` samples (oldest first), or None without
    samples: the RTT from all of them, the throughput from the last ``recent`` (all when None)."""
    if not samples:
        return None
    by_size = sorted(samples)
    rtt = min(ms for _, ms in by_size[: max(1, len(by_size) // 2)])
    return rtt, throughput(samples[-recent:] if recent else samples, rtt)


def throughput(samples: list[tuple[int, float]], rtt: float) -> float:
    """Bytes per ms over ``samples`` of ``(bytes sent, network ms)`` once the RTT is taken off each."""
    transfer_ms = sum(max(ms - rtt, 0.0) for _, ms in samples)
    sent = sum(n for n, _ in samples)
    return sent / max(transfer_ms, 1e-3)


def fitted_rtt(samples: list[tuple[int, float]], spread: float = 1.5) -> float | None:
    """The RTT as the intercept of network ms against bytes (least squares), when the sizes differ by ``spread``
    times or more and the slope is positive; clamped to [0, smallest network time]. None otherwise."""
    sizes = [n for n, _ in samples]
    if len(samples) < 2 or min(sizes) <= 0 or max(sizes) < spread * min(sizes):
        return None
    mean_n = statistics.fmean(sizes)
    mean_ms = statistics.fmean(ms for _, ms in samples)
    var = sum((n - mean_n) ** 2 for n in sizes)
    slope = sum((n - mean_n) * (ms - mean_ms) for n, ms in samples) / var
    if slope <= 0:
        return None
    return min(max(0.0, mean_ms - slope * mean_n), min(ms for _, ms in samples))


class AutoPolicy:
    """Thread-safe: :meth:`choose` runs on the head thread, :meth:`observe` on the reporting thread."""

    def __init__(
        self,
        every: int = 1,
        probe_every: int = 30,
        hysteresis: float = 0.1,
        history: int = 8,
        use_filter: bool = True,
        log: Callable[[str], None] = print,
        recent: int = 3,
        link_history: int = 64,
        choices: tuple[str, ...] = CHOICES,
    ) -> None:
        self.every = every
        self.probe_every = probe_every
        self.hysteresis = hysteresis
        self.log = log
        self.use_filter = use_filter
        self.recent = recent
        unknown = set(choices) - set(CHOICES)
        if unknown or "split" not in choices:
            raise ValueError(f"auto chooses split and some of {', '.join(CHOICES)}, got {', '.join(choices)}")
        self.choices = tuple(m for m in CHOICES if m in choices)
        self.current = "split"
        self.switches: list[tuple[int, str, str]] = []  #: (frame, from, to) of every switch
        self._lock = threading.Lock()
        self._costs: dict[str, deque[float]] = {key: deque(maxlen=history) for key in COSTS}
        self._link: deque[tuple[int, float]] = deque(maxlen=link_history)
        self._skips: deque[bool] = deque(maxlen=4 * history)
        self._server_down = False
        self._rtt: float | None = None
        self._untried = list(self.choices)
        self._decided = False  # the first evaluation after every mode was tried
        self._chosen = 0
        self._probe_turn = 0

    def choose(self, index: int) -> str:
        """The mode for frame ``index``."""
        with self._lock:
            self._chosen += 1
            if self._untried:
                return self._untried.pop(0)
            if self._chosen % self.every == 0 or not self._decided:
                self._decided = self._evaluate(index) or self._decided
            if self._chosen % self.probe_every == 0:
                others = [m for m in self.choices if m != self.current]
                self._probe_turn += 1
                return others[self._probe_turn % len(others)]
            return self.current

    def observe(self, result: FrameResult) -> None:
        """Learn from a finished frame."""
        if result.mode not in self.choices:
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
            if result.skipped or result.reused:  # not sent: nothing to learn about the link or the server
                return
            if result.mode == "local":
                self._costs["local_tail"].append(t["tail"])
                return
            self._server_down = False
            self._costs["encode" if result.mode == "split" else "jpeg"].append(t["encode"])
            self._costs[f"{result.mode}_server"].append(result.server_ms or 0.0)
            self._costs[f"{result.mode}_bytes"].append(result.sent_bytes)
            self._link.append((result.sent_bytes, t["network"]))
            rtt = fitted_rtt(list(self._link)[-2 * self.recent :])
            if rtt is not None:
                self._rtt = rtt

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
        link = self._link_estimate()
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

    def _link_estimate(self) -> tuple[float, float] | None:
        samples = list(self._link)
        if self._rtt is None or not samples:
            return link_estimate(samples, self.recent)
        return self._rtt, throughput(samples[-self.recent :], self._rtt)

    def _evaluate(self, index: int) -> bool:
        """Switch when another mode is predicted faster by the hysteresis margin; whether every mode is predicted."""
        predicted = self._predict()
        known = {mode: ms for mode, ms in predicted.items() if ms is not None and mode in self.choices}
        if not known:
            return False
        best = min(known, key=known.get)
        current = known.get(self.current, math.inf)
        margin = self.hysteresis if self._decided else 0.0  # the first decision needs no margin
        if best == self.current or known[best] >= (1 - margin) * current:
            return len(known) == len(self.choices)
        link = self._link_estimate()
        numbers = ", ".join(f"{mode} {ms:.1f}" for mode, ms in sorted(known.items()))
        link_text = f"rtt {link[0]:.2f} ms, uplink {link[1] * 8 / 1000:.1f} Mbit/s" if link else "link unmeasured"
        skip = sum(self._skips) / len(self._skips) if self._skips else 0.0
        self.log(
            f"auto: frame {index}: {self.current} -> {best} (predicted ms/frame: {numbers}; {link_text}; "
            f"skip rate {skip:.2f}{'; server down' if self._server_down else ''})"
        )
        self.switches.append((index, self.current, best))
        self.current = best
        return len(known) == len(self.choices)
