"""Userspace link shaper: a TCP proxy on loopback that gives the connections through it a link's rate, delay,
jitter and loss, and counts the bytes that cross it. It needs no privileges.

Each accepted connection is relayed to ``target`` by two one-way pipes, uplink (client -> target) and downlink
(target -> client). A pipe cuts what it reads into packets of at most :data:`MSS` bytes and gives each one a
delivery time:

* **rate**: one token bucket per direction, shared by all connections (they share the link), filled at the
  link rate and ``burst_bytes`` deep. A packet leaves the bottleneck once the bucket holds its bytes, in arrival
  order. With the default depth 0 every packet waits for its own serialization time, as with netem's ``rate``,
  so a transfer of B bytes takes B / rate. A trace-driven direction (:class:`Trace`, mahimahi's format) instead
  delivers up to 1500 bytes at each delivery opportunity of the trace.
* **delay**: ``delay_ms`` one way (the benchmark uses RTT / 2 in each direction) plus a uniform draw in
  ± ``jitter_ms``; a packet is never delivered before the one ahead of it, as on a TCP path.
* **loss**, as TCP would make it look: a lost packet (probability ``loss`` per packet and direction) arrives
  ``rto_ms`` later than it would have (default max(200 ms, 2 × RTT): Linux's minimum retransmission timeout, or
  two round trips on slow paths), its bytes cross the bottleneck twice, and the packets behind it wait for it
  (head-of-line blocking).

Delivery times are absolute, so the writer sends every packet that is due whenever it wakes up: the one-way delay
is a pipeline and a late wake-up of the event loop never lowers the throughput. A pipe stops reading once it holds
``queue_bytes`` (the bottleneck's buffer), so the sender feels backpressure.

    with LinkShaper(("127.0.0.1", server_port), up_mbps=2, down_mbps=10, delay_ms=10) as shaper:
        connect_to(f"127.0.0.1:{shaper.port}")
        print(shaper.up_bytes, shaper.down_bytes)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MSS = 1448  #: packet payload: a 1500-byte Ethernet MTU minus IPv4 and TCP headers with timestamps
TRACE_PACKET_BYTES = 1500  #: bytes one delivery opportunity of a mahimahi trace carries
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Trace:
    """A mahimahi link trace: each line is a millisecond timestamp at which one 1500-byte packet may be delivered.

    The trace repeats with the period of its last timestamp.
    """

    name: str
    times_ms: tuple[int, ...]

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace file; ``ValueError`` (one line) when it is not one."""
        path = Path(path)
        try:
            lines = path.read_text().split()
        except OSError as e:
            raise ValueError(f"cannot read trace {path}: {e.strerror}") from None
        try:
            times = tuple(int(line) for line in lines)
        except ValueError:
            raise ValueError(f"trace {path}: every line must be an integer millisecond timestamp") from None
        if not times or times[-1] <= 0 or min(times) < 0 or list(times) != sorted(times):
            raise ValueError(f"trace {path}: needs non-decreasing timestamps >= 0 ending after 0 ms")
        return cls(path.name, times)

    @property
    def period_ms(self) -> int:
        return self.times_ms[-1]

    @property
    def mean_mbps(self) -> float:
        return len(self.times_ms) * TRACE_PACKET_BYTES * 8 / (self.period_ms * 1000)


class _Bucket:
    """Fixed-rate bottleneck: a token bucket ``burst`` bytes deep; tokens go negative while a packet waits."""

    def __init__(self, mbps: float, burst_bytes: int) -> None:
        self._rate = mbps * 1e6 / 8  # bytes per second
        self._burst = float(burst_bytes)
        self._tokens = float(burst_bytes)
        self._last = 0.0
        self._free = 0.0  # when the packet ahead has left

    def depart(self, now: float, size: int) -> float:
        t = max(now, self._free)
        self._tokens = min(self._burst, self._tokens + (t - self._last) * self._rate)
        self._last = t
        self._tokens -= size
        self._free = t + max(0.0, -self._tokens) / self._rate
        return self._free


class _TraceLink:
    """Trace-driven bottleneck: delivery opportunities of 1500 bytes each; an unused opportunity is lost."""

    def __init__(self, trace: Trace, origin: float) -> None:
        self._times = trace.times_ms
        self._period = trace.period_ms
        self._origin = origin
        self._next = 0  # absolute index (counting repeats) of the next unused opportunity
        self._room = 0  # bytes left in the opportunity before it
        self._room_at = float("-inf")  # and its time

    def _time(self, index: int) -> float:
        cycle, i = divmod(index, len(self._times))
        return self._origin + (cycle * self._period + self._times[i]) / 1000

    def _first_at_or_after(self, t: float) -> int:
        cycle, within = divmod((t - self._origin) * 1000, self._period)
        return int(cycle) * len(self._times) + bisect.bisect_left(self._times, within)

    def depart(self, now: float, size: int) -> float:
        left, depart = size, now
        if self._room > 0 and self._room_at >= now:
            take = min(left, self._room)
            self._room -= take
            left -= take
            depart = self._room_at
        index = max(self._next, self._first_at_or_after(now))
        while left > 0:
            take = min(left, TRACE_PACKET_BYTES)
            left -= take
            self._room, self._room_at = TRACE_PACKET_BYTES - take, self._time(index)
            depart = self._room_at
            index += 1
        self._next = index
        return depart


