"""Emulated devices for fleet benchmarks and tests: many ``InferStream`` streams from one process on ``grpc.aio``
(no thread per stream), idle (open and waiting, like cameras between frames) or paced, and a health-check probe.

A paced device sends one frame every ``period_s`` on its stream and waits for its answer; a frame refused with
RESOURCE_EXHAUSTED is sent again after the server's retry hint (``grpc-retry-pushback-ms``, as
:mod:`splitdet.mobile_client.link` does) on a new stream, or fails at once when the hint lies past its deadline; one
that meets UNAVAILABLE (a replica died or drains) is sent again after a short backoff; each frame ends answered or
failed (its deadline, another status), exactly once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitdet.mobile_client.link import RETRYABLE, ROUND_ROBIN, jittered, retry_hint_s
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc

UNAVAILABLE_BACKOFF_S = 0.2


class LoopThread:
    """An asyncio event loop on a daemon thread; :meth:`run` runs a coroutine on it and waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fleet-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def aio_channel(target: str) -> grpc.aio.Channel:
    """A plaintext aio channel of its own connection, round-robin over the target's addresses."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.service_config", ROUND_ROBIN)]
    return grpc.aio.insecure_channel(target, options=options)


class IdleStreams:
    """``count`` open ``InferStream`` streams that send nothing, over ``channels`` connections; a context manager."""

    def __init__(self, target: str, count: int, channels: int = 4) -> None:
        self.target = target
        self.count = count
        self._loop = LoopThread()
        self._release: asyncio.Event | None = None
        self._calls: list[grpc.aio.StreamStreamCall] = []
        self._channels: list[grpc.aio.Channel] = []
        self._loop.run(self._open(channels))

    async def _open(self, channels: int) -> None:
        self._release = asyncio.Event()
        self._channels = [aio_channel(self.target) for _ in range(channels)]
        stubs = [splitdet_pb2_grpc.SplitDetectionStub(c) for c in self._channels]

        async def nothing() -> AsyncIterator[pb.BottleneckFrame]:
            await self._release.wait()
            return
            yield

        for i in range(self.count):
            self._calls.append(stubs[i % channels].InferStream(nothing()))

    def ended(self) -> Counter[str]:
        """The streams that the server has ended so far, by status code."""

        async def codes() -> Counter[str]:
            return Counter([(await call.code()).name for call in self._calls if call.done()])

        return self._loop.run(codes())

    def close(self) -> None:
        async def close() -> None:
            self._release.set()
            for call in self._calls:
                call.cancel()
            for channel in self._channels:
                await channel.close()

        self._loop.run(close(), timeout_s=30)
        self._loop.close()

    def __enter__(self) -> IdleStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def health_latencies_ms(target: str, checks: int, interval_s: float = 0.02, timeout_s: float = 5.0) -> list[float]:
    """``checks`` health checks (service ""), one every ``interval_s``, on a connection of their own: each one's
    latency in ms, or ``inf`` when it failed or did not say SERVING."""
    out = []
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=True)  # connect first
        for _ in range(checks):
            start = time.perf_counter()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
                ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
            out.append((time.perf_counter() - start) * 1000 if ok else float("inf"))
            time.sleep(interval_s)
    return out


@dataclass
class Devices:
    """What paced devices saw: latency and time of each answered frame, failed frames by code, and the frame ids
    answered (to check that no frame was answered twice)."""

    latencies_ms: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # time.monotonic() of each answer
    errors: Counter = field(default_factory=Counter)
    answered_ids: list[int] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)  # retried refusals by code, not failures

    def rate(self, start: float, seconds: float) -> float:
        """Frames answered per second between ``start`` and ``seconds`` later."""
        return sum(start <= t <= start + seconds for t in self.answered_at) / seconds

    def percentiles(self) -> tuple[float, float]:
        if not self.latencies_ms:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return float(p50), float(p99)


async def paced_device(
    stub: splitdet_pb2_grpc.SplitDetectionStub,
    frame: pb.BottleneckFrame,
    first_id: int,
    period_s: float,
    stop_at: float,
    timeout_s: float,
    record: Devices,
) -> None:
    """One device on one stream: a frame every ``period_s`` (the first after a random phase) until ``stop_at``,
    each answered or failed exactly once; the stream is re-opened after a refusal or a broken link."""
    await asyncio.sleep(random.uniform(0, period_s))
    frame_id = first_id
    call: grpc.aio.StreamStreamCall | None = None
    while time.monotonic() < stop_at:
        due = time.monotonic() + period_s
        request = pb.BottleneckFrame()
        request.CopyFrom(frame)
        request.frame_id = frame_id
        call = await _one_frame(stub, call, request, timeout_s, record)
        frame_id += 1
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    if call is not None:
        await call.done_writing()


async def _one_frame(
    stub: splitdet_pb2_grpc.SplitDetectionStub,
    call: grpc.aio.StreamStreamCall | None,
    request: pb.BottleneckFrame,
    timeout_s: float,
    record: Devices,
) -> grpc.aio.StreamStreamCall | None:
    """Send ``request`` on ``call`` (a new stream when None) until answered or failed; the stream to go on with."""
    sent_at = time.monotonic()
    deadline = sent_at + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            record.errors["DEADLINE_EXCEEDED"] += 1
            return call
        if call is None:
            call = stub.InferStream(wait_for_ready=True)
        try:
            await asyncio.wait_for(call.write(request), remaining)
            response = await asyncio.wait_for(call.read(), remaining)
            if response is grpc.aio.EOF:
                raise asyncio.InvalidStateError
            record.answered_at.append(time.monotonic())
            record.latencies_ms.append((record.answered_at[-1] - sent_at) * 1000)
            record.answered_ids.append(response.frame_id)
            return call
        except TimeoutError:
            call.cancel()
            record.errors["DEADLINE_EXCEEDED"] += 1
            return None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            code = await call.code()
            wait = UNAVAILABLE_BACKOFF_S
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                wait = jittered(retry_hint_s(await call.trailing_metadata()) or wait)
            if code not in RETRYABLE or time.monotonic() + wait > deadline:
                record.errors[code.name] += 1
                return None
            call = None
            record.refusals[code.name] += 1
            await asyncio.sleep(wait)


def merge(records: list[Devices]) -> Devices:
    out = Devices()
    for r in records:
        out.latencies_ms += r.latencies_ms
        out.answered_at += r.answered_at
        out.errors += r.errors
        out.answered_ids += r.answered_ids
        out.refusals += r.refusals
    return out


async def _devices(
    target: str,
    frame: pb.BottleneckFrame,
    first: int,
    count: int,
    channels: int,
    period_s: float,
    start_at: float,
    seconds: float,
    timeout_s: float,
) -> Devices:
    record = Devices()
    links = [aio_channel(target) for _ in range(channels)]
    stubs = [splitdet_pb2_grpc.SplitDetectionStub(c) for c in links]
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    stop_at = start_at + seconds
    await asyncio.gather(
        *(
            paced_device(stubs[i % channels], frame, (first + i) * ID_STRIDE, period_s, stop_at, timeout_s, record)
            for i in range(count)
        )
    )
    for channel in links:
        await channel.close()
    return record


ID_STRIDE = 1_000_000  # device i numbers its frames from i x this: ids are unique across the fleet


def device_process(
    target: str,
    frame: bytes,
    first: int,
    count: int,
    channels: int,
    period_s: float,
    seconds: float,
    timeout_s: float,
    results,
    start,
) -> None:
    """A client process (``spawn``) of ``count`` paced devices: puts "ready", waits for the start time on
    ``start``, runs, puts its :class:`Devices`."""
    results.put("ready")
    start_at = start.get()
    message = pb.BottleneckFrame.FromString(frame)
    args = (target, message, first, count, channels, period_s, start_at, seconds, timeout_s)
    results.put(asyncio.run(_devices(*args)))


class DeviceFleet:
    """``count`` paced devices (a frame each ``period_s``) in ``processes`` client processes against ``target``,
    started together; :meth:`run` runs them for ``seconds`` and returns what they saw."""

    def __init__(
        self,
        target: str,
        frame: pb.BottleneckFrame,
        count: int,
        processes: int,
        period_s: float,
        seconds: float,
        timeout_s: float,
        channels_per_process: int = 8,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._results = context.Queue()
        self._starts = [context.Queue() for _ in range(processes)]
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        firsts = [sum(shares[:i]) for i in range(processes)]
        data = frame.SerializeToString()
        self._procs = [
            context.Process(
                target=device_process,
                args=(target, data, first, n, channels_per_process, period_s, seconds, timeout_s, self._results, q),
                name=f"devices-{i}",
            )
            for i, (first, n, q) in enumerate(zip(firsts, shares, self._starts, strict=True))
        ]
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            assert self._results.get(timeout=300) == "ready"
        self.seconds = seconds
        self.timeout_s = timeout_s

    def start(self, delay_s: float = 1.0) -> float:
        """Start every device ``delay_s`` from now; the start time (``time.monotonic``)."""
        start_at = time.monotonic() + delay_s
        for q in self._starts:
            q.put(start_at)
        return start_at

    def results(self) -> Devices:
        """Wait for every process; the devices' merged record."""
        records = [self._results.get(timeout=self.seconds + self.timeout_s + 120) for _ in self._procs]
        for proc in self._procs:
            proc.join()
        return merge(records)
