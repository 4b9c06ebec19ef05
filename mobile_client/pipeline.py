"""The client's data path, top to bottom: frame -> head -> filter -> codec -> link -> detections.

Per frame, :meth:`Pipeline.prepare` runs the device's share of the work for the frame's mode:

* ``split``: preprocess + stem + encoder (the head), the neural filter, quantize + zstd into a
  ``BottleneckFrame``; a frame the filter rejects is finished here as skipped and never sent;
* ``offload``: resize the image to the model's input size and JPEG- or WebP-encode it into an ``ImageFrame``
  (the server runs the whole model; boxes come back scaled to the frame);
* ``local``: head, filter and the tail on the device, no server at all.

A frame a live source dropped (a newer one replaced it before it could be sent) is finished at once as dropped.

With ``options.skip_static`` > 0 (``--skip-static``), a split frame whose bottleneck changed less than that from the
last frame sent (:mod:`splitdet.mobile_client.static`) is not sent either: it is finished as *reused*, and
:meth:`Pipeline.run` gives it that frame's detections when it yields it, in frame order, so in the pipelined path the
frame it reuses may still be in flight when it is prepared. At most ``options.skip_static_max`` frames in a row reuse
one answer. Frames the filter skipped are never the reference; a frame in another mode (auto) or a sent frame that
failed clears it, so the next split frame is sent.

With ``options.background_filter`` > 0 (``--background-filter``), a split frame whose stem looks like the camera's
empty background (:mod:`splitdet.mobile_client.background`) is finished as skipped, after the neural filter and before
the static check. :meth:`Pipeline.run` teaches the background with every answer of a sent split frame: empty when no
detection at the score threshold is of interest (:func:`splitdet.common.interest.box_of_interest`).

The head is a :class:`DeviceModel`: the torch head of a checkpoint
(:class:`splitdet.mobile_client.torch_head.ClientModel`) or the ONNX head run by ONNX Runtime
(:class:`splitdet.mobile_client.onnx_head.OnnxHead`). Both hand back the bottleneck as a numpy array, which
:func:`splitdet.common.wire.encode_frame` quantizes and compresses; this module imports no torch.

:meth:`Pipeline.complete` turns the server's ``InferResponse`` into a :class:`FrameResult`.

With ``window == 1`` (and always for live sources, which keep one frame in flight: the latest one) frames go one
at a time over unary calls. With a larger window the run is pipelined: a head thread prepares frame n+1 while
frame n is on the wire or on the server, and hands requests to a bidirectional stream
(:class:`splitdet.mobile_client.link.StreamLink`); the main thread waits for the answers in frame order. The frames in
flight are bounded by a :class:`splitdet.mobile_client.flow.Window` that adapts to the measured service time (at most
``window``), so no frame waits behind the client's own frames past its deadline, and memory stays flat however
slow the link is. A frame's deadline starts when it is handed to the link.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from splitdet.common.codec_settings import CodecSettings
from splitdet.common.interest import box_of_interest
from splitdet.common.shapes import BatchMeta
from splitdet.common.timing import timed
from splitdet.common.wire import decode_detections, encode_frame
from splitdet.mobile_client.background import BackgroundFilter
from splitdet.mobile_client.flow import Window
from splitdet.mobile_client.link import Link, LinkError, Reply, StreamLink
from splitdet.mobile_client.offload import encode_image, model_input_size, to_frame_coordinates
from splitdet.mobile_client.settings import Options
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.static import StaticGate
from splitdet.proto import splitdet_pb2 as pb

if TYPE_CHECKING:
    from splitdet.common.entropy import EntropyTables

FRAME_STAGES = ("head", "filter", "encode", "network", "server_decode", "tail", "total")


@dataclass
class HeadResult:
    """One frame through the device's head: the float32 ``[1, C, H, W]`` bottleneck, or None when the filter
    skipped the frame."""

    bottleneck: np.ndarray | None
    meta: BatchMeta
    object_prob: float | None = None
    stem_cells: np.ndarray | None = None  #: ``[C, h, w]`` stem cell means, when the background filter asks


class DeviceModel(Protocol):
    """What the pipeline needs of the head it runs (torch or ONNX)."""

    fingerprint: str  #: presented at the handshake; the server's must be equal

    @property
    def has_filter(self) -> bool: ...

    @property
    def codec(self) -> CodecSettings: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def keypoint_names(self) -> list[str]: ...

    @property
    def size_rule(self) -> tuple[int, int]:
        """The model transform's (min_size, max_size): what the offload mode resizes frames to."""
        ...

    @property
    def entropy_tables(self) -> EntropyTables | None:
        """The entropy codec's tables (an entropic checkpoint, or its ONNX head's metadata); None otherwise."""
        ...

    def run_head(
        self, rgb: np.ndarray, use_filter: bool, timing: dict[str, float] | None = None, cells: bool = False
    ) -> HeadResult:
        """RGB uint8 ``H x W x 3`` -> :class:`HeadResult` (with ``cells``, its stem cells for the background filter);
        adds seconds to ``timing`` under "head" (and "filter")."""
        ...

    def run_tail(self, out: HeadResult) -> dict:
        """Local mode: the detections of the unquantized bottleneck, as
        :func:`splitdet.common.wire.decode_detections`."""
        ...


