"""Dynamic batching: requests from many concurrent RPCs share one model call.

Requests carry a *key*; only requests with equal keys are batched together (the engine keys bottleneck frames
by channels and padded batch shape, images by their size, so a batch computes exactly what each request alone
would). One worker thread takes the oldest request, waits until ``max_batch`` requests with its key are queued
or the oldest has waited ``max_delay_s``, then runs them in one call and resolves each request's future.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The bounded queue is full; the caller should back off."""


class Expired(RuntimeError):
    """The request's RPC ended (deadline passed or cancelled) before it reached the model."""


class Closed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Done:
    """A resolved request: its result, time spent queued and time of the batch call it was part of."""

    value: Any
    queue_ms: float
    run_ms: float
    batch_size: int


@dataclass
class _Request:
    key: Hashable
    item: Any
    alive: Callable[[], bool]
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class Batcher:
    """Queue plus one worker thread; ``run(key, items)`` returns one result per item, in order; ``on_batch(size)``
    is told the size of each batch that ran."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], list[Any]],
        max_batch: int = 1,
        max_delay_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and max_delay_s >= 0")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.batches = 0
        self.items = 0
        self._run = run
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edge-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, item: Any, alive: Callable[[], bool] = lambda: True) -> Future:
        """Queue ``item``; the future resolves to :class:`Done` or raises (:class:`Expired`, the run's error)."""
        request = _Request(key, item, alive)
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._queue)} frames are already waiting")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _matching(self, key: Hashable) -> list[_Request]:
        return [r for r in self._queue if r.key == key][: self.max_batch]

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            due = first.enqueued + self.max_delay_s
            while not self._closed and len(self._matching(first.key)) < self.max_batch:
                remaining = due - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._matching(first.key)
            for request in batch:
                self._queue.remove(request)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = []
            for request in batch:
                if not request.future.set_running_or_notify_cancel():
                    continue
                if request.alive():
                    live.append(request)
                else:
                    request.future.set_exception(Expired("the frame's deadline passed while it was queued"))
            if live:
                self._execute(live)

    def _execute(self, requests: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            results = self._run(requests[0].key, [r.item for r in requests])
            if len(results) != len(requests):
                raise RuntimeError(f"the batch call returned {len(results)} results for {len(requests)} requests")
        except Exception as e:
            if len(requests) == 1:
                requests[0].future.set_exception(e)
                return
            # Run one by one, so only the request that causes the error fails.
            for request in requests:
                self._execute([request])
            return
        run_ms = (time.perf_counter() - start) * 1000
        self.batches += 1
        self.items += len(requests)
        if self._on_batch is not None:
            self._on_batch(len(requests))
        for request, value in zip(requests, results, strict=True):
            queue_ms = (start - request.enqueued) * 1000
            request.future.set_result(Done(value, queue_ms, run_ms, len(requests)))
