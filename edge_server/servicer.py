"""The gRPC servicer (``grpc.aio``): a thin layer from requests to the engine and back.

Split path, top to bottom in :meth:`Servicer.split_frame`: check the fingerprint ->
``splitdet.common.wire.decode_frame`` (on the decode/encode thread pool) -> tail (through the batcher, queued per client
connection,
:meth:`grpc.aio.ServicerContext.peer`, so that the batcher can serve connections round-robin) ->
``splitdet.common.wire.encode_detections`` (on the pool). The offload path in :meth:`Servicer.image_frame` is the same
with the image decoder and the whole model. The event loop itself only parses, admits and awaits, so an open stream
costs no thread and health checks never wait behind frames.

Every call first sends initial metadata naming this server (:data:`SERVER_KEY`) and its model
(:data:`FINGERPRINT_KEY`), so a client balancing over replicas can refuse one that runs another model. Streams and
frames pass :class:`splitdet.edge_server.admission.Admission`: beyond its limits they are refused at once with
RESOURCE_EXHAUSTED and a retry hint; while the server drains, with UNAVAILABLE, and a stream waiting for its next
frame ends at once.

Every failure becomes a gRPC status with a message and the server keeps serving. In a stream, a bad frame ends
the stream with that frame's status (frames before it were already answered); the client opens a new stream.
Request bytes that do not parse are INVALID_ARGUMENT too (:func:`method_handlers` parses them itself; gRPC's own
parsing would answer INTERNAL), and status messages are clipped to :data:`MAX_DETAILS` characters, so a message
quoting a hostile frame never outgrows the client's metadata limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from splitdet.common.wire import (
    FORMAT_VERSION,
    QUANTIZATION_TO_PB,
    FrameError,
    RetiredCodecError,
    accepted_codecs,
    decode_frame,
    encode_detections,
)
from splitdet.edge_server.admission import DRAINING, RETRY_PUSHBACK_KEY, Admission, Refused
from splitdet.edge_server.auth import HANDLER_FACTORIES
from splitdet.edge_server.batching import Batcher, Closed, Done, Expired, QueueFull
from splitdet.edge_server.engine import BatchKey, Engine, ImageError
from splitdet.edge_server.stats import Stats
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc

log = logging.getLogger("edge_server")

SERVICE = pb.DESCRIPTOR.services_by_name["SplitDetection"]
SERVICE_NAME = SERVICE.full_name
BOTTLENECK_SHAPE_RULE = "C x (H/4+4) x (W/4+4) of the padded batch"
MAX_DETAILS = 1000  # characters of a status message; gRPC clients refuse trailers over 16 KiB
FINGERPRINT_KEY = "splitdet-fingerprint"  # initial metadata of every call: the model this server runs
SERVER_KEY = "splitdet-server"  # initial metadata of every call: which server answers (host:port)

ERROR_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (RetiredCodecError, grpc.StatusCode.FAILED_PRECONDITION),  # before FrameError, its base
    (FrameError, grpc.StatusCode.INVALID_ARGUMENT),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Expired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Closed, grpc.StatusCode.UNAVAILABLE),
)

Handle = Callable[[Any, grpc.aio.ServicerContext], Awaitable[pb.InferResponse]]


@dataclass(frozen=True)
class Unparsable:
    """Request bytes that are not a message of the method's request type."""

    size: int
    error: str
    frame_id: int = 0

    def ByteSize(self) -> int:  # the name of the protobuf method it stands in for
        return self.size


def _parser(message_type: type[Message]) -> Callable[[bytes], Message | Unparsable]:
    def parse(data: bytes) -> Message | Unparsable:
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return Unparsable(len(data), str(e))

    return parse


def server_version() -> str:
    try:
        return metadata.version("splitdet")
    except metadata.PackageNotFoundError:
        return "unknown"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 1] + "…"


def _alive(context: grpc.aio.ServicerContext) -> Callable[[], bool]:
    """Whether the call's deadline is still ahead (asked from the batcher's thread; a cancelled call cancels its
    batcher future instead)."""
    remaining = context.time_remaining()
    deadline = math.inf if remaining is None else time.monotonic() + remaining
    return lambda: time.monotonic() < deadline


def _elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return function(*args), _elapsed_ms(start)


