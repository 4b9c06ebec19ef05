"""Server counters for the GetStats RPC: frames, bytes, errors by status code and per-stage latency.

Every event is also recorded into the server's Prometheus :class:`splitdet.edge_server.metrics.Metrics` here, so
GetStats and ``/metrics`` count the same things at the same points.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

from splitdet.edge_server.metrics import Metrics
from splitdet.proto import splitdet_pb2 as pb

SERVER_STAGES = ("queue", "decode", "tail", "encode", "total")


class Stats:
    """Thread-safe counters. ``frames``/``images`` count answered frames, ``errors`` refused ones;
    latencies cover the last ``window`` answered frames; ``in_flight`` and ``streams`` are frames being worked on
    and streams open right now. ``method`` arguments are RPC short names (``Infer``); ``metrics`` gets every event
    too, with these labels."""

    def __init__(self, window: int = 1024) -> None:
        self.metrics = Metrics()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._frames = 0
        self._images = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._in_flight = 0
        self._begun = 0
        self._streams = 0
        self._errors: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {stage: deque(maxlen=window) for stage in SERVER_STAGES}

    def begin(self, method: str) -> None:
        """A frame arrived and is being worked on."""
        with self._lock:
            self._in_flight += 1
            self._begun += 1
            self.metrics.in_flight.labels(method).inc()

    def end(
        self, method: str, bytes_in: int, response: pb.InferResponse | None, total_ms: float, error: str | None
    ) -> None:
        """A frame counted by :meth:`begin` is done: answered with ``response`` or refused with ``error``."""
        m = self.metrics
        with self._lock:
            self._in_flight -= 1
            self._bytes_in += bytes_in
            m.in_flight.labels(method).dec()
            m.received_bytes.labels(method).inc(bytes_in)
            if error is not None:
                self._errors[error] += 1
                m.errors.labels(method, error).inc()
                return
            bytes_out = response.ByteSize()
            self._frames += 1
            self._images += len(response.images)
            self._bytes_out += bytes_out
            m.frames.labels(method).inc()
            m.sent_bytes.labels(method).inc(bytes_out)
            t = response.timings
            for stage, ms in zip(
                SERVER_STAGES, (t.queue_ms, t.decode_ms, t.tail_ms, t.encode_ms, total_ms), strict=True
            ):
                self._latency[stage].append(ms)
                m.stage_seconds.labels(stage).observe(ms / 1000)

    @property
    def activity(self) -> int:
        """Frames and calls begun so far (any outcome): it moves while the server works."""
        return self._begun + sum(self._errors.values())

    def stream_opened(self, method: str) -> None:
        with self._lock:
            self._streams += 1
            self.metrics.streams.labels(method).inc()

    def stream_closed(self, method: str) -> None:
        with self._lock:
            self._streams -= 1
            self.metrics.streams.labels(method).dec()

    def error(self, method: str, code: str) -> None:
        """A call refused before it reached the servicer's frame path (e.g. by the token check)."""
        with self._lock:
            self._errors[code] += 1
            self.metrics.errors.labels(method, code).inc()

    def refused(self, method: str, limit: str) -> None:
        """A stream or frame refused for capacity (``limit``: ``streams`` or ``frames``) or because the server
        drains (``draining``); its status is counted by :meth:`end` or :meth:`error`."""
        self.metrics.refused.labels(method, limit).inc()

    def batch(self, size: int) -> None:
        """The model ran one batch of ``size`` frames."""
        self.metrics.batch_size.observe(size)

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
