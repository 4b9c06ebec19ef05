"""The entropy codec: a bottleneck rounded to integer symbols and rANS-coded with a learned factorized prior.

An entropic student (``distill/entropic.py``) trains CompressAI's ``EntropyBottleneck`` on its latent; its
integer CDF tables are exported into the checkpoint as :class:`EntropyTables`. The device encodes
``round(y - median)`` per channel with those tables and CompressAI's rANS coder (bit-identical to
``EntropyBottleneck.compress`` for one image), the server decodes with its own copy. The tables are part of the
checkpoint fingerprint, so both sides provably hold the same ones.

Only the compiled rANS extension is loaded, and only when a frame is coded: ``import compressai`` pulls in
pandas, scipy and torch_geometric (1.5 s or more), the extension alone takes milliseconds.

Decoding trusts nothing: the coded string is bounded by the symbol count (a sender falls back to 8-bit + zstd
before it would exceed it) and zero-padded so the C++ decoder, which does not check its read pointer, only ever
reads memory it owns; decoding time is linear in the symbol count plus the string length.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.machinery
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: bits of the CDF tables (CompressAI's entropy coder precision)
PRECISION = 16
#: keys of the tables in a checkpoint
TABLE_KEYS = ("quantized_cdf", "cdf_length", "offset", "medians")
#: a coded string holds at most this many bytes per symbol (plus :data:`STRING_SLACK`)
MAX_BYTES_PER_SYMBOL = 1
STRING_SLACK = 1024
#: symbols a receiver decodes per frame at most (a 3-channel bottleneck of a 1344 x 1344 batch is 0.35 M)
MAX_SYMBOLS = 1 << 21
#: zero bytes appended per symbol and per string byte before decoding (see :func:`decode_symbols`)
PAD_PER_SYMBOL = 80
PAD_PER_BYTE = 16


class EntropyError(ValueError):
    """Tables or a coded string that cannot be used; the message says why."""


@functools.lru_cache(maxsize=1)
def rans() -> Any:
    """CompressAI's compiled rANS module, loaded without running ``compressai/__init__`` (which imports pandas,
    scipy and torch_geometric); falls back to the ordinary import."""
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        raise EntropyError("the entropy codec needs CompressAI: pip install 'compressai==1.2.8'")
    found = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "ans*.so")))
    if found:
        loader = importlib.machinery.ExtensionFileLoader("compressai.ans", found[0])
        module_spec = importlib.util.spec_from_file_location("compressai.ans", found[0], loader=loader)
        module = importlib.util.module_from_spec(module_spec)
        loader.exec_module(module)
        return module
    from compressai import ans  # pragma: no cover - a build without the prebuilt extension file

    return ans


@dataclass(frozen=True)
class EntropyTables:
    """Integer CDFs per channel (``quantized_cdf`` ``[C, L]`` int32, valid up to ``cdf_length``), the symbol
    ``offset`` per channel and the float32 ``medians`` subtracted before rounding."""

    quantized_cdf: Tensor
    cdf_length: Tensor
    offset: Tensor
    medians: Tensor

    def __post_init__(self) -> None:
        cdf, length, offset, medians = (getattr(self, k) for k in TABLE_KEYS)
        if cdf.dim() != 2 or cdf.dtype != torch.int32 or cdf.shape[0] < 1:
            raise EntropyError(f"quantized_cdf must be int32 [C, L], got {cdf.dtype} {list(cdf.shape)}")
        c = cdf.shape[0]
        for name, t, dtype in (("cdf_length", length, torch.int32), ("offset", offset, torch.int32)):
            if t.dtype != dtype or tuple(t.shape) != (c,):
                raise EntropyError(f"{name} must be {dtype} [{c}], got {t.dtype} {list(t.shape)}")
        if medians.dtype != torch.float32 or tuple(medians.shape) != (c,) or not torch.isfinite(medians).all():
            raise EntropyError(f"medians must be finite float32 [{c}]")
        for i in range(c):
            n = int(length[i])
            if not 3 <= n <= cdf.shape[1]:
                raise EntropyError(f"cdf_length[{i}] = {n} is outside 3..{cdf.shape[1]}")
            row = cdf[i, :n]
            if int(row[0]) != 0 or int(row[-1]) != 1 << PRECISION or not bool((row[1:] > row[:-1]).all()):
                raise EntropyError(f"quantized_cdf[{i}] is not a strictly increasing CDF from 0 to 2^{PRECISION}")

    @property
    def channels(self) -> int:
        return int(self.quantized_cdf.shape[0])

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> EntropyTables:
        missing = [k for k in TABLE_KEYS if k not in state]
        if missing:
            raise EntropyError(f"entropy tables lack {', '.join(missing)}")
        return cls(*(state[k].detach().cpu().contiguous() for k in TABLE_KEYS))

    @classmethod
    def from_entropy_bottleneck(cls, eb: torch.nn.Module) -> EntropyTables:
        """Tables of a CompressAI ``EntropyBottleneck`` (its ``update()`` must have run)."""
        return cls(
            eb._quantized_cdf.detach().cpu().to(torch.int32).contiguous(),
            eb._cdf_length.detach().cpu().reshape(-1).to(torch.int32).contiguous(),
            eb._offset.detach().cpu().reshape(-1).to(torch.int32).contiguous(),
            eb._get_medians().detach().cpu().reshape(-1).float().contiguous(),
        )

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).clone() for k in TABLE_KEYS}

    @functools.cached_property
    def _lists(self) -> tuple[list[list[int]], list[int], list[int]]:
        return self.quantized_cdf.tolist(), self.cdf_length.tolist(), self.offset.tolist()

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the tables' values: part of the checkpoint fingerprint."""
        h = hashlib.sha256()
        for k in TABLE_KEYS:
            t = getattr(self, k)
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def max_string_bytes(num_symbols: int) -> int:
    """Longest coded string a receiver accepts for ``num_symbols`` symbols."""
    return MAX_BYTES_PER_SYMBOL * num_symbols + STRING_SLACK