class Servicer(splitdet_pb2_grpc.SplitDetectionServicer):
    """``SplitDetection`` over one :class:`Engine`, its :class:`Batcher`, :class:`Stats` and :class:`Admission`;
    CPU work of each frame (decoding, encoding) runs on ``executor``. ``identity`` is the initial metadata every
    call sends."""

    def __init__(
        self,
        engine: Engine,
        batcher: Batcher,
        stats: Stats,
        admission: Admission,
        executor: Executor,
        max_message_bytes: int,
        server_id: str,
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.stats = stats
        self.admission = admission
        self.executor = executor
        self.max_message_bytes = max_message_bytes
        self.identity = ((FINGERPRINT_KEY, engine.fingerprint), (SERVER_KEY, server_id))

    # ---- RPCs ----

    async def GetModelInfo(
        self, request: pb.ModelInfoRequest | Unparsable, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        await self._refuse_unparsable("GetModelInfo", request, context)
        await context.send_initial_metadata(self.identity)
        ckpt, config = self.engine.checkpoint, self.engine.checkpoint.config
        quantizations, compressions = accepted_codecs(ckpt.entropy)
        return pb.ModelInfo(
            format_version=FORMAT_VERSION,
            server_version=server_version(),
            arch=config.arch,
            backbone=config.backbone,
            bottleneck_channels=config.bottleneck_channels,
            bottleneck_shape_rule=BOTTLENECK_SHAPE_RULE,
            class_names=ckpt.class_names,
            keypoint_names=ckpt.keypoint_names,
            default_quantization=QUANTIZATION_TO_PB[ckpt.codec.quantization],
            quantizations=quantizations,
            compressions=compressions,
            fingerprint=self.engine.fingerprint,
            device=self.engine.description,
            min_size=config.min_size,
            max_size=config.max_size,
            max_message_bytes=self.max_message_bytes,
            max_batch=self.batcher.max_batch,
        )

    async def GetStats(self, request: pb.StatsRequest | Unparsable, context: grpc.aio.ServicerContext) -> pb.Stats:
        await self._refuse_unparsable("GetStats", request, context)
        return self.stats.snapshot()

    async def Infer(
        self, request: pb.BottleneckFrame | Unparsable, context: grpc.aio.ServicerContext
    ) -> pb.InferResponse:
        await context.send_initial_metadata(self.identity)
        return await self._answer("Infer", request, context, self.split_frame)

    async def InferStream(
        self, requests: AsyncIterator[pb.BottleneckFrame | Unparsable], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InferResponse]:
        async for response in self._stream("InferStream", requests, context, self.split_frame):
            yield response

    async def InferImage(
        self, request: pb.ImageFrame | Unparsable, context: grpc.aio.ServicerContext
    ) -> pb.InferResponse:
        await context.send_initial_metadata(self.identity)
        return await self._answer("InferImage", request, context, self.image_frame)

    async def InferImageStream(
        self, requests: AsyncIterator[pb.ImageFrame | Unparsable], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InferResponse]:
        async for response in self._stream("InferImageStream", requests, context, self.image_frame):
            yield response

    # ---- data path ----

    async def split_frame(self, frame: pb.BottleneckFrame, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        """Bottleneck frame -> detections with the tail."""
        if not frame.fingerprint:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "frame carries no fingerprint")
        if frame.fingerprint != self.engine.fingerprint:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"frame fingerprint {frame.fingerprint} does not match this server's checkpoint "
                f"{self.engine.fingerprint}",
            )
        (bottleneck, meta), decode_ms = await self._off_loop(_timed, decode_frame, frame, self.engine.limits)
        done = await self._batch(BatchKey.for_bottleneck(bottleneck, meta), (bottleneck, meta), context)
        return await self._off_loop(self._respond, frame.frame_id, done, decode_ms)

    async def image_frame(self, frame: pb.ImageFrame, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        """Encoded image -> detections with the whole model (the pure offloading baseline)."""
        image, decode_ms = await self._off_loop(_timed, self.engine.decode_image, frame.jpeg)
        done = await self._batch(BatchKey.for_image(image), image, context)
        return await self._off_loop(self._respond, frame.frame_id, done, decode_ms)

    async def _off_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work on the executor, leaving the event loop free for other calls."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _batch(self, key: BatchKey, item: Any, context: grpc.aio.ServicerContext) -> Done:
        """Queue ``item`` on the batcher under the client's connection; cancelling the call cancels the item."""
        done = await asyncio.wrap_future(self.batcher.submit(key, item, _alive(context), context.peer()))
        self.admission.observe(done.run_ms, done.batch_size)
        return done

    def _respond(self, frame_id: int, done: Done, decode_ms: float) -> pb.InferResponse:
        start = time.perf_counter()
        images = [encode_detections(d) for d in done.value]
        timings = pb.ServerTimings(
            queue_ms=done.queue_ms, decode_ms=decode_ms, tail_ms=done.run_ms, encode_ms=_elapsed_ms(start)
        )
        return pb.InferResponse(frame_id=frame_id, images=images, timings=timings)

    # ---- streams, admission, errors, counters, logging ----

    async def _refuse_unparsable(
        self, method: str, request: Message | Unparsable, context: grpc.aio.ServicerContext
    ) -> None:
        if isinstance(request, Unparsable):
            self.stats.error(method, grpc.StatusCode.INVALID_ARGUMENT.name)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _clip(request.error))

    async def _stream(
        self,
        method: str,
        requests: AsyncIterator[Message | Unparsable],
        context: grpc.aio.ServicerContext,
        handle: Handle,
    ) -> AsyncIterator[pb.InferResponse]:
        """Answer a stream's frames in order; counted in ``streams`` until the call ends, however it ends. A drain
        ends the stream with UNAVAILABLE at its next frame boundary (the frame being answered is finished)."""
        try:
            self.admission.open_stream()
        except Refused as e:
            self.stats.error(method, e.code.name)
            self.stats.refused(method, "streams" if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "draining")
            await self._abort(context, e.code, str(e), e.retry_ms)
        self.stats.stream_opened(method)
        try:
            await context.send_initial_metadata(self.identity)
            incoming = aiter(requests)
            while (request := await self._next(incoming)) is not None:
                yield await self._answer(method, request, context, handle)
            if self.admission.draining:
                self.stats.error(method, grpc.StatusCode.UNAVAILABLE.name)
                self.stats.refused(method, "draining")
                await self._abort(context, grpc.StatusCode.UNAVAILABLE, DRAINING)
        finally:
            self.admission.close_stream()
            self.stats.stream_closed(method)

    async def _next(self, incoming: AsyncIterator[Message | Unparsable]) -> Message | Unparsable | None:
        """The stream's next request; None when the client closed its side or the server drains."""
        if self.admission.draining:
            return None
        read = asyncio.ensure_future(anext(incoming, None))
        try:
            await asyncio.wait((read, self.admission.drained()), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not read.done():  # the drain began, or the call ended while it waited
                read.cancel()
        return read.result() if read.done() and not read.cancelled() else None

    async def _answer(
        self,
        method: str,
        request: Message | Unparsable,
        context: grpc.aio.ServicerContext,
        handle: Handle,
    ) -> pb.InferResponse:
        """Admit and run ``handle``; count and log the frame; turn any exception into a status (``context.abort``,
        with a retry hint when there is one)."""
        self.stats.begin(method)
        start = time.perf_counter()
        bytes_in = request.ByteSize()
        response, code, message, retry_ms = None, grpc.StatusCode.OK, "", None
        try:
            if isinstance(request, Unparsable):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            self._admit(method)
            try:
                response = await handle(request, context)
            finally:
                self.admission.end_frame()
        except asyncio.CancelledError:  # the call's deadline passed or the client went away: nobody to answer
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            self.stats.end(method, bytes_in, None, _elapsed_ms(start), code.name)
            raise
        except Exception as e:
            code, message, retry_ms = _status(method, e)
        total_ms = _elapsed_ms(start)
        self.stats.end(method, bytes_in, response, total_ms, None if response is not None else code.name)
        log.debug(
            "method=%s frame_id=%d images=%d bytes_in=%d status=%s ms=%.2f",
            method,
            request.frame_id,
            len(response.images) if response is not None else 0,
            bytes_in,
            code.name,
            total_ms,
        )
        if response is None:
            await self._abort(context, code, message, retry_ms)
        return response

    def _admit(self, method: str) -> None:
        try:
            self.admission.begin_frame()
        except Refused as e:
            self.stats.refused(method, "frames" if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "draining")
            raise

    @staticmethod
    async def _abort(
        context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, retry_ms: int | None = None
    ) -> None:
        trailers = ((RETRY_PUSHBACK_KEY, str(retry_ms)),) if retry_ms is not None else ()
        await context.abort(code, _clip(message), trailing_metadata=trailers)


def method_handlers(servicer: Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """The ``SplitDetection`` handlers, parsing requests with :func:`_parser` (bad bytes -> :class:`Unparsable`)."""
    handlers = {}
    for method in SERVICE.methods:
        factory = HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return handlers


def _status(method: str, error: Exception) -> tuple[grpc.StatusCode, str, int | None]:
    if isinstance(error, Refused):
        return error.code, str(error), error.retry_ms
    for kind, code in ERROR_CODES:
        if isinstance(error, kind):
            return code, str(error), None
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}", None