@dataclass
class FrameResult:
    """One frame as the client reports it; ``image``, ``server_ms`` and ``received_bytes`` are not in the JSON."""

    index: int
    source: str
    mode: str
    skipped: bool = False
    dropped: bool = False  #: a live source replaced it by a newer frame before it could be sent
    sent_bytes: int = 0
    detections: list[dict] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    image: np.ndarray | None = None
    server_ms: float | None = None
    received_bytes: int = 0  #: size of the server's response message
    sent_at: float | None = None  #: ``time.monotonic()`` when the request was handed to the link
    reused_from: int | None = None  #: static (``--skip-static``): not sent; carries this frame's detections

    @property
    def reused(self) -> bool:
        return self.reused_from is not None


@dataclass
class _Work:
    """A frame between :meth:`Pipeline.prepare` and its result."""

    frame: Frame
    mode: str
    started_at: float
    timing: dict[str, float] = field(default_factory=dict)
    request: pb.BottleneckFrame | pb.ImageFrame | None = None
    result: FrameResult | None = None
    future: Future | None = None
    deadline: float = 0.0
    sent_size: tuple[int, int] | None = None  #: offload: (height, width) of the image sent, when resized


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def detections_json(det: dict, class_names: list[str], score_threshold: float) -> list[dict]:
    """Detections (as :func:`splitdet.common.wire.decode_detections` returns them) at or above the score threshold."""
    out = []
    for i, score in enumerate(det["scores"].tolist()):
        if score < score_threshold:
            continue
        label = int(det["labels"][i])
        item: dict = {
            "box": [round(float(v), 2) for v in det["boxes"][i]],
            "label": class_names[label] if 0 <= label < len(class_names) else str(label),
            "score": round(score, 4),
        }
        if "masks" in det:
            item["mask_rle"] = det["masks"][i]
        if "keypoints" in det:
            item["keypoints"] = [[round(float(v), 2) for v in kp] for kp in det["keypoints"][i]]
        out.append(item)
    return out


