"""Admission control: how many streams may be open and how many frames may be in progress, the retry hint sent with
a refusal, and the drain that precedes a shutdown.

A stream costs memory only (no thread), so the limits count what costs: open streams (``max_streams``) and frames
accepted but not yet answered (``max_frames``: being decoded, queued for the model, in a batch or being encoded).
Beyond either limit a request is refused at once with RESOURCE_EXHAUSTED and a retry hint
(:data:`RETRY_PUSHBACK_KEY` trailing metadata, in milliseconds). Refused frames get return slots one measured time
per frame apart, the first once the frames in progress are done: like tickets of a virtual queue, so that retries
come back at the rate the model frees room instead of all at once (which would cost the CPU that the model needs).
While draining, new streams and frames are refused with
UNAVAILABLE, so clients go to another replica. Used from the server's event loop only: no locks.
"""

from __future__ import annotations

import asyncio
import time

import grpc

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRPC's own name for a server's retry hint
MIN_RETRY_MS = 20
MAX_RETRY_MS = 10_000
STREAM_RETRY_MS = 1000  # a refused stream: open streams free up as devices leave, on no schedule
SMOOTHING = 0.2  # weight of a new time-per-frame sample
DRAINING = "the server is shutting down; connect to another replica"


class Refused(Exception):
    """A request refused with a chosen status code; ``retry_ms`` is the hint for when to try again (None: none)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_ms = retry_ms


class Admission:
    """Counts open streams and frames in progress against their limits; ``draining`` once :meth:`drain` ran."""

    def __init__(self, max_streams: int, max_frames: int) -> None:
        if max_streams < 1 or max_frames < 1:
            raise ValueError("need max_streams >= 1 and max_frames >= 1")
        self.max_streams = max_streams
        self.max_frames = max_frames
        self.streams = 0
        self.frames = 0
        self.frame_ms = 0.0  # smoothed model time per frame (a batch's time over its size)
        self._last_slot = 0.0  # time.monotonic() of the latest return slot handed out
        self.draining = False
        self._drained: asyncio.Future | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def drained(self) -> asyncio.Future:
        """A future that completes when the drain begins (created on first use, in the event loop)."""
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    def open_stream(self) -> None:
        """Count a new stream; raises :class:`Refused` at the limit or while draining."""
        self._refuse_if_draining()
        if self.streams >= self.max_streams:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds its limit of {self.max_streams} open streams; retry later or elsewhere",
                STREAM_RETRY_MS,
            )
        self.streams += 1
        self._idle.clear()

    def close_stream(self) -> None:
        self.streams -= 1
        self._check_idle()

    def begin_frame(self) -> None:
        """Count a frame in progress; raises :class:`Refused` at the limit or while draining."""
        self._refuse_if_draining()
        if self.frames >= self.max_frames:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is busy: {self.frames} frames are in progress (its limit); retry after the hint",
                self.retry_ms(),
            )
        self.frames += 1
        self._idle.clear()

    def end_frame(self) -> None:
        self.frames -= 1
        self._check_idle()

    def observe(self, run_ms: float, batch_size: int) -> None:
        """A frame was answered from a batch of ``batch_size`` that took ``run_ms``."""
        sample = run_ms / max(1, batch_size)
        self.frame_ms = sample if not self.frame_ms else SMOOTHING * sample + (1 - SMOOTHING) * self.frame_ms

    def retry_ms(self) -> int:
        """When a refused frame should come back: its return slot, one time per frame after the latest slot handed
        out and no sooner than the frames in progress are done; in milliseconds from now, clipped."""
        now = time.monotonic()
        per_frame = self.frame_ms / 1000
        slot = max(now + self.frames * per_frame, self._last_slot + per_frame)
        slot = min(slot, now + MAX_RETRY_MS / 1000)
        self._last_slot = slot
        return int(max(MIN_RETRY_MS, (slot - now) * 1000))

    def drain(self) -> None:
        """From now on refuse new streams and frames (UNAVAILABLE); streams waiting for a frame end."""
        self.draining = True
        future = self.drained()
        if not future.done():
            future.set_result(None)

    async def idle(self) -> None:
        """Wait until no stream is open and no frame is in progress."""
        await self._idle.wait()

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise Refused(grpc.StatusCode.UNAVAILABLE, DRAINING)

    def _check_idle(self) -> None:
        if not self.streams and not self.frames:
            self._idle.set()
