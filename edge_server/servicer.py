"""The gRPC servicer: a thin layer from requests to the engine and back.

Split path, top to bottom in :meth:`Servicer.split_frame`: check the fingerprint -> ``common.wire.decode_frame``
-> tail (through the batcher, queued per client connection, :attr:`grpc.ServicerContext.peer`, so that the
batcher can serve connections round-robin) -> ``common.wire.encode_detections``. The offload path in
:meth:`Servicer.image_frame` is the same with the image decoder and the whole model.

Every failure becomes a gRPC status with a message and the server keeps serving. In a stream, a bad frame ends
the stream with that frame's status (frames before it were already answered); the client opens a new stream.
Request bytes that do not parse are INVALID_ARGUMENT too (:func:`method_handlers` parses them itself; gRPC's own
parsing would answer INTERNAL), and status messages are clipped to :data:`MAX_DETAILS` characters, so a message
quoting a hostile frame never outgrows the client's metadata limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata

import grpc
from google.protobuf.message import DecodeError, Message

from common.wire import (
    FORMAT_VERSION,
    QUANTIZATION_TO_PB,
    FrameError,
    RetiredCodecError,
    accepted_codecs,
    decode_frame,
    encode_detections,
)
from edge_server.auth import HANDLER_FACTORIES
from edge_server.batching import Batcher, Closed, Done, Expired, QueueFull
from edge_server.engine import BatchKey, Engine, ImageError
from edge_server.stats import Stats
from proto import splitdet_pb2 as pb
from proto import splitdet_pb2_grpc

log = logging.getLogger("edge_server")

SERVICE = pb.DESCRIPTOR.services_by_name["SplitDetection"]
SERVICE_NAME = SERVICE.full_name
BOTTLENECK_SHAPE_RULE = "C x (H/4+4) x (W/4+4) of the padded batch"
MAX_DETAILS = 1000  # characters of a status message; gRPC clients refuse trailers over 16 KiB

ERROR_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (RetiredCodecError, grpc.StatusCode.FAILED_PRECONDITION),  # before FrameError, its base
    (FrameError, grpc.StatusCode.INVALID_ARGUMENT),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Expired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Closed, grpc.StatusCode.UNAVAILABLE),
)


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


class Refused(Exception):
    """A request refused with a chosen status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def server_version() -> str:
    try:
        return metadata.version("splitdet")
    except metadata.PackageNotFoundError:
        return "unknown"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 1] + "…"


def _alive(context: grpc.ServicerContext) -> Callable[[], bool]:
    return lambda: context.is_active() and context.time_remaining() > 0


