"""The split contract: head -> tail gives the detections of the whole student."""

from __future__ import annotations

import pytest
import torch

from splitdet.common.codec import dequantize, quantize
from splitdet.common.models import ARCHS, build_teacher
from splitdet.common.split import bottleneck_shape, split
from tests.conftest import tiny_student


def assert_same_detections(expected, actual, atol=1e-5):
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        assert e.keys() == a.keys()
        for key in e:
            assert e[key].shape == a[key].shape, key
            torch.testing.assert_close(a[key].float(), e[key].float(), atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_tail_equals_whole_student(arch, images):
    model = tiny_student(arch)
    head, tail = split(model)
    with torch.no_grad():
        expected = model(images)
        out = head(images)
        actual = tail(out.bottleneck, out.meta)
    assert len(expected[0]["boxes"]) > 0
    assert_same_detections(expected, actual)
    if arch == "mask_rcnn":
        assert actual[0]["masks"].shape[-2:] == (70, 90)
    if arch == "keypoint_rcnn":
        assert actual[0]["keypoints"].shape[1:] == (5, 3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("quantization", ["per_tensor", "per_channel"])
def test_quantized_bottleneck_within_bound(arch, quantization, images):
    model = tiny_student(arch)
    head, tail = split(model)
    with torch.no_grad():
        out = head(images)
        enc = quantize(out.bottleneck.numpy(), quantization)
        restored = torch.from_numpy(dequantize(enc))
        detections = tail(restored, out.meta)
    view = (1, -1, 1, 1) if quantization == "per_channel" else (1, 1, 1, 1)
    assert ((restored - out.bottleneck).abs() <= torch.from_numpy(enc.scale).view(view) / 2 + 1e-6).all()
    assert len(detections) == len(images)


def test_bottleneck_shape_rule():
    model = tiny_student(channels=6)
    head, _ = split(model)
    with torch.no_grad():
        out = head([torch.rand(3, 64, 96)])
    c, h, w = bottleneck_shape(6, out.meta.batch_shape)
    assert tuple(out.bottleneck.shape) == (1, c, h, w)
    assert (h, w) == (out.meta.batch_shape[0] // 4 + 4, out.meta.batch_shape[1] // 4 + 4)


def test_filter_skips_frames_without_running_encoder(images):
    model = tiny_student(with_filter=True)
    head, _ = split(model, filter_threshold=1.1)  # nothing can pass
    calls = []
    head.encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = head(images)
    assert out.bottleneck is None and out.kept == [] and out.skipped == [True, True]
    assert out.object_prob.shape == (2,)
    assert calls == []


def test_filter_keeps_subset_and_tail_matches(images):
    model = tiny_student(with_filter=True)
    head, tail = split(model)
    with torch.no_grad():
        probs = head(images).object_prob
        head.filter_threshold = float((probs[0] + probs[1]) / 2)
        out = head(images)
        keep = int(torch.argmax(probs))
        assert out.kept == [keep]
        expected = [model(images)[keep]]  # same padded batch as the head saw
        actual = tail(out.bottleneck, out.meta)
    assert_same_detections(expected, actual)


def test_use_filter_false_ignores_filter(images):
    head, _ = split(tiny_student(with_filter=True), filter_threshold=1.1)
    with torch.no_grad():
        out = head(images, use_filter=False)
    assert out.kept == [0, 1] and out.object_prob is None


def test_teacher_cannot_be_split():
    teacher = build_teacher("faster_rcnn", "resnet18", num_classes=3)
    with pytest.raises(ValueError, match="only a bottleneck-injected student"):
        split(teacher)
