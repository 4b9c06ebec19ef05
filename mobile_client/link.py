"""The gRPC link to the edge server: channel (TLS, mutual TLS, bearer token, load balancing), retries, deadlines.

The bearer token travels as gRPC call credentials composed with the TLS channel credentials, which gRPC never
sends over a plaintext channel; only ``allow_insecure_token`` (loopback tests) sends it as plain metadata.

``target`` is any gRPC target: ``HOST:PORT``, or a group of replicas, ``dns:///NAME:PORT`` (every address the name
resolves to) or ``ipv4:HOST:P1,HOST:P2,...``; a group is balanced round-robin, call by call (a stream stays on one
replica until it breaks). Every server names itself and its model in each call's initial metadata: once
:attr:`Link.fingerprint` is set (by the handshake), a call or stream answered by a replica that runs another model
is refused (FAILED_PRECONDITION) and its frames are tried again, on the next replica.

A frame waits for the server to be reachable (``wait_for_ready``; the channel reconnects with exponential
backoff, 0.1 s growing to 1 s) until its deadline. A call or stream that ends with ``UNAVAILABLE`` (the server
stopped, restarted or drains; the next try goes to another replica) is retried with exponential backoff, at most
``attempts`` times per frame. ``RESOURCE_EXHAUSTED`` (the server is at capacity) is retried after the server's hint
(``grpc-retry-pushback-ms``, plus up to a fifth at random, so refused clients do not come back together) until
the frame's deadline (a unary frame whose hint lies past its deadline fails at once, RESOURCE_EXHAUSTED); without a
hint it counts as an attempt with exponential backoff. A frame that is not answered
by then is failed, never dropped.

:class:`StreamLink` keeps one bidirectional stream open, matches responses to frames by ``frame_id``, and
re-opens the stream when it breaks, re-sending the frames that were on the wire.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
GROUP_SCHEMES = ("dns:", "ipv4:", "ipv6:")  # targets that name several replicas
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
FINGERPRINT_KEY = "splitdet-fingerprint"  # the server's model, in each call's initial metadata
SERVER_KEY = "splitdet-server"  # which server answered
MISMATCH = "FAILED_PRECONDITION"


class LinkError(RuntimeError):
    """A call or frame that failed; ``code`` is the gRPC status name (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, attempts: int = 1) -> LinkError:
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        return cls(error.code().name, f"{error.details() or 'no details'}{suffix}")


@dataclass(frozen=True)
class LinkConfig:
    """Where the server is and how to talk to it."""

    target: str
    tls_ca: Path | None = None
    token: str | None = None
    tls_cert: Path | None = None  #: client certificate (PEM) for mutual TLS, with ``tls_key``
    tls_key: Path | None = None
    allow_insecure_token: bool = False  #: send the token as metadata over plaintext (loopback tests only)
    timeout_s: float = 10.0
    attempts: int = 5
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_message_mb: int = 16

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the token only on a plaintext channel that allows it (TLS sends call credentials)."""
        if self.token and not self.tls and self.allow_insecure_token:
            return (("authorization", f"Bearer {self.token}"),)
        return ()


def retry_hint_s(metadata) -> float | None:
    """The server's retry hint (``grpc-retry-pushback-ms``) in seconds, None when there is none."""
    value = dict(metadata or ()).get(RETRY_PUSHBACK_KEY)
    try:
        return int(value) / 1000 if value is not None else None
    except ValueError:
        return None


def jittered(seconds: float) -> float:
    """``seconds`` plus up to a fifth at random."""
    return seconds * random.uniform(1.0, 1.2)


def replica_mismatch(metadata, fingerprint: str | None) -> LinkError | None:
    """The error for a replica whose initial ``metadata`` names a model other than ``fingerprint``; None when it
    matches, when nothing is expected yet, or when the call ended before the server said anything."""
    sent = dict(metadata or ())
    found = sent.get(FINGERPRINT_KEY)
    if fingerprint is None or found is None or found == fingerprint:
        return None
    server = sent.get(SERVER_KEY, "a replica")
    return LinkError(MISMATCH, f"replica {server} runs fingerprint {found}, this client expects {fingerprint}; refused")


@dataclass
class Reply:
    """A server response with the client-side send and receive times (``time.monotonic`` seconds).

    On a stream, ``sent_at`` is when the request left or when the previous answer arrived, whichever is later.
    """

    response: pb.InferResponse
    sent_at: float
    received_at: float


