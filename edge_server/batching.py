"""Dynamic batching: requests from many concurrent RPCs share one model call.

Requests carry a *key*; only requests with equal keys are batched together (the engine keys bottleneck frames
by channels and padded batch shape, images by their size, so a batch computes exactly what each request alone
would). One worker thread takes the next request, waits until ``max_batch`` requests with its key are queued
or that request has waited ``max_delay_s``, then runs them in one call and resolves each request's future.

Requests also carry a *flow* (the servicer uses the client's connection). With ``fair`` (the default) every flow
has its own queue and the worker serves the flows round-robin, oldest request first within a flow, so a client
that keeps many frames queued gets one turn per round like everyone else and cannot starve the others; it still
gets whatever capacity they leave. As in fq_codel, a flow with nothing queued whose frame arrives (a camera that
sends a frame now and then) goes ahead of the backlogged flows, and a flow just served rejoins the round only
once its batch has run. Without ``fair``, one FIFO queue for all.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
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
    flow: Hashable = None
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
        fair: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and max_delay_s >= 0")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.fair = fair
        self.batches = 0
        self.items = 0
        self._run = run
        self._on_batch = on_batch
        self._new: OrderedDict[Hashable, deque[_Request]] = OrderedDict()  # flows that had nothing queued: first
        self._old: OrderedDict[Hashable, deque[_Request]] = OrderedDict()  # backlogged flows, round-robin
        self._resting: dict[Hashable, deque[_Request]] = {}  # flows of the batch running now
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edge-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, key: Hashable, item: Any, alive: Callable[[], bool] = lambda: True, flow: Hashable = None
    ) -> Future:
        """Queue ``item`` on ``flow``'s queue; the future resolves to :class:`Done` or raises (:class:`Expired`, the
        run's error)."""
        request = _Request(key, item, alive, flow if self.fair else None)
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._queued >= self.max_queue:
                raise QueueFull(f"the server is busy: {self._queued} frames are already waiting")
            flow = request.flow
            queue = self._resting.get(flow, self._old.get(flow))
            if queue is None:
                queue = self._new.setdefault(flow, deque())
            queue.append(request)
            self._queued += 1
            self._cond.notify()
        return request.future

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _turns(self) -> list[deque[_Request]]:
        return [*self._new.values(), *self._old.values()]

    def _matching(self, key: Hashable) -> list[_Request]:
        """Up to ``max_batch`` requests with ``key`` in round-robin order: each flow's first, then seconds..."""
        rounds = sorted(
            ((depth, turn, r) for turn, q in enumerate(self._turns()) for depth, r in enumerate(q)),
            key=lambda t: (t[0], t[1]),
        )
        return [r for _, _, r in rounds if r.key == key][: self.max_batch]

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            for flow, queue in self._resting.items():  # the last batch ran: its flows rejoin the round, at the back
                if queue:
                    self._old[flow] = queue
            self._resting.clear()
            while not self._queued:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._turns()[0][0]  # the oldest request of the flow whose turn it is
            due = first.enqueued + self.max_delay_s
            while not self._closed and len(self._matching(first.key)) < self.max_batch:
                remaining = due - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._matching(first.key)
            for request in batch:  # served flows rest until the batch has run, then go to the back of the round
                queue = self._new.pop(request.flow, None) or self._old.pop(request.flow, None)
                queue = queue or self._resting[request.flow]
                queue.remove(request)
                self._resting[request.flow] = queue
            self._queued -= len(batch)
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