def trace_delivery(trace: Trace, origin: float, start: float, nbytes: int) -> float:
    """The earliest time a direction driven by ``trace`` (started at ``origin``, seconds on the same clock as
    ``start``) can have delivered ``nbytes`` handed to it at ``start``: the ceil(nbytes / 1500)-th delivery
    opportunity at or after ``start`` (packets ahead of them and the one-way delay not counted)."""
    link = _TraceLink(trace, origin)
    first = link._first_at_or_after(start)
    return link._time(first + max(1, -(-nbytes // TRACE_PACKET_BYTES)) - 1)


@dataclass(frozen=True)
class RateSchedule:
    """A fixed-rate bottleneck whose rate changes over time: ``steps`` of (start second, Mbit/s) from the
    shaper's start, the first at 0; ``20:20,0.5:20,20:20`` is 20 Mbit/s for 20 s, 0.5 for 20 s, 20 for 20 s."""

    steps: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> RateSchedule:
        """``MBPS:SECONDS,...``; ``ValueError`` (one line) when it is not one."""
        steps, start = [], 0.0
        try:
            for part in text.split(","):
                rate, seconds = (float(v) for v in part.split(":"))
                if rate <= 0 or seconds <= 0:
                    raise ValueError
                steps.append((start, rate))
                start += seconds
        except ValueError:
            message = f"a rate schedule is MBPS:SECONDS[,MBPS:SECONDS...] with positive numbers, got {text!r}"
            raise ValueError(message) from None
        return cls((*steps, (start, steps[-1][1])))

    @property
    def duration_s(self) -> float:
        return self.steps[-1][0]

    def rate_at(self, t: float) -> float:
        """Mbit/s at ``t`` seconds from the start (the last rate holds after the end)."""
        return self.steps[max(0, bisect.bisect_right([s for s, _ in self.steps], t) - 1)][1]

    @property
    def label(self) -> str:
        parts = [f"{r:g}" for _, r in self.steps[:-1]]
        return "schedule " + "→".join(parts) + " Mbps"


class _Scheduled:
    """A bottleneck at the :class:`RateSchedule`'s rate when each packet starts crossing (depth 0)."""

    def __init__(self, schedule: RateSchedule, origin: float) -> None:
        self._schedule = schedule
        self._origin = origin
        self._free = 0.0

    def depart(self, now: float, size: int) -> float:
        t = max(now, self._free)
        self._free = t + size * 8 / (self._schedule.rate_at(t - self._origin) * 1e6)
        return self._free


class _Unlimited:
    def depart(self, now: float, size: int) -> float:
        return now


@dataclass
class _Direction:
    """One direction of the link: when a packet read now is delivered, before the in-order rule."""

    bottleneck: _Bucket | _TraceLink | _Scheduled | _Unlimited
    delay_s: float
    jitter_s: float
    loss: float
    rto_s: float
    rng: random.Random

    def arrival(self, now: float, size: int) -> float:
        depart = self.bottleneck.depart(now, size)
        arrive = depart + max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))
        if self.loss > 0 and self.rng.random() < self.loss:
            self.bottleneck.depart(depart, size)  # the retransmission crosses the bottleneck again
            arrive += self.rto_s
        return arrive


class _Pipe:
    """Reads from one socket, holds each packet until its delivery time, writes it to the other socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: _Direction,
        queue_bytes: int,
        delivered: Callable[[int], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._direction = direction
        self._limit = queue_bytes
        self._delivered = delivered
        self._packets: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._eof = False
        self._last = 0.0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            data = await self._reader.read(READ_SIZE)
            if not data:
                break
            now = loop.time()
            for start in range(0, len(data), MSS):
                packet = data[start : start + MSS]
                self._last = max(self._last, self._direction.arrival(now, len(packet)))
                self._packets.append((self._last, packet))
            self._queued += len(data)
            if self._queued >= self._limit:
                self._room.clear()
            self._arrived.set()
        self._eof = True
        self._arrived.set()

    async def deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while self._packets or not self._eof:
            if not self._packets:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            wait = self._packets[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            now = loop.time()
            due = []
            while self._packets and self._packets[0][0] <= now:
                due.append(self._packets.popleft()[1])
            data = b"".join(due)
            self._delivered(len(data))  # counted before the peer can read it
            self._writer.write(data)
            self._queued -= len(data)
            if self._queued < self._limit:
                self._room.set()
            await self._writer.drain()
        if self._writer.can_write_eof():
            self._writer.write_eof()


class LinkShaper:
    """A shaped TCP path to ``target``, listening on ``host``:``port`` (0 picks a free port, see :attr:`port`).

    Rates are in Mbit/s (None: unlimited), ``up_trace``/``down_trace`` replace a direction's rate, ``delay_ms`` and
    ``jitter_ms`` apply to each direction, ``loss`` is the probability per packet and direction; ``schedule`` (a
    :class:`RateSchedule`) replaces both rates. ``up_bytes`` and ``down_bytes`` count the bytes delivered in each
    direction; ``connections`` the connections open now; ``origin`` is when traces and schedules start
    (``time.monotonic()`` seconds).
    """

    def __init__(
        self,
        target: tuple[str, int],
        up_mbps: float | None = None,
        down_mbps: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        rto_ms: float | None = None,
        burst_bytes: int = 0,
        up_trace: Trace | None = None,
        down_trace: Trace | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        queue_bytes: int = 1 << 20,
        seed: int = 0,
        schedule: RateSchedule | None = None,
    ) -> None:
        checks = [
            (all(r is None or r > 0 for r in (up_mbps, down_mbps)), "rates must be positive"),
            (up_mbps is None or up_trace is None, "give the uplink a rate or a trace, not both"),
            (down_mbps is None or down_trace is None, "give the downlink a rate or a trace, not both"),
            (delay_ms >= 0 and jitter_ms >= 0, "delay and jitter must be >= 0"),
            (0.0 <= loss <= 1.0, "loss must be in [0, 1]"),
            (burst_bytes >= 0 and queue_bytes >= MSS, f"need burst_bytes >= 0 and queue_bytes >= {MSS}"),
            (schedule is None or (up_mbps, down_mbps, up_trace, down_trace) == (None,) * 4, "a schedule or rates"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.target = target
        self.host = host
        self.port = port
        self.up_bytes = 0
        self.down_bytes = 0
        self.connections = 0
        self.origin = 0.0
        self._schedule = schedule
        self._rates = ((up_mbps, up_trace), (down_mbps, down_trace))
        self._delay_s = delay_ms / 1000
        self._jitter_s = jitter_ms / 1000
        self._loss = loss
        self._rto_s = (rto_ms if rto_ms is not None else max(200.0, 4 * delay_ms)) / 1000
        self._burst = burst_bytes
        self._queue_bytes = queue_bytes
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._error: OSError | None = None

    def __enter__(self) -> LinkShaper:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LinkShaper:
        """Listen and relay on a background thread; raises ``OSError`` when the address cannot be bound."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="link-shaper", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection, and end the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def _direction(self, mbps: float | None, trace: Trace | None, origin: float) -> _Direction:
        if self._schedule is not None:
            bottleneck: _Bucket | _TraceLink | _Scheduled | _Unlimited = _Scheduled(self._schedule, origin)
        elif trace is not None:
            bottleneck = _TraceLink(trace, origin)
        elif mbps is not None:
            bottleneck = _Bucket(mbps, self._burst)
        else:
            bottleneck = _Unlimited()
        return _Direction(bottleneck, self._delay_s, self._jitter_s, self._loss, self._rto_s, self._rng)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        origin = self.origin = loop.time()
        self._up, self._down = (self._direction(mbps, trace, origin) for mbps, trace in self._rates)
        try:
            server = loop.run_until_complete(asyncio.start_server(self._relay, self.host, self.port))
        except OSError as e:
            self._error = e
            loop.close()
            ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close(server))
            loop.close()

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def _count_up(self, n: int) -> None:
        self.up_bytes += n

    def _count_down(self, n: int) -> None:
        self.down_bytes += n

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._pump(client_reader, client_writer)
        except asyncio.CancelledError:
            pass  # the shaper is stopping; ending normally keeps Python 3.11's stream callback from raising
        finally:
            self._tasks.discard(task)

    async def _pump(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self.connections += 1
        up = _Pipe(client_reader, target_writer, self._up, self._queue_bytes, self._count_up)
        down = _Pipe(target_reader, client_writer, self._down, self._queue_bytes, self._count_down)
        try:
            async with asyncio.TaskGroup() as group:
                for pipe in (up, down):
                    group.create_task(pipe.receive())
                    group.create_task(pipe.deliver())
        except* OSError:
            pass  # a peer reset its connection: drop both sides, as a broken path would
        finally:
            for writer in (client_writer, target_writer):
                with contextlib.suppress(OSError):
                    writer.close()
            self.connections -= 1
