"""Wire frames: round trips, and every malformed field refused with a message naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zstandard
from pycocotools import mask as mask_utils

from splitdet.common.codec_settings import QUANTIZATIONS, CodecSettings
from splitdet.common.split import BatchMeta
from splitdet.common.wire import (
    QUANTIZATION_TO_PB,
    FrameError,
    FrameLimits,
    decode_detections,
    decode_frame,
    encode_detections,
    encode_frame,
)

META = BatchMeta([(70, 90), (80, 60)], [(64, 82), (96, 72)], (96, 96))


def make_frame(**settings):
    x = torch.randn(2, 3, 28, 28)
    return x, encode_frame(x, META, CodecSettings(**settings), fingerprint="abc", frame_id=7)


@pytest.mark.parametrize("quantization", ["per_tensor", "per_channel", "float16", "none"])
@pytest.mark.parametrize("compression", ["zstd", "raw"])
def test_round_trip(quantization, compression):
    x, frame = make_frame(quantization=quantization, compression=compression)
    y, meta = decode_frame(frame, FrameLimits(channels=3))
    assert meta == META and frame.frame_id == 7 and frame.fingerprint == "abc"
    tol = {"float16": 1e-2, "none": 0.0}.get(quantization) if not frame.scale else max(frame.scale) / 2
    assert (y - x).abs().max() <= tol + 1e-6


def test_8bit_zstd_is_smaller_than_raw_float():
    x = torch.relu(torch.randn(1, 3, 204, 276))
    frame = encode_frame(x, BatchMeta([(800, 1088)], [(800, 1088)], (800, 1088)))
    assert frame.ByteSize() < x.numel()  # under one byte per element


def corrupt(frame, **fields):
    bad = type(frame)()
    bad.CopyFrom(frame)
    for name, value in fields.items():
        if isinstance(value, list):
            bad.ClearField(name)
            getattr(bad, name).extend(value)
        else:
            setattr(bad, name, value)
    return bad


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format_version": 2}, "format_version 2"),
        ({"shape": [2, 3, 28]}, "4 positive dimensions"),
        ({"shape": [2, 3, 0, 28]}, "4 positive dimensions"),
        ({"shape": [2, 4, 28, 28]}, "expects 3"),
        ({"shape": [2, 3, 30, 28]}, "does not match batch_shape"),
        ({"shape": [40, 3, 28, 28]}, "at most 32"),
        ({"shape": [2, 3, 100000, 100000]}, "exceeds the limit"),
        ({"shape": [1, 3, 28, 28]}, "declares 1 images"),
        ({"scale": [float("nan")]}, "finite and positive"),
        ({"scale": [0.0]}, "finite and positive"),
        ({"scale": [1.0, 2.0]}, "needs 1 scale"),
        ({"zero_point": [float("inf")]}, "finite"),
        ({"dtype": 3}, "does not go with"),
        ({"quantization": 9}, "unknown quantization"),
        ({"compression": 9}, "unknown compression"),
        ({"payload": b"garbage"}, "not a zstd frame"),
        ({"payload": zstandard.ZstdCompressor().compress(bytes(10**8))}, "declares 100000000 bytes"),
    ],
)
def test_malformed_frames_refused(fields, message):
    _, frame = make_frame()
    with pytest.raises(FrameError, match=message):
        decode_frame(corrupt(frame, **fields), FrameLimits(channels=3))


def test_bad_sizes_refused():
    _, frame = make_frame()
    bad = corrupt(frame)
    bad.image_sizes[0].height = 200  # larger than the padded batch
    with pytest.raises(FrameError, match="does not fit the batch shape"):
        decode_frame(bad)
    bad = corrupt(frame)
    bad.original_sizes[1].width = 10**6
    with pytest.raises(FrameError, match=r"outside 1\.\.8192"):
        decode_frame(bad)
    bad = corrupt(frame)
    bad.ClearField("batch_shape")
    with pytest.raises(FrameError, match="batch_shape is missing"):
        decode_frame(bad)


def test_raw_payload_size_checked():
    _, frame = make_frame(compression="raw")
    with pytest.raises(FrameError, match="needs"):
        decode_frame(corrupt(frame, payload=frame.payload[:-1]))


def test_detections_round_trip_with_masks_and_keypoints():
    masks = torch.zeros(2, 1, 20, 30)
    masks[0, 0, 2:8, 3:9] = 0.9
    masks[1, 0, 10:, 10:] = 0.6
    det = {
        "boxes": torch.tensor([[3.0, 2.0, 9.0, 8.0], [10.0, 10.0, 30.0, 20.0]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
        "keypoints": torch.rand(2, 5, 3),
        "keypoints_scores": torch.rand(2, 5),
    }
    out = decode_detections(encode_detections(det))
    np.testing.assert_allclose(out["boxes"], det["boxes"].numpy())
    np.testing.assert_array_equal(out["labels"], [1, 3])
    np.testing.assert_allclose(out["keypoints"], det["keypoints"].numpy())
    decoded = mask_utils.decode({"size": out["masks"][0]["size"], "counts": out["masks"][0]["counts"]})
    assert decoded.sum() == 36 and decoded[2:8, 3:9].all()


def test_empty_detections():
    det = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, 5, 5),
    }
    out = decode_detections(encode_detections(det))
    assert out["boxes"].shape == (0, 4) and "masks" not in out


def test_wire_speaks_every_quantization_the_codec_has():
    assert set(QUANTIZATION_TO_PB) == set(QUANTIZATIONS)
