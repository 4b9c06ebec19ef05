"""Flow control for file sources: how many frames may be in flight so that each is answered within its deadline.

The server answers a stream in order, so a frame sent behind ``k`` frames of this client waits about ``k`` service
times before its own. :class:`Window` admits a frame only when ``(frames ahead + 1) x service time`` fits in
:data:`BUDGET` of the deadline, with the service time measured from the answers (the time between an answer and
the later of its frame's send and the previous answer, smoothed, but never below the latest sample, so the window
shrinks as soon as answers slow down). On top of that an AIMD window starts at one frame, grows by one per frame
answered in time and halves when a frame fails, up to ``limit`` (``--window``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

BUDGET = 0.8  # share of the deadline the frames ahead plus the frame itself may take
SMOOTHING = 0.3  # weight of a new service-time sample


class Window:
    """Slots for frames in flight: :meth:`acquire` before reading a frame, :meth:`release` once it is answered.
    Without a ``deadline_s`` (no server: local mode) only ``limit`` and the AIMD window count."""

    def __init__(self, limit: int, deadline_s: float | None) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.in_flight = 0
        self.congestion = 1.0  # the AIMD window
        self.service_s: float | None = None  # smoothed service time per frame
        self.latest_s: float | None = None  # the latest sample
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Frames allowed in flight now (at least 1: a frame that alone cannot make it still gets its try)."""
        size = min(self.limit, int(self.congestion))
        if self.service_s is not None and self.deadline_s is not None:
            service = max(self.service_s, self.latest_s)
            if service > 0:
                size = min(size, math.floor(BUDGET * self.deadline_s / service))
        return max(1, size)

    def acquire(self, stopped: Callable[[], bool], poll_s: float = 0.1) -> bool:
        """Wait for a slot; False when ``stopped()`` turned true first."""
        with self._cond:
            while self.in_flight >= self.size:
                if stopped():
                    return False
                self._cond.wait(poll_s)
            self.in_flight += 1
            return True

    def release(self, service_s: float | None = None, failed: bool = False) -> None:
        """A frame is done: answered after ``service_s`` of service, failed (its deadline or the link), or never
        sent (skipped, local; no sample)."""
        with self._cond:
            self.in_flight -= 1
            if service_s is not None:
                self.latest_s = service_s
                self.service_s = (
                    service_s if self.service_s is None else SMOOTHING * service_s + (1 - SMOOTHING) * self.service_s
                )
            if failed:
                self.congestion = max(1.0, self.congestion / 2)
            elif service_s is not None:
                self.congestion = min(float(self.limit), self.congestion + 1)
            self._cond.notify_all()