def _indexes(shape: tuple[int, ...]) -> list[int]:
    n, c, h, w = shape
    return torch.arange(c, dtype=torch.int32).view(1, c, 1, 1).expand(n, c, h, w).reshape(-1).tolist()


def symbols(y: Tensor, tables: EntropyTables) -> Tensor:
    """``round(y - median)`` per channel, int32, as ``EntropyBottleneck.compress`` quantizes."""
    if y.dim() != 4 or y.shape[1] != tables.channels:
        raise EntropyError(f"expected an [N, {tables.channels}, H, W] latent, got {list(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("cannot entropy-code a tensor holding NaN or infinity")
    return torch.round(y.detach().float().cpu() - tables.medians.view(1, -1, 1, 1)).to(torch.int32)


def encode_symbols(sym: Tensor, tables: EntropyTables) -> bytes:
    """rANS-code int32 symbols ``[N, C, H, W]`` into one string (values outside the tables are escape-coded)."""
    cdfs, lengths, offsets = tables._lists
    return (
        rans()
        .RansEncoder()
        .encode_with_indexes(sym.reshape(-1).tolist(), _indexes(tuple(sym.shape)), cdfs, lengths, offsets)
    )


def encode(y: Tensor, tables: EntropyTables) -> bytes:
    """The latent ``y`` ``[N, C, H, W]`` as one rANS string."""
    return encode_symbols(symbols(y, tables), tables)


def decode_symbols(data: bytes, shape: tuple[int, int, int, int], tables: EntropyTables) -> Tensor:
    """int32 symbols ``shape`` from a string made by :func:`encode`; bounded in memory and time for any input."""
    if len(shape) != 4 or min(shape) <= 0:
        raise EntropyError(f"shape must be 4 positive dimensions, got {list(shape)}")
    if shape[1] != tables.channels:
        raise EntropyError(f"latent has {shape[1]} channels, the entropy tables have {tables.channels}")
    count = math.prod(shape)
    if count > MAX_SYMBOLS:
        raise EntropyError(f"shape {list(shape)} holds {count} symbols, at most {MAX_SYMBOLS} are decoded")
    limit = max_string_bytes(count)
    if len(data) > limit:
        raise EntropyError(f"coded string of {len(data)} bytes is longer than the {limit} allowed for {count} symbols")
    # CompressAI's decoder does not check its read pointer. Past the end it reads at most one word per symbol, plus
    # the escapes: an escape length read from the string costs at most 15/8 words per string nibble, one read from
    # the zero padding at most 8 nibbles of leftover state, i.e. 15 words. Zeros end every escape, so this
    # padding bounds every read, and the work is linear in symbols + string bytes.
    padded = bytes(data) + bytes(PAD_PER_BYTE * len(data) + PAD_PER_SYMBOL * count + 64)
    cdfs, lengths, offsets = tables._lists
    out = rans().RansDecoder().decode_with_indexes(padded, _indexes(shape), cdfs, lengths, offsets)
    return torch.tensor(out, dtype=torch.int32).reshape(shape)


def decode(data: bytes, shape: tuple[int, int, int, int], tables: EntropyTables) -> Tensor:
    """Float32 latent ``symbols + median`` from a string made by :func:`encode`."""
    return decode_symbols(data, shape, tables).float() + tables.medians.view(1, -1, 1, 1)
