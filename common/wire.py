"""Convert between bottlenecks / detections and the protobuf messages of ``proto/splitdet.proto``.

Decoding trusts nothing: every field of a received frame is checked against the declared shape and the
receiver's limits before any allocation, and a bad frame raises :class:`FrameError` saying what is wrong.

This module never imports torch at import time: the torch-free device client (``--runtime onnx``) uses it to
encode frames (:func:`encode_frame` takes a numpy array) and to decode the server's detections. The frame is
checked and dequantized in numpy (:func:`decode_bottleneck`), entropy frames included (:mod:`splitdet.common.entropy`,
numpy and constriction, imported only for them); only :func:`decode_frame`, the server's and ``split-eval``'s
entry point, turns the result into a torch tensor and imports torch when it is called (the callers that reach it
have torch loaded already). :func:`encode_detections` takes torch detections but needs no torch import: it only
calls tensor methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from splitdet.common import codec
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.masks import binary_masks, encode_rle
from splitdet.common.shapes import BatchMeta, bottleneck_shape
from splitdet.proto import splitdet_pb2 as pb

if TYPE_CHECKING:
    from torch import Tensor

    from splitdet.common.entropy import EntropyTables

FORMAT_VERSION = 1

QUANTIZATION_TO_PB = {
    "none": pb.NONE,
    "per_tensor": pb.PER_TENSOR,
    "per_channel": pb.PER_CHANNEL,
    "float16": pb.HALF,
    "entropy": pb.ENTROPY,
}
PB_TO_QUANTIZATION = {v: k for k, v in QUANTIZATION_TO_PB.items()}
QUANTIZATION_DTYPE = {
    "none": "float32",
    "per_tensor": "uint8",
    "per_channel": "uint8",
    "float16": "float16",
    "entropy": "int32",
}
DTYPE_TO_PB = {"uint8": pb.UINT8, "float16": pb.FLOAT16, "float32": pb.FLOAT32, "int32": pb.INT32}
PB_TO_DTYPE = {v: k for k, v in DTYPE_TO_PB.items()}
#: "rans": constriction's rANS (RANS_CONSTRICTION); the retired CompressAI rANS (RANS) is refused, see
#: :class:`RetiredCodecError`
COMPRESSION_TO_PB = {"raw": pb.RAW, "zstd": pb.ZSTD, "rans": pb.RANS_CONSTRICTION}
PB_TO_COMPRESSION = {v: k for k, v in COMPRESSION_TO_PB.items()}


def accepted_codecs(tables: EntropyTables | None) -> tuple[list[int], list[int]]:
    """Quantizations and compressions a receiver decodes: the entropy codec only with entropy tables."""
    quantizations = [v for k, v in QUANTIZATION_TO_PB.items() if k != "entropy" or tables is not None]
    compressions = [v for k, v in COMPRESSION_TO_PB.items() if k != "rans" or tables is not None]
    return quantizations, compressions


class FrameError(ValueError):
    """A received frame is malformed; the message says which field and why."""


class RetiredCodecError(FrameError):
    """A frame in a codec this receiver no longer decodes (the sender must be upgraded): FAILED_PRECONDITION."""


@dataclass(frozen=True)
class FrameLimits:
    """What a receiver accepts; anything beyond is refused before allocating."""

    channels: int | None = None
    max_images: int = 32
    max_side: int = 8192
    max_elements: int = 64 * 1024 * 1024
    entropy: EntropyTables | None = None  #: the receiver's entropy tables: entropy frames need them


def _size(pair: tuple[int, int]) -> pb.ImageSize:
    return pb.ImageSize(height=int(pair[0]), width=int(pair[1]))


def encode_frame(
    bottleneck: np.ndarray,
    meta: BatchMeta,
    settings: CodecSettings = CodecSettings(),
    fingerprint: str = "",
    frame_id: int = 0,
    entropy_tables: EntropyTables | None = None,
) -> pb.BottleneckFrame:
    """Quantize and compress a head's bottleneck (a float numpy array; torch callers pass ``tensor.numpy()``).

    The entropy codec (``settings.quantization == "entropy"``, with the checkpoint's ``entropy_tables``) sends the
    rANS string, or the 8-bit per-tensor + zstd frame when that is smaller (noise, out-of-distribution images)
    or when the latent does not fit the int32 symbols, so a frame never costs more than the 8-bit codec's; the
    frame's quantization field says which it is. Numpy only: both the torch and the ONNX client run it.
    """
    bottleneck = np.asarray(bottleneck)
    if bottleneck.ndim != 4 or bottleneck.shape[0] != len(meta.image_sizes):
        raise ValueError(f"bottleneck must be [N, C, H, W] with N = {len(meta.image_sizes)} images")
    if settings.quantization == "entropy":
        if entropy_tables is None:
            raise ValueError("the entropy codec needs the checkpoint's entropy tables (an entropic student)")
        from splitdet.common import entropy

        fallback = encode_frame(
            bottleneck, meta, CodecSettings("per_tensor", "zstd", settings.level), fingerprint, frame_id
        )
        try:
            coded = entropy.encode(bottleneck, entropy_tables)
        except entropy.EntropyError:
            return fallback  # symbols beyond int32: far outside anything the tables model
        if len(coded) >= len(fallback.payload):
            return fallback
        return _frame(bottleneck, meta, "entropy", "rans", coded, fingerprint, frame_id)
    enc = codec.quantize(bottleneck, settings.quantization, settings.bits)
    raw = codec.tensor_bytes(enc.values)
    payload = codec.compress(raw, settings.level) if settings.compression == "zstd" else raw
    return _frame(bottleneck, meta, settings.quantization, settings.compression, payload, fingerprint, frame_id, enc)


def _frame(
    bottleneck: np.ndarray,
    meta: BatchMeta,
    quantization: str,
    compression: str,
    payload: bytes,
    fingerprint: str,
    frame_id: int,
    enc: codec.Encoded | None = None,
) -> pb.BottleneckFrame:
    return pb.BottleneckFrame(
        format_version=FORMAT_VERSION,
        fingerprint=fingerprint,
        shape=list(bottleneck.shape),
        dtype=DTYPE_TO_PB[QUANTIZATION_DTYPE[quantization]],
        quantization=QUANTIZATION_TO_PB[quantization],
        scale=enc.scale.tolist() if enc is not None else [],
        zero_point=enc.zero_point.tolist() if enc is not None else [],
        compression=COMPRESSION_TO_PB[compression],
        payload=payload,
        original_sizes=[_size(s) for s in meta.original_sizes],
        image_sizes=[_size(s) for s in meta.image_sizes],
        batch_shape=_size(meta.batch_shape),
        frame_id=frame_id,
    )


def _sizes(field: str, sizes, max_side: int) -> list[tuple[int, int]]:
    out = []
    for s in sizes:
        if not (0 < s.height <= max_side and 0 < s.width <= max_side):
            raise FrameError(f"{field}: {s.height}x{s.width} is outside 1..{max_side} pixels per side")
        out.append((int(s.height), int(s.width)))
    return out


def decode_frame(frame: pb.BottleneckFrame, limits: FrameLimits = FrameLimits()) -> tuple[Tensor, BatchMeta]:
    """Validate a wire frame and return the dequantized float32 bottleneck as a torch tensor and its meta."""
    import torch  # the receiving side has torch; see the module docstring

    x, meta = decode_bottleneck(frame, limits)
    return torch.from_numpy(x), meta


def decode_bottleneck(frame: pb.BottleneckFrame, limits: FrameLimits = FrameLimits()) -> tuple[np.ndarray, BatchMeta]:
    """Validate a wire frame and return the dequantized float32 bottleneck (numpy) and its :class:`BatchMeta`."""
    if frame.format_version != FORMAT_VERSION:
        raise FrameError(f"unsupported format_version {frame.format_version} (this side speaks {FORMAT_VERSION})")
    if frame.compression == pb.RANS:
        raise RetiredCodecError(
            "frame is coded with CompressAI's rANS (compression RANS), which this server no longer decodes; "
            "upgrade the client (its entropy frames are now RANS_CONSTRICTION)"
        )
    shape = tuple(int(d) for d in frame.shape)
    if len(shape) != 4 or min(shape) <= 0:
        raise FrameError(f"shape must be 4 positive dimensions [N, C, H, W], got {list(shape)}")
    n, c, h, w = shape
    if n > limits.max_images:
        raise FrameError(f"frame holds {n} images, at most {limits.max_images} are accepted")
    if limits.channels is not None and c != limits.channels:
        raise FrameError(f"bottleneck has {c} channels, this model expects {limits.channels}")
    if math.prod(shape) > limits.max_elements:
        raise FrameError(f"shape {list(shape)} exceeds the limit of {limits.max_elements} elements")
    if len(frame.original_sizes) != n or len(frame.image_sizes) != n:
        raise FrameError(
            f"frame declares {n} images but carries {len(frame.original_sizes)} original and "
            f"{len(frame.image_sizes)} resized sizes"
        )
    if not frame.HasField("batch_shape"):
        raise FrameError("batch_shape is missing")
    original = _sizes("original_sizes", frame.original_sizes, limits.max_side)
    resized = _sizes("image_sizes", frame.image_sizes, limits.max_side)
    (batch_shape,) = _sizes("batch_shape", [frame.batch_shape], limits.max_side)
    if (c, h, w) != bottleneck_shape(c, batch_shape):
        raise FrameError(
            f"shape {list(shape)} does not match batch_shape {batch_shape[0]}x{batch_shape[1]} "
            f"(expected spatial size {bottleneck_shape(c, batch_shape)[1:]})"
        )
    try:
        meta = BatchMeta(original, resized, batch_shape)
    except ValueError as e:
        raise FrameError(str(e)) from None

    quantization = PB_TO_QUANTIZATION.get(frame.quantization)
    if quantization is None:
        raise FrameError(f"unknown quantization {frame.quantization}")
    dtype = PB_TO_DTYPE.get(frame.dtype)
    if dtype != QUANTIZATION_DTYPE[quantization]:
        raise FrameError(f"dtype {dtype} does not go with quantization {quantization}")
    if quantization == "entropy":
        return _decode_entropy(frame, shape, limits), meta
    n_params = {"per_tensor": 1, "per_channel": c}.get(quantization, 0)
    if len(frame.scale) != n_params or len(frame.zero_point) != n_params:
        raise FrameError(
            f"{quantization} needs {n_params} scale and zero_point values, got "
            f"{len(frame.scale)} and {len(frame.zero_point)}"
        )
    scale = np.array(list(frame.scale), dtype=np.float32)
    zero_point = np.array(list(frame.zero_point), dtype=np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(zero_point).all()) or (scale <= 0).any():
        raise FrameError("scale must be finite and positive and zero_point finite")

    compression = PB_TO_COMPRESSION.get(frame.compression)
    if compression is None:
        raise FrameError(f"unknown compression {frame.compression}")
    if compression not in ("zstd", "raw"):
        raise FrameError(f"compression {compression} does not go with quantization {quantization}")
    expected = math.prod(shape) * np.dtype(codec.NUMPY_DTYPES[dtype]).itemsize
    try:
        raw = codec.decompress(frame.payload, expected) if compression == "zstd" else frame.payload
        values = codec.tensor_from_bytes(raw, dtype, shape)
    except codec.CodecError as e:
        raise FrameError(str(e)) from None
    x = codec.dequantize(codec.Encoded(values, quantization, scale, zero_point))
    if not np.isfinite(x).all():
        raise FrameError("payload holds NaN or infinite values")
    return x, meta


def _decode_entropy(frame: pb.BottleneckFrame, shape: tuple[int, ...], limits: FrameLimits) -> np.ndarray:
    """rANS string -> symbols -> float32 latent, with the receiver's own tables."""
    if limits.entropy is None:
        raise FrameError("entropy-coded frame, but this model has no entropy tables (use an 8-bit or float16 codec)")
    if frame.compression != pb.RANS_CONSTRICTION:
        raise FrameError(f"entropy frames are rANS-coded (compression RANS_CONSTRICTION), got {frame.compression}")
    if frame.scale or frame.zero_point:
        raise FrameError("entropy frames carry no scale or zero_point")
    from splitdet.common import entropy  # numpy and constriction: only for entropy frames

    try:
        return entropy.decode(frame.payload, shape, limits.entropy)
    except entropy.EntropyError as e:
        raise FrameError(str(e)) from None


def encode_detections(det: dict[str, Tensor]) -> pb.ImageDetections:
    """Pack one image's torchvision detections; masks become COCO RLE (:mod:`splitdet.common.masks`)."""
    boxes = det["boxes"].detach().cpu().float().numpy()
    msg = pb.ImageDetections(
        count=len(boxes),
        boxes=boxes.astype("<f4").tobytes(),
        scores=det["scores"].detach().cpu().numpy().astype("<f4").tobytes(),
        labels=det["labels"].detach().cpu().numpy().astype("<i4").tobytes(),
    )
    if "masks" in det:
        for rle in encode_rle(binary_masks(det["masks"])):
            h, w = rle["size"]
            msg.masks.add(height=h, width=w, counts=rle["counts"].encode("ascii"))
    if "keypoints" in det:
        kps = det["keypoints"].detach().cpu().float().numpy()
        msg.num_keypoints = kps.shape[1] if kps.ndim == 3 else 0
        msg.keypoints = kps.astype("<f4").tobytes()
        msg.keypoint_scores = det["keypoints_scores"].detach().cpu().float().numpy().astype("<f4").tobytes()
    return msg


def _array(data: bytes, dtype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    need = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != need:
        raise FrameError(f"detections.{field} holds {len(data)} bytes, {need} expected")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def decode_detections(msg: pb.ImageDetections) -> dict[str, object]:
    """Unpack :func:`encode_detections`: numpy arrays, masks as COCO RLE dicts (``size``, ``counts`` str)."""
    n = msg.count
    out: dict[str, object] = {
        "boxes": _array(msg.boxes, "<f4", (n, 4), "boxes"),
        "scores": _array(msg.scores, "<f4", (n,), "scores"),
        "labels": _array(msg.labels, "<i4", (n,), "labels"),
    }
    if msg.masks:
        if len(msg.masks) != n:
            raise FrameError(f"detections carry {len(msg.masks)} masks for {n} boxes")
        out["masks"] = [{"size": [m.height, m.width], "counts": m.counts.decode("ascii")} for m in msg.masks]
    if msg.num_keypoints:
        k = msg.num_keypoints
        out["keypoints"] = _array(msg.keypoints, "<f4", (n, k, 3), "keypoints")
        out["keypoint_scores"] = _array(msg.keypoint_scores, "<f4", (n, k), "keypoint_scores")
    return out
