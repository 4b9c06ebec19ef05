"""Bottleneck codec: 8-bit affine quantization (per tensor or per channel) or float16, then zstd.

Quantization is the seed's min-max affine scheme, ``q = round(x / scale + zero_point)``, with one correction:
the zero point is kept as a real number instead of being clamped and truncated to an integer, which is what
keeps every element within ``scale / 2`` of its original value even when the range does not include 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from torch import Tensor

from common.codec_settings import QUANTIZATIONS, Quantization, check_level

QMAX = 255


class CodecError(ValueError):
    """A payload that cannot be decoded: wrong size, garbled or oversized compressed data."""


@dataclass(frozen=True)
class Encoded:
    """Quantized values plus what dequantization needs."""

    values: Tensor
    quantization: str
    scale: Tensor
    zero_point: Tensor


def _check_finite(x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize a tensor holding NaN or infinity")


def quantize(x: Tensor, quantization: Quantization = "per_tensor", bits: int = 8) -> Encoded:
    """Quantize an ``[N, C, H, W]`` float tensor (per channel means per ``C``) to ``bits`` (2..8) per value."""
    if quantization not in QUANTIZATIONS or quantization == "entropy":
        known = ", ".join(q for q in QUANTIZATIONS if q != "entropy")
        raise ValueError(f"quantization must be one of {known} (entropy: common.entropy), got {quantization!r}")
    empty = x.new_zeros(0)
    if quantization == "none":
        return Encoded(x.float().contiguous(), quantization, empty, empty)
    if quantization == "float16":
        _check_finite(x)
        return Encoded(x.half().contiguous(), quantization, empty, empty)
    _check_finite(x)
    x = x.float()
    if quantization == "per_tensor":
        lo, hi = x.min().reshape(1), x.max().reshape(1)
        view = (1, 1, 1, 1)
    else:
        if x.dim() != 4:
            raise ValueError(f"per-channel quantization needs an [N, C, H, W] tensor, got {tuple(x.shape)}")
        lo = x.amin(dim=(0, 2, 3))
        hi = x.amax(dim=(0, 2, 3))
        view = (1, -1, 1, 1)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = -lo / scale
    q = torch.round(x / scale.view(view) + zero_point.view(view)).clamp_(0, qmax).to(torch.uint8)
    return Encoded(q.contiguous(), quantization, scale, zero_point)


def dequantize(encoded: Encoded) -> Tensor:
    """Float32 tensor back from :func:`quantize`."""
    v = encoded.values
    if encoded.quantization in ("none", "float16"):
        return v.float()
    view = (1, 1, 1, 1) if encoded.quantization == "per_tensor" else (1, -1, 1, 1)
    return (v.float() - encoded.zero_point.view(view)) * encoded.scale.view(view)


def compress(data: bytes, level: int = 3) -> bytes:
    """zstd-compress ``data`` (level 1..22) with the content size in the frame header."""
    check_level(level)
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress one zstd frame that must expand to exactly ``expected_size`` bytes.

    Never allocates more than ``expected_size + 1`` bytes, whatever the frame claims: a decompression bomb,
    a truncated or a garbled frame raises :class:`CodecError`.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CodecError(f"payload is not a zstd frame: {e}") from None
    if declared not in (-1, expected_size):
        raise CodecError(f"zstd frame declares {declared} bytes, the frame's shape needs {expected_size}")
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
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


def tensor_bytes(values: Tensor) -> bytes:
    """Raw bytes of a contiguous CPU tensor (uint8, float16 or float32)."""
    return values.detach().cpu().contiguous().numpy().tobytes()


NUMPY_DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}


def tensor_from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> Tensor:
    """Tensor of ``shape`` from raw bytes; the byte count must match exactly."""
    np_dtype = np.dtype(NUMPY_DTYPES[dtype])
    need = int(np.prod(shape)) * np_dtype.itemsize
    if len(data) != need:
        raise CodecError(f"payload holds {len(data)} bytes, shape {list(shape)} of {dtype} needs {need}")
    return torch.from_numpy(np.frombuffer(data, dtype=np_dtype).reshape(shape).copy())