class Pipeline:
    """Runs frames through the chosen mode; ``choose_mode`` (the auto policy) may pick the mode per frame."""

    def __init__(
        self,
        options: Options,
        class_names: list[str],
        model: DeviceModel | None = None,
        link: Link | None = None,
        choose_mode: Callable[[int], str] | None = None,
        observe: Callable[[FrameResult], None] | None = None,
    ) -> None:
        self.options = options
        self.class_names = class_names
        self.model = model
        self.link = link
        self.choose_mode = choose_mode
        self.observe = observe
        self.static = StaticGate(options.skip_static, options.skip_static_max) if options.skip_static > 0 else None
        self.background = (
            BackgroundFilter(options.background_filter, options.background_rate, options.background_max_skipped)
            if options.background_filter > 0
            else None
        )

    # ---- one frame, top to bottom ----

    def prepare(self, frame: Frame) -> _Work:
        """The device's share of one frame: ends with a request to send or an already final result."""
        mode = self.choose_mode(frame.index) if self.choose_mode else self.options.mode
        work = _Work(frame, mode, frame.captured_at or time.monotonic())
        if self.static is not None and mode != "split":
            self.static.reset()
        if frame.dropped:
            work.result = self._result(work, dropped=True)
            return work
        if frame.error is not None:
            work.result = self._result(work, error=frame.error)
            return work
        try:
            if mode == "offload":
                self._encode_image(work)
            else:
                self._run_head(work)
        except Exception as e:  # one bad frame is reported as failed; the run goes on
            work.request = None
            work.result = self._result(work, error=f"{type(e).__name__}: {e}")
        return work

    def _encode_image(self, work: _Work) -> None:
        """Offload: the frame resized to the model's input size (``options.offload_size``), as JPEG or WebP."""
        t0 = time.perf_counter()
        frame = work.frame.image.shape[:2]
        size = model_input_size(*frame, *self.options.offload_size) if self.options.offload_size else None
        try:
            data = encode_image(work.frame.image, self.options.offload_format, self.options.jpeg_quality, size)
        except ValueError as e:
            work.result = self._result(work, error=str(e))
            return
        work.timing["encode"] = _ms(time.perf_counter() - t0)
        work.sent_size = size
        work.request = pb.ImageFrame(frame_id=work.frame.index, jpeg=data)

    def _run_head(self, work: _Work) -> None:
        seconds: dict[str, float] = {}
        cells = self.background is not None and work.mode == "split"
        out = self.model.run_head(work.frame.image, use_filter=self.options.use_filter, timing=seconds, cells=cells)
        if cells and out.bottleneck is not None:
            with timed(seconds, "filter"):
                background = self.background.check(work.frame.index, out.stem_cells)
        work.timing.update({stage: _ms(s) for stage, s in seconds.items()})
        if out.bottleneck is None or (cells and background):
            work.result = self._result(work, skipped=True)
            return
        t0 = time.perf_counter()
        if work.mode == "local":
            detections = self.model.run_tail(out)
            work.timing["tail"] = _ms(time.perf_counter() - t0)
            work.result = self._result(work, detections=self._json(detections))
            return
        if self.static is not None and (reference := self.static.check(work.frame.index, out.bottleneck)) is not None:
            if cells:
                self.background.forget(work.frame.index)  # not sent: no answer will teach the background
            work.result = self._result(work, reused_from=reference)  # detections: filled in by run()
            return
        work.request = encode_frame(
            out.bottleneck,
            out.meta,
            self.options.codec,
            fingerprint=self.model.fingerprint,
            frame_id=work.frame.index,
            entropy_tables=self.model.entropy_tables,
        )
        work.timing["encode"] = _ms(time.perf_counter() - t0)

    def complete(self, work: _Work, reply: Reply | None = None, error: Exception | None = None) -> FrameResult:
        """The result of a sent frame from the server's reply (or the error that ended its delivery)."""
        if error is not None:
            return self._result(work, error=str(error))
        response = reply.response
        if len(response.images) != 1:
            return self._result(work, error=f"server answered with {len(response.images)} images for 1")
        t = response.timings
        server_ms = t.queue_ms + t.decode_ms + t.tail_ms + t.encode_ms
        work.timing["network"] = _ms(max(0.0, reply.received_at - reply.sent_at - server_ms / 1000.0))
        work.timing["server_decode"] = round(t.decode_ms, 3)
        work.timing["tail"] = round(t.tail_ms, 3)
        try:
            det = decode_detections(response.images[0])
        except ValueError as e:
            return self._result(work, error=f"bad detections from the server: {e}")
        if work.sent_size is not None:  # a resized offload image: back to the frame's coordinates
            det = to_frame_coordinates(det, work.sent_size, work.frame.image.shape[:2])
        result = self._result(work, detections=self._json(det))
        result.timing_ms["total"] = _ms(reply.received_at - work.started_at)
        result.server_ms = round(server_ms, 3)
        result.received_bytes = response.ByteSize()
        result.sent_at = reply.sent_at
        return result

    def _json(self, det: dict) -> list[dict]:
        return detections_json(det, self.class_names, self.options.score_threshold)

    def _result(
        self,
        work: _Work,
        skipped: bool = False,
        detections=None,
        error: str | None = None,
        dropped: bool = False,
        reused_from: int | None = None,
    ) -> FrameResult:
        timing = {stage: work.timing[stage] for stage in FRAME_STAGES if stage in work.timing}
        timing["total"] = _ms(time.monotonic() - work.started_at)
        sent = work.request.ByteSize() if work.request is not None and error is None else 0
        return FrameResult(
            index=work.frame.index,
            source=work.frame.source,
            mode=work.mode,
            skipped=skipped,
            dropped=dropped,
            sent_bytes=sent,
            detections=detections or [],
            timing_ms=timing,
            error=error,
            image=work.frame.image,
            reused_from=reused_from,
        )

    # ---- many frames ----

    def close(self) -> None:
        if self.link is not None:
            self.link.close()

    def run(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Results in frame order; every frame yields exactly one result (failed frames carry ``error``)."""
        path = self._run_sequential if self.options.window == 1 or self.options.live else self._run_pipelined
        sent: FrameResult | None = None  # the last split frame sent: what a static frame reuses
        for result in path(frames):
            if result.reused:
                _reuse(result, sent)
            elif result.mode == "split" and not (result.skipped or result.dropped):
                sent = result
                if self.static is not None and result.error is not None:
                    self.static.forget(result.index)
                if self.background is not None:
                    self._teach_background(result)
            if self.observe is not None:
                self.observe(result)
            yield result

    def _teach_background(self, result: FrameResult) -> None:
        """The server's answer to a sent frame, for the background filter: empty when no detection is of interest."""
        if result.error is not None:
            self.background.forget(result.index)
            return
        size = tuple(result.image.shape[:2])
        self.background.answer(result.index, not any(box_of_interest(d["box"], size) for d in result.detections))

    def _unary(self, mode: str) -> Callable:
        return self.link.stub.Infer if mode == "split" else self.link.stub.InferImage

    def _run_sequential(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        for frame in frames:
            work = self.prepare(frame)
            if work.result is not None:
                yield work.result
                continue
            try:
                reply = self.link.call(self._unary(work.mode), work.request, self.link.deadline())
            except LinkError as e:
                yield self.complete(work, error=e)
                continue
            yield self.complete(work, reply=reply)

    def _run_pipelined(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        methods = {"split": "InferStream", "offload": "InferImageStream"}
        remote = methods.keys() if self.options.mode == "auto" else {self.options.mode} & methods.keys()
        streams = {mode: self.link.stream(getattr(self.link.stub, methods[mode])) for mode in remote}
        window = Window(self.options.window, self.link.config.timeout_s if self.link is not None else None)
        handoff: queue.Queue = queue.Queue()
        stop = threading.Event()
        done = object()

        def produce() -> None:
            source = iter(frames)
            try:
                # Take a slot before reading the frame, so a camera frame is fresh when the head gets it.
                while window.acquire(stop.is_set):
                    frame = next(source, None)
                    if frame is None or stop.is_set():
                        return
                    work = self.prepare(frame)
                    if work.result is None:
                        work.deadline = self.link.deadline()  # the deadline starts when the frame is sent
                        work.future = streams[work.mode].submit(frame.index, work.request)
                    handoff.put(work)
            except BaseException as e:  # re-raised in the main thread
                handoff.put(e)
            finally:
                handoff.put(done)

        producer = threading.Thread(target=produce, name="head", daemon=True)
        producer.start()
        try:
            while (work := handoff.get()) is not done:
                if isinstance(work, BaseException):
                    raise work
                result, service_s = self._await(work, streams)
                window.release(service_s, failed=result.error is not None and work.future is not None)
                yield result
        finally:
            stop.set()
            for stream in streams.values():
                stream.close()
            producer.join(timeout=5)

    def _await(self, work: _Work, streams: dict[str, StreamLink]) -> tuple[FrameResult, float | None]:
        """The frame's result and the service time its answer measured (the deadline when it timed out)."""
        if work.future is None:
            return work.result, None
        try:
            reply = work.future.result(timeout=max(0.0, work.deadline - time.monotonic()))
        except TimeoutError:
            error = self.link.deadline_error()
            streams[work.mode].cancel(work.frame.index, error)
            return self.complete(work, error=error), self.link.config.timeout_s
        except LinkError as e:
            return self.complete(work, error=e), None
        return self.complete(work, reply=reply), reply.received_at - reply.sent_at


def _reuse(result: FrameResult, sent: FrameResult | None) -> None:
    """A static frame takes the detections of the frame it reuses (which precedes it in frame order)."""
    if sent is None or sent.index != result.reused_from:
        result.error = f"frame {result.reused_from}, whose detections it reuses, has no result"
    elif sent.error is not None:
        result.error = f"frame {sent.index}, whose detections it reuses, failed"
    else:
        result.detections = list(sent.detections)
