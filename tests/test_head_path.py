"""One head path: what `split-eval` encodes for an image is byte for byte what the client sends for it."""

from __future__ import annotations

import pytest
import torch

from splitdet.common.checkpoint import save_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.distill import evaluate
from splitdet.distill.datasets import SyntheticCoco
from splitdet.mobile_client.pipeline import Pipeline
from splitdet.mobile_client.settings import Options
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.torch_head import ClientModel
from splitdet.synthetic import SceneConfig
from tests.conftest import TINY_NAMES, tiny_student


@pytest.fixture(scope="module")
def dataset() -> SyntheticCoco:
    return SyntheticCoco(4, 5, SceneConfig(height=64, width=80))


@pytest.fixture(scope="module")
def filter_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "filter.pt"
    save_checkpoint(tiny_student("faster_rcnn", with_filter=True), path, TINY_NAMES)
    return path


def _frames(dataset: SyntheticCoco) -> list[Frame]:
    """The dataset's images as the client's sources deliver them: RGB uint8 arrays."""
    images = [dataset[i][0] for i in range(len(dataset))]
    return [Frame(i, "synthetic", (im * 255).round().byte().permute(1, 2, 0).numpy()) for i, im in enumerate(images)]


def _evaluated_frames(monkeypatch, ckpt, dataset, quantization: str, **kw) -> tuple[list, evaluate.Predictions]:
    """The wire frames `predict` encodes for the run's quantization, and its predictions."""
    sent = []

    def recording(bottleneck, meta, settings, *args, **kwargs):
        frame = encode_frame(bottleneck, meta, settings, *args, **kwargs)
        if settings.quantization == quantization:
            sent.append(frame)
        return frame

    encode_frame = evaluate.encode_frame
    monkeypatch.setattr(evaluate, "encode_frame", recording)
    preds = evaluate.predict(ckpt, dataset, mode="split", quantization=quantization, progress=False, **kw)
    return sent, preds


@pytest.mark.parametrize("quantization", ["per_tensor", "per_channel"])
def test_client_sends_the_bytes_split_eval_measures(monkeypatch, ckpt, dataset, quantization):
    sent, preds = _evaluated_frames(monkeypatch, ckpt, dataset, quantization, batch_size=3)
    model = ClientModel.load(ckpt)
    pipeline = Pipeline(Options(mode="split", codec=CodecSettings(quantization=quantization)), TINY_NAMES, model)
    with torch.inference_mode():
        requests = [pipeline.prepare(frame).request for frame in _frames(dataset)]
    assert len(requests) == len(sent) == len(dataset)
    for request, evaluated, stats in zip(requests, sent, preds.images, strict=True):
        assert request.payload == evaluated.payload
        assert list(request.shape) == list(evaluated.shape)
        assert list(request.scale) == list(evaluated.scale)
        assert stats.payload_bytes == len(request.payload)


def test_filter_decides_alike_with_one_threshold(monkeypatch, filter_ckpt, dataset):
    probs = [
        float(p.object_prob)
        for p in evaluate.predict(
            filter_ckpt, dataset, mode="split", use_filter=True, filter_threshold=0.0, progress=False
        ).images
    ]
    threshold = sorted(probs)[len(probs) // 2]  # half the frames pass
    _, preds = _evaluated_frames(
        monkeypatch, filter_ckpt, dataset, "per_tensor", use_filter=True, filter_threshold=threshold
    )
    model = ClientModel.load(filter_ckpt, filter_threshold=threshold)
    assert model.head.filter_threshold == threshold
    pipeline = Pipeline(Options(mode="split", use_filter=True), TINY_NAMES, model)
    with torch.inference_mode():
        works = [pipeline.prepare(frame) for frame in _frames(dataset)]
    skipped = [w.result is not None and w.result.skipped for w in works]
    assert skipped == [s.skipped for s in preds.images]
    assert 0 < sum(skipped) < len(skipped)
    assert all("filter" in w.timing and "head" in w.timing for w in works)
