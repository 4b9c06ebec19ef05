"""The entropy codec: a bottleneck rounded to integer symbols and rANS-coded with a learned factorized prior.

An entropic student (``distill/entropic.py``) trains CompressAI's ``EntropyBottleneck`` on its latent; its integer
CDF tables (16-bit precision) are exported into the checkpoint as :class:`EntropyTables`. The device codes
``round(y - median)`` per channel with those tables, the server decodes with its own copy. The tables are part of
the checkpoint fingerprint, so both sides provably hold the same ones.

The coder is constriction's ``AnsCoder`` (Rust, numpy in and out; no torch, no CompressAI), compression
``RANS_CONSTRICTION`` on the wire. Each channel's model is a ``Categorical`` over its table's bins with the
probabilities ``diff(quantized_cdf) / 2^16`` and ``perfect=True``: constriction's exactly invertible 24-bit
fixed-point model closest to them (16-bit probabilities are representable at 24 bits, so this is the trained table
up to constriction's rounding; ``perfect=False`` measurably bumps the rarest bins). The bitstream is a function of
the tables, the symbols and the constriction version (pinned; the golden test in ``tests/test_entropy.py`` fails
when a change alters it).

Out-of-range symbols are escape-coded, as CompressAI's tables intend: the last bin of each table (its tail mass)
is the escape; a value ``v`` below the table's range ``lo..hi`` is then sent as ``raw = 2 (lo - v) - 1``, above it
as ``raw = 2 (v - hi - 1)``, Elias-gamma-like: the bit length ``n`` of ``raw + 1`` beyond its leading 1
(P(n) ~ 2^-(n+1)), then those ``n`` bits, uniform, in chunks of at most 16 bits. So every int32 symbol round-trips
exactly (a value just past the tables costs 1-3 bits more than its escape bin); a latent whose symbols would leave
int32 raises :class:`EntropyError` and the sender falls back to 8-bit + zstd
(:func:`splitdet.common.wire.encode_frame`), as it does whenever the coded string is the larger.

Stream layout (one ``AnsCoder`` stack, decoded in this order): the symbols channel by channel (the ``[N, C, H, W]``
latent transposed to ``[C, N, H, W]``), then the escapes' lengths ``n`` in that order, then their chunks, escape
by escape, low chunk first. A string is the coder's 32-bit words, little endian.

Decoding trusts nothing: the symbol count and the string length are bounded before decoding (a sender falls back
before its string would exceed the bound), constriction checks its own bounds, a decoded escape must be an int32,
and a string with data left over after its symbols is refused; decoding time is linear in the symbol count. Other
garbled strings decode to some symbols (as an ANS decoder past its data yields the lowest bins).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

#: bits of the CDF tables (CompressAI's entropy coder precision)
PRECISION = 16
#: keys of the tables in a checkpoint, and their dtypes
TABLE_KEYS = ("quantized_cdf", "cdf_length", "offset", "medians")
TABLE_DTYPES = {"quantized_cdf": np.int32, "cdf_length": np.int32, "offset": np.int32, "medians": np.float32}
#: a coded string holds at most this many bytes per symbol (plus :data:`STRING_SLACK`)
MAX_BYTES_PER_SYMBOL = 1
STRING_SLACK = 1024
#: symbols a receiver decodes per frame at most (a 3-channel bottleneck of a 1344 x 1344 batch is 0.35 M)
MAX_SYMBOLS = 1 << 21
#: an escape's ``raw + 1`` is sent as its bit length beyond the leading 1 (at most MAX_LENGTH: raw + 1 < 2^34 for
#: any int32 symbol and offset) and those bits in chunks of at most CHUNK_BITS, low chunk first
MAX_LENGTH = 33
CHUNK_BITS = 16
MAX_CHUNKS = 3
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class EntropyError(ValueError):
    """Tables, a latent or a coded string that cannot be used; the message says why."""


def _array(value: Any) -> np.ndarray:
    """A read-only copy of a table (a numpy array or a torch tensor, converted without importing torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.array(value, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class EntropyTables:
    """Integer CDFs per channel (``quantized_cdf`` ``[C, L]`` int32, valid up to ``cdf_length``), the symbol
    ``offset`` per channel and the float32 ``medians`` subtracted before rounding; read-only numpy arrays."""

    quantized_cdf: np.ndarray
    cdf_length: np.ndarray
    offset: np.ndarray
    medians: np.ndarray

    def __post_init__(self) -> None:
        for k in TABLE_KEYS:
            object.__setattr__(self, k, _array(getattr(self, k)))
        cdf, length, offset, medians = (getattr(self, k) for k in TABLE_KEYS)
        if cdf.ndim != 2 or cdf.dtype != np.int32 or cdf.shape[0] < 1:
            raise EntropyError(f"quantized_cdf must be int32 [C, L], got {cdf.dtype} {list(cdf.shape)}")
        c = cdf.shape[0]
        for name, t in (("cdf_length", length), ("offset", offset)):
            if t.dtype != np.int32 or t.shape != (c,):
                raise EntropyError(f"{name} must be int32 [{c}], got {t.dtype} {list(t.shape)}")
        if medians.dtype != np.float32 or medians.shape != (c,) or not np.isfinite(medians).all():
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
    def from_state(cls, state: Mapping[str, Any]) -> EntropyTables:
        """Tables from a checkpoint's ``entropy`` entry (torch tensors or numpy arrays)."""
        missing = [k for k in TABLE_KEYS if k not in state]
        if missing:
            raise EntropyError(f"entropy tables lack {', '.join(missing)}")
        return cls(*(state[k] for k in TABLE_KEYS))

    def state(self) -> dict[str, np.ndarray]:
        """Writable copies of the tables (a checkpoint stores them as tensors of the same dtypes)."""
        return {k: getattr(self, k).copy() for k in TABLE_KEYS}

    def to_json(self) -> str:
        """The tables as one JSON string (dtype, shape, little-endian bytes in base64): the ONNX head's metadata."""
        return json.dumps(
            {
                k: {
                    "dtype": str(a.dtype),
                    "shape": list(a.shape),
                    "data": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
                }
                for k, a in ((k, getattr(self, k)) for k in TABLE_KEYS)
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> EntropyTables:
        """Tables written by :meth:`to_json`; :class:`EntropyError` for anything else."""
        try:
            blob = json.loads(text)
            state = {}
            for k in TABLE_KEYS:
                entry = blob[k]
                dtype = np.dtype(TABLE_DTYPES[k]).newbyteorder("<")
                if entry["dtype"] != np.dtype(TABLE_DTYPES[k]).name:
                    raise EntropyError(f"{k} must be {np.dtype(TABLE_DTYPES[k]).name}, got {entry['dtype']}")
                shape = tuple(int(d) for d in entry["shape"])
                data = base64.b64decode(entry["data"], validate=True)
                if len(data) != math.prod(shape) * dtype.itemsize:
                    raise EntropyError(f"{k} holds {len(data)} bytes for shape {list(shape)}")
                state[k] = np.frombuffer(data, dtype=dtype).reshape(shape).astype(TABLE_DTYPES[k])
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, EntropyError):
                raise
            raise EntropyError(f"entropy tables are not readable JSON tables: {e}") from None
        return cls.from_state(state)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the tables' values: part of the checkpoint fingerprint. The dtype names keep their
        ``torch.`` prefix, so checkpoints keep the fingerprint they had when the tables were torch tensors."""
        h = hashlib.sha256()
        for k in TABLE_KEYS:
            a = getattr(self, k)
            h.update(f"{k}|torch.{a.dtype}|{tuple(a.shape)}|".encode())
            h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
        return h.hexdigest()

    @functools.cached_property
    def models(self) -> list[Any]:
        """One constriction ``Categorical`` per channel over its ``cdf_length - 1`` bins (the last: escape)."""
        return [
            constriction.stream.model.Categorical(
                np.diff(self.quantized_cdf[i, : int(n)]).astype(np.float64) / (1 << PRECISION), perfect=True
            )
            for i, n in enumerate(self.cdf_length)
        ]


#: the uniform model family: each escape chunk's alphabet size is its own parameter
UNIFORM = constriction.stream.model.Uniform()


@functools.lru_cache(maxsize=1)
def _length_model() -> Any:
    """The bit length beyond the leading 1 of ``raw + 1`` (0..MAX_LENGTH): Elias-gamma-like, P(n) ~ 2^-(n+1)."""
    return constriction.stream.model.Categorical(0.5 ** np.arange(1, MAX_LENGTH + 2), perfect=True)


def _chunk_widths(lengths: np.ndarray) -> np.ndarray:
    """``[E, MAX_CHUNKS]`` bits of each escape's chunks, low chunk first (0: no chunk)."""
    return np.clip(lengths[:, None] - CHUNK_BITS * np.arange(MAX_CHUNKS), 0, CHUNK_BITS)


def _escape_chunks(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For values ``m >= 1``: the bit lengths ``n`` beyond the leading 1, and the chunks of ``m - 2^n`` with their
    alphabet sizes (int32, escape by escape, low chunk first)."""
    lengths = np.frexp(m.astype(np.float64))[1].astype(np.int64) - 1  # exact: m < 2^53
    width = _chunk_widths(lengths)
    rest = m - (1 << lengths)
    chunks = (rest[:, None] >> (CHUNK_BITS * np.arange(MAX_CHUNKS))) & ((1 << width) - 1)
    present = width > 0
    return lengths, chunks[present].astype(np.int32), (1 << width[present]).astype(np.int32)


def max_string_bytes(num_symbols: int) -> int:
    """Longest coded string a receiver accepts for ``num_symbols`` symbols."""
    return MAX_BYTES_PER_SYMBOL * num_symbols + STRING_SLACK


def symbols(y: np.ndarray, tables: EntropyTables) -> np.ndarray:
    """``round(y - median)`` per channel as int32 ``[N, C, H, W]`` (float32 arithmetic, half to even, as
    ``EntropyBottleneck.compress`` quantizes); :class:`EntropyError` when a symbol would leave int32."""
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[1] != tables.channels:
        raise EntropyError(f"expected an [N, {tables.channels}, H, W] latent, got {list(y.shape)}")
    if not np.isfinite(y).all():
        raise ValueError("cannot entropy-code a tensor holding NaN or infinity")
    rounded = np.round(y.astype(np.float32, copy=False) - tables.medians.reshape(1, -1, 1, 1))
    if rounded.size and (rounded.min() < INT32_MIN or rounded.max() > INT32_MAX):
        raise EntropyError("latent values beyond the int32 symbol range cannot be entropy-coded")
    return rounded.astype(np.int32)


def _bins(tables: EntropyTables) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (as ``[C, 1]`` int64): the offset and the escape bin (the number of in-range bins)."""
    return tables.offset.astype(np.int64)[:, None], (tables.cdf_length.astype(np.int64) - 2)[:, None]


def encode_symbols(sym: np.ndarray, tables: EntropyTables) -> bytes:
    """rANS-code int32 symbols ``[N, C, H, W]`` into one string (values outside the tables are escape-coded)."""
    sym = np.asarray(sym)
    if sym.ndim != 4 or sym.shape[1] != tables.channels or sym.dtype.kind not in "iu":
        raise EntropyError(f"expected integer symbols [N, {tables.channels}, H, W], got {sym.dtype} {list(sym.shape)}")
    if sym.size and (sym.min() < INT32_MIN or sym.max() > INT32_MAX):
        raise EntropyError("symbols must be int32")
    offset, escape = _bins(tables)
    index = sym.transpose(1, 0, 2, 3).reshape(tables.channels, -1).astype(np.int64) - offset
    below, above = index < 0, index >= escape
    escaped = below | above
    raw = np.where(below, -2 * index - 1, 2 * (index - escape))[escaped]  # channel by channel, as decoded
    coder = constriction.stream.stack.AnsCoder()
    if raw.size:
        lengths, chunks, sizes = _escape_chunks(raw + 1)
        coder.encode_reverse(chunks, UNIFORM, sizes)
        coder.encode_reverse(lengths.astype(np.int32), _length_model())
    coded = np.where(escaped, escape, index).astype(np.int32)
    for c in reversed(range(tables.channels)):
        coder.encode_reverse(coded[c], tables.models[c])
    return coder.get_compressed().astype("<u4").tobytes()


def encode(y: np.ndarray, tables: EntropyTables) -> bytes:
    """The latent ``y`` ``[N, C, H, W]`` as one rANS string."""
    return encode_symbols(symbols(y, tables), tables)


def decode_symbols(data: bytes, shape: tuple[int, int, int, int], tables: EntropyTables) -> np.ndarray:
    """int32 symbols ``shape`` from a string made by :func:`encode`; bounded in memory and time for any input."""
    if len(shape) != 4 or min(shape) <= 0:
        raise EntropyError(f"shape must be 4 positive dimensions, got {list(shape)}")
    n, c, h, w = (int(d) for d in shape)
    if c != tables.channels:
        raise EntropyError(f"latent has {c} channels, the entropy tables have {tables.channels}")
    count = n * c * h * w
    if count > MAX_SYMBOLS:
        raise EntropyError(f"shape {list(shape)} holds {count} symbols, at most {MAX_SYMBOLS} are decoded")
    limit = max_string_bytes(count)
    if len(data) > limit:
        raise EntropyError(f"coded string of {len(data)} bytes is longer than the {limit} allowed for {count} symbols")
    if len(data) % 4:
        raise EntropyError(f"coded string of {len(data)} bytes is not a whole number of 32-bit words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    except ValueError as e:
        raise EntropyError(f"not a coded string: {e}") from None
    offset, escape = _bins(tables)
    coded = np.stack([coder.decode(tables.models[i], count // c) for i in range(c)]).astype(np.int64)
    escaped = coded == escape
    values = coded + offset
    if escaped.any():
        lengths = coder.decode(_length_model(), int(escaped.sum())).astype(np.int64)
        width = _chunk_widths(lengths)
        present = width > 0
        chunks = np.zeros(width.shape, dtype=np.int64)
        if present.any():
            chunks[present] = coder.decode(UNIFORM, (1 << width[present]).astype(np.int32))
        raw = (1 << lengths) + (chunks << (CHUNK_BITS * np.arange(MAX_CHUNKS))).sum(axis=1) - 1
        channel = escaped.nonzero()[0]
        lo, past_hi = offset[channel, 0], (offset + escape)[channel, 0]
        values[escaped] = np.where(raw % 2 == 1, lo - (raw + 1) // 2, past_hi + raw // 2)
    if not coder.is_empty():
        raise EntropyError("coded string holds more data than its symbols")
    if values.min() < INT32_MIN or values.max() > INT32_MAX:
        raise EntropyError("coded string decodes to symbols beyond int32")
    return values.astype(np.int32).reshape(c, n, h, w).transpose(1, 0, 2, 3).copy()


def decode(data: bytes, shape: tuple[int, int, int, int], tables: EntropyTables) -> np.ndarray:
    """Float32 latent ``symbols + median`` from a string made by :func:`encode`."""
    return decode_symbols(data, shape, tables).astype(np.float32) + tables.medians.reshape(1, -1, 1, 1)
