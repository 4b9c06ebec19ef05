"""Server counters for the GetStats RPC: frames, bytes, errors by status code and per-stage latency."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

from proto import splitdet_pb2 as pb

STAGES = ("queue", "decode", "tail", "encode", "total")


class Stats:
    """Thread-safe counters. ``frames``/``images`` count answered frames, ``errors`` refused ones;
    latencies cover the last ``window`` answered frames; ``in_flight`` and ``streams`` are frames being worked on
    and streams open right now."""

    def __init__(self, window: int = 1024) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._frames = 0
        self._images = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._in_flight = 0
        self._streams = 0
        self._errors: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {stage: deque(maxlen=window) for stage in STAGES}

    def begin(self) -> None:
        """A frame arrived and is being worked on."""
        with self._lock:
            self._in_flight += 1

    def end(self, bytes_in: int, response: pb.InferResponse | None, total_ms: float, error: str | None) -> None:
        """A frame counted by :meth:`begin` is done: answered with ``response`` or refused with ``error``."""
        with self._lock:
            self._in_flight -= 1
            self._bytes_in += bytes_in
            if error is not None:
                self._errors[error] += 1
                return
            self._frames += 1
            self._images += len(response.images)
            self._bytes_out += response.ByteSize()
            t = response.timings
            for stage, ms in zip(STAGES, (t.queue_ms, t.decode_ms, t.tail_ms, t.encode_ms, total_ms), strict=True):
                self._latency[stage].append(ms)

    def stream_opened(self) -> None:
        with self._lock:
            self._streams += 1

    def stream_closed(self) -> None:
        with self._lock:
            self._streams -= 1

    def error(self, code: str) -> None:
        """A call refused before it reached the servicer (e.g. by the token check)."""
        with self._lock:
            self._errors[code] += 1

    def snapshot(self) -> pb.Stats:
        with self._lock:
            stages = []
            for stage, values in self._latency.items():
                v = np.array(values, dtype=np.float64)
                p50, p95, mean = (np.percentile(v, 50), np.percentile(v, 95), v.mean()) if len(v) else (0, 0, 0)
                stages.append(pb.StageStats(stage=stage, count=len(v), p50_ms=p50, p95_ms=p95, mean_ms=mean))
            return pb.Stats(
                frames=self._frames,
                images=self._images,
                bytes_in=self._bytes_in,
                bytes_out=self._bytes_out,
                errors=sum(self._errors.values()),
                errors_by_code=dict(self._errors),
                stages=stages,
                in_flight=self._in_flight,
                streams=self._streams,
                uptime_s=time.monotonic() - self._started,
            )
