"""Quantization error bounds and bounded, validating zstd decompression (numpy only: the codec has no torch)."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdet.common.codec import (
    CodecError,
    compress,
    decompress,
    dequantize,
    quantize,
    tensor_bytes,
    tensor_from_bytes,
    window_cap,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
bottlenecks = hnp.arrays(np.float32, hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=6), elements=finite)


@settings(max_examples=200, deadline=None)
@given(bottlenecks, st.sampled_from(["per_tensor", "per_channel"]))
def test_quantization_error_at_most_half_a_step(x, quantization):
    enc = quantize(x, quantization)
    assert enc.values.dtype == np.uint8
    view = (1, -1, 1, 1) if quantization == "per_channel" else (1, 1, 1, 1)
    err = np.abs(dequantize(enc) - x)
    # half a step, plus float32 rounding of values up to 1e4
    assert (err <= enc.scale.reshape(view) / 2 + 1e-3).all()


def test_range_away_from_zero_keeps_bound():
    """The seed clamped its zero point to [0, 255]; ranges like [10, 11] then broke the bound."""
    t = np.linspace(10, 11, 300, dtype=np.float32).reshape(1, 3, 10, 10)
    enc = quantize(t)
    assert np.abs(dequantize(enc) - t).max() <= enc.scale[0] / 2 + 1e-6


def test_constant_tensor_round_trips_exactly():
    t = np.full((1, 2, 3, 3), 4.25, dtype=np.float32)
    assert np.array_equal(dequantize(quantize(t, "per_channel")), t)


def test_float16_and_none():
    t = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert quantize(t, "float16").values.dtype == np.float16
    np.testing.assert_allclose(dequantize(quantize(t, "float16")), t, atol=1e-2, rtol=1e-3)
    assert np.array_equal(dequantize(quantize(t, "none")), t)


def test_non_finite_and_unknown_mode_rejected():
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize(np.array([[[[np.nan]]]], dtype=np.float32))
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize(np.zeros((1, 1, 1, 1), dtype=np.float32), "int4")


def test_zstd_round_trip_and_levels():
    data = tensor_bytes(quantize(np.random.default_rng(0).standard_normal((1, 3, 50, 50)).astype(np.float32)).values)
    for level in (1, 3, 19):
        assert decompress(compress(data, level), len(data)) == data
    with pytest.raises(ValueError, match="level"):
        compress(data, 0)


def test_decompression_bomb_rejected_without_expanding():
    bomb = zstandard.ZstdCompressor().compress(bytes(50_000_000))
    with pytest.raises(CodecError, match="declares 50000000 bytes"):
        decompress(bomb, 1000)
    # A bomb that hides its size in the header is cut at the expected size + 1 (its window fits the shape)...
    small_window = zstandard.ZstdCompressionParameters(window_log=10, write_content_size=False)
    streamed = zstandard.ZstdCompressor(compression_params=small_window).compressobj()
    hidden = streamed.compress(bytes(50_000_000)) + streamed.flush()
    with pytest.raises(CodecError, match="more than 1001 bytes"):
        decompress(hidden, 1000)
    # ... and one whose window is larger than the shape needs is refused before the window is allocated.
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    hidden = streamed.compress(bytes(50_000_000)) + streamed.flush()
    with pytest.raises(CodecError, match="too much memory"):
        decompress(hidden, 1000)


def test_decompression_window_capped_to_the_shape():
    """The window cap is the next power of two of the expected size (>= 1 KiB): every honest frame fits, a frame
    declaring a 128 MiB window for a small payload is refused."""
    assert [window_cap(n) for n in (1, 1024, 1025, 168_912)] == [1024, 1024, 2048, 262_144]
    for n in (1, 1000, 1025, 5000, 168_912):
        data = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert decompress(compress(data, 19), n) == data
    big_window = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    streamed = zstandard.ZstdCompressor(compression_params=big_window).compressobj()
    frame = streamed.compress(bytes(5000)) + streamed.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 27
    with pytest.raises(CodecError, match="too much memory"):
        decompress(frame, 5000)


def test_truncated_and_garbled_payloads_rejected():
    data = bytes(range(256)) * 20
    frame = compress(data)
    with pytest.raises(CodecError):
        decompress(frame[: len(frame) // 2], len(data))
    with pytest.raises(CodecError, match="not a zstd frame"):
        decompress(b"definitely not zstd", len(data))
    with pytest.raises(CodecError):
        decompress(frame, len(data) + 1)


def test_tensor_from_bytes_checks_size():
    with pytest.raises(CodecError, match="needs 12"):
        tensor_from_bytes(b"\0" * 11, "uint8", (1, 3, 2, 2))
    assert tensor_from_bytes(b"\0" * 24, "float16", (1, 3, 2, 2)).dtype == np.float16
