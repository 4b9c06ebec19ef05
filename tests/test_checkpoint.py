"""Checkpoints: exact round trip, fingerprints that catch mismatched halves, no pickled code, seed import."""

from __future__ import annotations

import argparse
import os
import re

import pytest
import torch

from splitdet.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from splitdet.common.seed_import import import_seed
from splitdet.common.split import split
from tests.conftest import tiny_student
from tests.test_split import assert_same_detections

NAMES = ["__background__", "a", "b", "c"]


def test_round_trip_gives_identical_detections(tmp_path, images):
    model = tiny_student("keypoint_rcnn", with_filter=True)
    ckpt = save_checkpoint(model, tmp_path / "m.pt", NAMES, keypoint_names=list("vwxyz"), filter_threshold=0.2)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == model.config and loaded.class_names == NAMES
    assert loaded.keypoint_names == list("vwxyz") and loaded.filter_threshold == 0.2
    assert loaded.fingerprint == ckpt.fingerprint
    rebuilt = loaded.build_model()
    rebuilt.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        assert_same_detections(model(images), rebuilt(images), atol=0)


def test_half_storage_is_smaller_and_sides_agree(tmp_path):
    model = tiny_student()
    full = save_checkpoint(model, tmp_path / "f.pt", NAMES)
    half = save_checkpoint(model, tmp_path / "h.pt", NAMES, half=True)
    assert os.path.getsize(tmp_path / "h.pt") < 0.6 * os.path.getsize(tmp_path / "f.pt")
    head, tail = split(half.build_model())
    assert half.side_fingerprint(head=head) == half.side_fingerprint(tail=tail) == half.fingerprint
    assert half.fingerprint != full.fingerprint


def test_fingerprint_detects_mismatched_halves(tmp_path):
    a = save_checkpoint(tiny_student(seed=0), tmp_path / "a.pt", NAMES)
    b = save_checkpoint(tiny_student(seed=1), tmp_path / "b.pt", NAMES)
    head_a, _ = split(a.build_model())
    _, tail_b = split(b.build_model())
    assert a.side_fingerprint(head=head_a) != b.side_fingerprint(tail=tail_b)
    # A tampered half no longer matches its own checkpoint's fingerprint.
    _, tail_a = split(a.build_model())
    with torch.no_grad():
        next(tail_a.parameters()).add_(1e-3)
    assert a.side_fingerprint(tail=tail_a) != a.fingerprint


def test_filter_retraining_keeps_fingerprint(tmp_path):
    model = tiny_student(with_filter=True)
    before = save_checkpoint(model, tmp_path / "a.pt", NAMES).fingerprint
    with torch.no_grad():
        model.neural_filter.classifier.weight.add_(1.0)
    assert save_checkpoint(model, tmp_path / "b.pt", NAMES).fingerprint == before


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "splitdet-checkpoint", "state_dict": {}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="carries pickled code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a checkpoint", "not a PyTorch checkpoint"), (None, "checkpoint not found")],
)
def test_bad_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_other_torch_files_are_named(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a splitdet checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_class_names_must_match(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        save_checkpoint(tiny_student(), tmp_path / "x.pt", ["__background__"])


def to_seed_layout(state):
    """Rewrite a state dict into the seed's layout (2020 FPN key names, nested encoder, filter inside it)."""
    out = {}
    for k, v in state.items():
        if k.startswith("neural_filter."):
            k = "backbone.body.layer1.encoder.ext_classifier." + k[len("neural_filter.") :]
        elif k.startswith("backbone.body.layer1.encoder."):
            k = "backbone.body.layer1.encoder.encoder." + k[len("backbone.body.layer1.encoder.") :]
        k = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", k)
        out[k] = v
    return out


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn", "keypoint_rcnn"])
def test_import_seed_checkpoint(tmp_path, arch, images):
    model = tiny_student(arch, channels=6, with_filter=True, filter_arch="seed")  # the seed's own filter layout
    seed = {
        "model": to_seed_layout(model.state_dict()),
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {"milestones": {5: 1}},
        "best_value": 0.31,
        "config": {"student_model": {"params": {"min_size": 64, "max_size": 96}}},
        "args": argparse.Namespace(config="config/ghnd/x.yaml", distill=True),
    }
    torch.save(seed, tmp_path / "seed.pt")
    ckpt = import_seed(tmp_path / "seed.pt", tmp_path / "imported.pt")
    cfg = ckpt.config
    assert (cfg.arch, cfg.backbone, cfg.bottleneck_channels, cfg.num_classes) == (arch, "resnet18", 6, 4)
    assert cfg.fpn_channels == 32 and cfg.box_representation_size == 64 and cfg.with_filter
    imported = load_checkpoint(tmp_path / "imported.pt").build_model()
    imported.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        assert_same_detections(model(images), imported(images), atol=0)
        stem = split(model)[0].stem(torch.rand(1, 3, 64, 64))
        assert torch.equal(model.neural_filter(stem), imported.neural_filter(stem))


def test_import_seed_rejects_non_seed_files(tmp_path):
    torch.save({"something": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a seed checkpoint"):
        import_seed(tmp_path / "x.pt", tmp_path / "out.pt")