def channel_options(target: str, max_message_mb: int) -> list[tuple[str, int | str]]:
    """Message limits, fast reconnects, round-robin over every address of a group target (``dns:``, ``ipv4:``,
    ``ipv6:``), and a connection of its own (gRPC would share one between the channels of a process; the server
    queues frames per connection)."""
    limit = max_message_mb * 1024 * 1024
    options: list[tuple[str, int | str]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if target.startswith(GROUP_SCHEMES):
        options.append(("grpc.service_config", ROUND_ROBIN))
    return options


def open_channel(config: LinkConfig) -> grpc.Channel:
    """A TLS channel when ``tls_ca`` or ``tls_cert`` is set (the server's certificate must chain to ``tls_ca``, or
    to the system's roots without it), presenting ``tls_cert`` when given and carrying the token as call
    credentials; else plaintext, where a token is refused unless ``allow_insecure_token``."""
    options = channel_options(config.target, config.max_message_mb)
    if not config.tls:
        if config.token and not config.allow_insecure_token:
            raise ValueError("a bearer token needs TLS (it would travel in plaintext)")
        return grpc.insecure_channel(config.target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(config.tls_ca).read_bytes() if config.tls_ca else None,
        private_key=Path(config.tls_key).read_bytes() if config.tls_key else None,
        certificate_chain=Path(config.tls_cert).read_bytes() if config.tls_cert else None,
    )
    if config.token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(config.token))
    return grpc.secure_channel(config.target, credentials, options=options)