def _elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Servicer(splitdet_pb2_grpc.SplitDetectionServicer):
    """``SplitDetection`` over one :class:`Engine`, its :class:`Batcher` and :class:`Stats`."""

    def __init__(self, engine: Engine, batcher: Batcher, stats: Stats, max_message_bytes: int) -> None:
        self.engine = engine
        self.batcher = batcher
        self.stats = stats
        self.max_message_bytes = max_message_bytes

    # ---- RPCs ----

    def GetModelInfo(self, request: pb.ModelInfoRequest | Unparsable, context: grpc.ServicerContext) -> pb.ModelInfo:
        self._refuse_unparsable("GetModelInfo", request, context)
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

    def GetStats(self, request: pb.StatsRequest | Unparsable, context: grpc.ServicerContext) -> pb.Stats:
        self._refuse_unparsable("GetStats", request, context)
        return self.stats.snapshot()

    def Infer(self, request: pb.BottleneckFrame | Unparsable, context: grpc.ServicerContext) -> pb.InferResponse:
        return self._answer("Infer", request, context, self.split_frame)

    def InferStream(
        self, requests: Iterator[pb.BottleneckFrame | Unparsable], context: grpc.ServicerContext
    ) -> Iterator[pb.InferResponse]:
        return self._stream("InferStream", requests, context, self.split_frame)

    def InferImage(self, request: pb.ImageFrame | Unparsable, context: grpc.ServicerContext) -> pb.InferResponse:
        return self._answer("InferImage", request, context, self.image_frame)

    def InferImageStream(
        self, requests: Iterator[pb.ImageFrame | Unparsable], context: grpc.ServicerContext
    ) -> Iterator[pb.InferResponse]:
        return self._stream("InferImageStream", requests, context, self.image_frame)

    # ---- data path ----

    def split_frame(self, frame: pb.BottleneckFrame, context: grpc.ServicerContext) -> pb.InferResponse:
        """Bottleneck frame -> detections with the tail."""
        if not frame.fingerprint:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "frame carries no fingerprint")
        if frame.fingerprint != self.engine.fingerprint:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"frame fingerprint {frame.fingerprint} does not match this server's checkpoint "
                f"{self.engine.fingerprint}",
            )
        start = time.perf_counter()
        bottleneck, meta = decode_frame(frame, self.engine.limits)
        decode_ms = _elapsed_ms(start)
        key = BatchKey.for_bottleneck(bottleneck, meta)
        done = self.batcher.submit(key, (bottleneck, meta), _alive(context), context.peer()).result()
        return self._respond(frame.frame_id, done, decode_ms)

    def image_frame(self, frame: pb.ImageFrame, context: grpc.ServicerContext) -> pb.InferResponse:
        """Encoded image -> detections with the whole model (the pure offloading baseline)."""
        start = time.perf_counter()
        image = self.engine.decode_image(frame.jpeg)
        decode_ms = _elapsed_ms(start)
        done = self.batcher.submit(BatchKey.for_image(image), image, _alive(context), context.peer()).result()
        return self._respond(frame.frame_id, done, decode_ms)

    def _respond(self, frame_id: int, done: Done, decode_ms: float) -> pb.InferResponse:
        start = time.perf_counter()
        images = [encode_detections(d) for d in done.value]
        timings = pb.ServerTimings(
            queue_ms=done.queue_ms, decode_ms=decode_ms, tail_ms=done.run_ms, encode_ms=_elapsed_ms(start)
        )
        return pb.InferResponse(frame_id=frame_id, images=images, timings=timings)

    # ---- errors, counters, logging ----

    def _refuse_unparsable(self, method: str, request: Message | Unparsable, context: grpc.ServicerContext) -> None:
        if isinstance(request, Unparsable):
            self.stats.error(method, grpc.StatusCode.INVALID_ARGUMENT.name)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _clip(request.error))

    def _stream(
        self,
        method: str,
        requests: Iterator[Message | Unparsable],
        context: grpc.ServicerContext,
        handle: Callable[[Message, grpc.ServicerContext], pb.InferResponse],
    ) -> Iterator[pb.InferResponse]:
        """Answer a stream's frames in order; counted in ``streams`` until the call ends, however it ends."""
        self.stats.stream_opened(method)
        try:
            for request in requests:
                yield self._answer(method, request, context, handle)
        finally:
            self.stats.stream_closed(method)

    def _answer(
        self,
        method: str,
        request: Message | Unparsable,
        context: grpc.ServicerContext,
        handle: Callable[[Message, grpc.ServicerContext], pb.InferResponse],
    ) -> pb.InferResponse:
        """Run ``handle``; count and log the frame; turn any exception into a status (``context.abort``)."""
        self.stats.begin(method)
        start = time.perf_counter()
        bytes_in = request.ByteSize()
        response, code, message = None, grpc.StatusCode.OK, ""
        try:
            if isinstance(request, Unparsable):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            response = handle(request, context)
        except Exception as e:
            code, message = _status(method, e)
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
            context.abort(code, _clip(message))
        return response


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


def _status(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, Refused):
        return error.code, str(error)
    for kind, code in ERROR_CODES:
        if isinstance(error, kind):
            return code, str(error)
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"
