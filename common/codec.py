"""Bottleneck codec: 8-bit affine quantization (per tensor or per channel) or float16, then zstd.

Quantization is the seed's min-max affine scheme, ``q = round(x / scale + zero_point)``, with one correction:
the zero point is kept as a real number instead of being clamped and truncated to an integer, which is what
keeps every element within ``scale / 2`` of its original value even when the range does not include 0.

Everything here works on numpy arrays and never imports torch: the torch head passes ``tensor.numpy()``, the ONNX
head its output array, so both devices send the bytes of this one quantizer. The arithmetic is float32 throughout
(IEEE division, addition and round-half-to-even, as torch did before), so the payloads are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from splitdet.common.codec_settings import QUANTIZATIONS, Quantization, check_level

QMAX = 255
MIN_WINDOW_LOG = 10  # zstd's smallest window, 1 KiB


class CodecError(ValueError):
    """A payload that cannot be decoded: wrong size, garbled or oversized compressed data."""


@dataclass(frozen=True)
class Encoded:
    """Quantized values plus what dequantization needs (float32 ``scale`` and ``zero_point``, empty for float)."""

    values: np.ndarray
    quantization: str
    scale: np.ndarray
    zero_point: np.ndarray


def _check_finite(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize a tensor holding NaN or infinity")


def quantize(x: np.ndarray, quantization: Quantization = "per_tensor", bits: int = 8) -> Encoded:
    """Quantize an ``[N, C, H, W]`` float array (per channel means per ``C``) to ``bits`` (2..8) per value."""
    if quantization not in QUANTIZATIONS or quantization == "entropy":
        known = ", ".join(q for q in QUANTIZATIONS if q != "entropy")
        raise ValueError(
            f"quantization must be one of {known} (entropy: splitdet.common.entropy), got {quantization!r}"
        )
    x = np.asarray(x)
    empty = np.zeros(0, dtype=np.float32)
    if quantization == "none":
        return Encoded(np.ascontiguousarray(x, dtype=np.float32), quantization, empty, empty)
    _check_finite(x)
    if quantization == "float16":
        return Encoded(np.ascontiguousarray(x, dtype=np.float16), quantization, empty, empty)
    x = x.astype(np.float32, copy=False)
    if quantization == "per_tensor":
        lo, hi = x.min().reshape(1), x.max().reshape(1)
        view = (1, 1, 1, 1)
    else:
        if x.ndim != 4:
            raise ValueError(f"per-channel quantization needs an [N, C, H, W] tensor, got {tuple(x.shape)}")
        lo, hi = x.min(axis=(0, 2, 3)), x.max(axis=(0, 2, 3))
        view = (1, -1, 1, 1)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    qmax = (1 << bits) - 1
    scale = (hi - lo) / np.float32(qmax)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    zero_point = (-lo / scale).astype(np.float32)
    q = np.round(x / scale.reshape(view) + zero_point.reshape(view))
    return Encoded(np.ascontiguousarray(np.clip(q, 0, qmax).astype(np.uint8)), quantization, scale, zero_point)


def dequantize(encoded: Encoded) -> np.ndarray:
    """Float32 array back from :func:`quantize`."""
    v = encoded.values
    if encoded.quantization in ("none", "float16"):
        return v.astype(np.float32)
    view = (1, 1, 1, 1) if encoded.quantization == "per_tensor" else (1, -1, 1, 1)
    scale = np.asarray(encoded.scale, dtype=np.float32).reshape(view)
    zero_point = np.asarray(encoded.zero_point, dtype=np.float32).reshape(view)
    return (v.astype(np.float32) - zero_point) * scale


def compress(data: bytes, level: int = 3) -> bytes:
    """zstd-compress ``data`` (level 1..22) with the content size in the frame header."""
    check_level(level)
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def window_cap(size: int) -> int:
    """The largest zstd window a frame of ``size`` content bytes needs: the next power of two, at least 1 KiB."""
    return 1 << max(MIN_WINDOW_LOG, (max(size, 1) - 1).bit_length())


def decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress one zstd frame that must expand to exactly ``expected_size`` bytes.

    Never allocates more than ``expected_size + 1`` bytes, whatever the frame claims: a decompression bomb,
    a truncated or a garbled frame raises :class:`CodecError`. The decoder's window is capped at
    :func:`window_cap` of ``expected_size``, so a frame that asks for a larger window (up to the 2 GiB zstd allows,
    allocated before any byte is produced) is refused.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CodecError(f"payload is not a zstd frame: {e}") from None
    if declared not in (-1, expected_size):
        raise CodecError(f"zstd frame declares {declared} bytes, the frame's shape needs {expected_size}")
    decompressor = zstandard.ZstdDecompressor(max_window_size=window_cap(expected_size))
    reader = decompressor.stream_reader(data, read_across_frames=False)
    chunks: list[bytes] = []
    got = 0
    try:
        while got <= expected_size:
            chunk = reader.read(expected_size + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except zstandard.ZstdError as e:
        raise CodecError(f"corrupt zstd payload: {e}") from None
    if got != expected_size:
        raise CodecError(
            f"zstd payload expands to {'more than ' if got > expected_size else ''}{got} bytes, "
            f"the frame's shape needs {expected_size}"
        )
    return b"".join(chunks)


def tensor_bytes(values: np.ndarray) -> bytes:
    """Raw bytes of an array (uint8, float16 or float32), C order."""
    return np.ascontiguousarray(values).tobytes()


NUMPY_DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}


def tensor_from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Writable array of ``shape`` from raw bytes; the byte count must match exactly."""
    np_dtype = np.dtype(NUMPY_DTYPES[dtype])
    need = int(np.prod(shape)) * np_dtype.itemsize
    if len(data) != need:
        raise CodecError(f"payload holds {len(data)} bytes, shape {list(shape)} of {dtype} needs {need}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()