class Link:
    """Channel and stub to one edge server (or a load-balanced group of replicas). ``fingerprint``, once set, is
    the model every replica must run."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.channel = open_channel(config)
        self.stub = splitdet_pb2_grpc.SplitDetectionStub(self.channel)
        self.fingerprint: str | None = None

    def deadline(self) -> float:
        """The monotonic time by which a frame started now must have its answer."""
        return time.monotonic() + self.config.timeout_s

    def deadline_error(self) -> LinkError:
        return LinkError("DEADLINE_EXCEEDED", f"no reply within {self.config.timeout_s:g} s")

    def model_info(self) -> pb.ModelInfo:
        """The GetModelInfo handshake; fails fast (after its retries) when no server is there."""
        return self.call(self.stub.GetModelInfo, pb.ModelInfoRequest(), self.deadline(), wait_for_ready=False).response

    def call(self, method: Callable, request, deadline: float, wait_for_ready: bool = True) -> Reply:
        """A unary call, retried until ``deadline``: after the server's hint on RESOURCE_EXHAUSTED, with
        exponential backoff on another :data:`RETRYABLE` status or a replica that runs another model."""
        backoff = self.config.backoff_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.deadline_error()
            sent_at = time.monotonic()
            try:
                response, call = method.with_call(
                    request, timeout=remaining, metadata=self.config.metadata, wait_for_ready=wait_for_ready
                )
                error, hint = replica_mismatch(call.initial_metadata(), self.fingerprint), None
                if error is None:
                    return Reply(response, sent_at, time.monotonic())
            except grpc.RpcError as e:
                error, hint = replica_mismatch(e.initial_metadata(), self.fingerprint), None
                if error is None:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise self.deadline_error() from None
                    if e.code() not in RETRYABLE:
                        raise LinkError.from_rpc(e, attempt + 1) from None
                    error = LinkError.from_rpc(e)
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        hint = retry_hint_s(e.trailing_metadata())
                    if hint is not None and time.monotonic() + hint > deadline:
                        raise LinkError(
                            error.code, f"{error.message} (its retry hint is past the frame's deadline)"
                        ) from None
            if hint is None:
                attempt += 1
                if attempt >= self.config.attempts:
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise LinkError(error.code, error.message + suffix)
            wait = jittered(hint) if hint is not None else backoff
            time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
            if hint is None:
                backoff = min(backoff * 2, self.config.max_backoff_s)

    def stream(self, method: Callable) -> StreamLink:
        """A :class:`StreamLink` over a bidirectional streaming method of the stub."""
        return StreamLink(method, self.config, self.fingerprint)

    def close(self) -> None:
        self.channel.close()


@dataclass
class _Item:
    frame_id: int
    request: object
    future: Future = field(default_factory=Future)
    attempts: int = 0
    sent_at: float = 0.0


class StreamLink:
    """One bidirectional stream shared by many frames, re-opened whenever it breaks: after the server's retry hint
    when it refused for capacity, else with exponential backoff.

    :meth:`submit` queues a request and returns a future of its :class:`Reply`; the future fails with
    :class:`LinkError` once the frame was on the wire of ``attempts`` broken streams (refusals with a retry hint do
    not count), or on a non-retryable error. A stream whose server runs another model than ``fingerprint`` is
    cancelled before any answer is read and counts as a broken one. The caller enforces each frame's deadline and
    calls :meth:`cancel` when it gives up on a frame.
    """

    def __init__(self, method: Callable, config: LinkConfig, fingerprint: str | None = None) -> None:
        self._method = method
        self._config = config
        self._fingerprint = fingerprint
        self._cond = threading.Condition()
        self._pending: deque[_Item] = deque()
        self._inflight: dict[int, _Item] = {}
        self._generation = 0
        self._closing = False
        self._call = None
        self._last_received = 0.0
        self._thread = threading.Thread(target=self._run, name="stream-link", daemon=True)
        self._thread.start()

    def submit(self, frame_id: int, request) -> Future:
        item = _Item(frame_id, request)
        with self._cond:
            if self._closing:
                raise RuntimeError("stream link is closed")
            self._pending.append(item)
            self._cond.notify_all()
        return item.future

    def cancel(self, frame_id: int, error: LinkError) -> None:
        """Forget a frame (its deadline passed): it is not sent again and a late response is ignored."""
        with self._cond:
            item = self._inflight.pop(frame_id, None)
            for queued in self._pending:
                if queued.frame_id == frame_id:
                    item = queued
                    self._pending.remove(queued)
                    break
        if item is not None and not item.future.done():
            item.future.set_exception(error)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def _requests(self, generation: int) -> Iterator:
        """The request iterator of one stream; it ends when the stream is replaced or the link closes."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing or self._generation != generation)
                if self._closing or self._generation != generation:
                    return
                item = self._pending.popleft()
                item.sent_at = time.monotonic()
                self._inflight[item.frame_id] = item
            yield item.request

    def _run(self) -> None:
        backoff = self._config.backoff_s
        while (call := self._open()) is not None:
            error: grpc.RpcError | LinkError | None = replica_mismatch(call.initial_metadata(), self._fingerprint)
            if error is not None:
                call.cancel()
            else:
                try:
                    for response in call:
                        self._resolve(response, time.monotonic())
                        backoff = self._config.backoff_s
                except grpc.RpcError as e:
                    error = e
            wait = self._recover(error)
            if wait is not None:
                with self._cond:
                    self._cond.wait_for(lambda: self._closing, timeout=wait if wait > 0 else backoff)
                if wait == 0:
                    backoff = min(backoff * 2, self._config.max_backoff_s)

    def _open(self) -> Iterator[pb.InferResponse] | None:
        """A new stream once there is something to send; None when the link closes."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closing)
            if self._closing:
                self._fail_all(LinkError("CANCELLED", "the client is shutting down"))
                return None
            requests = self._requests(self._generation)
            self._last_received = 0.0
            self._call = self._method(requests, metadata=self._config.metadata, wait_for_ready=True)
            return self._call

    def _resolve(self, response: pb.InferResponse, received_at: float) -> None:
        with self._cond:
            item = self._inflight.pop(response.frame_id, None)
        if item is not None and not item.future.done():
            # The server answers a stream in order: until the previous answer came back, this frame was
            # queued behind it on the server, which is not network time.
            item.future.set_result(Reply(response, max(item.sent_at, self._last_received), received_at))
        self._last_received = received_at

    def _recover(self, failure: grpc.RpcError | LinkError | None) -> float | None:
        """After a stream ended: fail or re-queue its unanswered frames. How long the next stream should wait:
        the server's jittered retry hint, 0 for the exponential backoff, None for not at all."""
        with self._cond:
            self._generation += 1
            self._call = None
            self._cond.notify_all()
            stranded = sorted(self._inflight.values(), key=lambda i: i.frame_id)
            self._inflight.clear()
            hint = None
            if isinstance(failure, LinkError):  # a replica with another model: try the next one
                error, retryable = failure, True
            elif failure is not None:
                error, retryable = LinkError.from_rpc(failure), failure.code() in RETRYABLE
                if failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    hint = retry_hint_s(failure.trailing_metadata())
            elif stranded:
                error, retryable = LinkError("UNAVAILABLE", "the server ended the stream before answering"), True
            else:
                return None
            if stranded and not retryable:
                # The server answers a stream in order and ends it at the first frame it refuses.
                refused = stranded.pop(0)
                if not refused.future.done():
                    refused.future.set_exception(error)
            for item in reversed(stranded):
                if hint is None:
                    item.attempts += 1
                if item.attempts < self._config.attempts and not self._closing:
                    self._pending.appendleft(item)
                elif not item.future.done():
                    suffix = f" (after {item.attempts} attempts)" if item.attempts > 1 else ""
                    item.future.set_exception(LinkError(error.code, error.message + suffix))
            if not retryable:
                return None
            return jittered(hint) if hint is not None else 0.0

    def _fail_all(self, error: LinkError) -> None:
        for item in [*self._pending, *self._inflight.values()]:
            if not item.future.done():
                item.future.set_exception(error)
        self._pending.clear()
        self._inflight.clear()
