"""HND/GHND steps, frozen parts, neural-filter training, configs and the split-distill command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from torchvision.models.detection.roi_heads import keypointrcnn_inference

from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.models import build_student, build_teacher, init_student_from_teacher
from splitdet.distill.cli import main
from splitdet.distill.config import ConfigError, Term, load_config, parse_config
from splitdet.distill.datasets import SyntheticCoco
from splitdet.distill.filter_training import choose_threshold
from splitdet.distill.mimic import HeadMimic
from splitdet.distill.train import DetectionTraining, freeze_modules
from splitdet.synthetic import SceneConfig

SMALL = dict(min_size=64, max_size=64, fpn_channels=32, box_representation_size=32, anchor_sizes=(8, 16, 32, 64, 128))


def pair(seed: int = 0):
    torch.manual_seed(seed)
    teacher = build_teacher("faster_rcnn", "resnet18", num_classes=3, norm_layer="bn", **SMALL).eval()
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    student = build_student("faster_rcnn", "resnet18", 3, num_classes=3, **SMALL)
    init_student_from_teacher(student, teacher)
    return student, teacher


def terms(*layers):
    return [Term(f"backbone.body.layer{i}", f"backbone.body.layer{i}") for i in layers]


@pytest.mark.parametrize("layers", [(1,), (1, 2, 3, 4)], ids=["hnd", "ghnd"])
def test_a_step_lowers_the_loss_and_leaves_frozen_parts_untouched(layers):
    student, teacher = pair()
    mimic = HeadMimic(student, teacher, terms(*layers)).train()
    frozen = {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("backbone.body.layer1.")}
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    optimizer = torch.optim.Adam([p for p in mimic.parameters() if p.requires_grad], lr=1e-3)
    before = sum(mimic(images).values()).item()
    for _ in range(3):
        loss = sum(mimic(images).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = sum(mimic(images).values()).item()
    assert after < before
    for k, v in student.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    assert set(mimic(images)) == {f"layer{i}" for i in layers}


def test_only_the_backbone_runs_during_distillation():
    student, teacher = pair()
    mimic = HeadMimic(student, teacher, terms(1))
    called = []
    for model in (student, teacher):
        for name in ("rpn", "roi_heads"):
            getattr(model, name).register_forward_hook(lambda *a, n=name: called.append(n))
        model.backbone.body.layer2.register_forward_hook(lambda *a: called.append("layer2"))
    mimic([torch.rand(3, 64, 64)])
    assert called == []


def test_choose_threshold_meets_target_recall():
    import numpy as np

    probs = np.array([0.05, 0.2, 0.3, 0.6, 0.9, 0.01, 0.02, 0.5])
    positive = np.array([False, True, True, True, True, False, False, True])
    t = choose_threshold(probs, positive, 0.8)
    assert (probs[positive] >= t).mean() >= 0.8 and t == 0.3


def base_config(tmp_path, **changes):
    raw = {
        "method": "ghnd",
        "output": str(tmp_path / "out"),
        "dataset": {
            "type": "synthetic",
            "task": "bbox",
            "scene": {"height": 64, "width": 64},
            "train": {"num_images": 4, "seed": 1},
            "val": {"num_images": 4, "seed": 2},
        },
        "teacher": {"ckpt": str(tmp_path / "teacher.pt")},
        "student": {"bottleneck_channels": 3},
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "optimizer": {"type": "Adam", "lr": 0.001},
            "criterion": {"terms": [{"student": "backbone.body.layer1", "factor": 1.0}]},
        },
    }
    for key, value in changes.items():
        raw[key] = value
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "magic"}, "method must be one of"),
        ({"output": None}, None),
        ({"train": {"criterion": {"terms": [{"student": "backbone.fpn"}]}}}, "is not backbone.body.layer1..4"),
        ({"train": {"criterion": {"terms": []}}}, "needs train.criterion.terms"),
        ({"method": "hnd", "train": {"criterion": {"terms": [{"student": "backbone.body.layer3"}]}}}, "layer1 only"),
        (
            {"train": {"optimizer": {"type": "Lion"}, "criterion": {"terms": [{"student": "backbone.body.layer1"}]}}},
            "optimizer.type",
        ),
        ({"dataset": {"type": "imagenet"}}, "dataset.type"),
        ({"dataset": {"type": "coco"}}, "missing key 'coco_root'"),
        ({"student": {}}, "bottleneck_channels"),
        ({"init": {"ckpt": "t.pt"}}, "for method teacher only"),
        ({"method": "teacher", "model": {"arch": "mask_rcnn"}, "init": {"freeze": ["backbone"]}}, "missing key 'ckpt'"),
        ({"method": "teacher", "model": {"arch": "mask_rcnn"}, "init": {"ckpt": "t.pt", "freeze": "x"}}, "freeze"),
        (
            {"method": "teacher", "model": {"arch": "mask_rcnn"}, "init": {"ckpt": "t.pt", "layer1_steps": 0}},
            "init.layer1_steps must be >= 1",
        ),
    ],
)
def test_config_errors_are_one_clear_line(tmp_path, changes, message):
    raw = base_config(tmp_path, **changes)
    if raw["output"] is None:
        del raw["output"]
        message = "missing key 'output'"
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(raw)
    assert "\n" not in str(info.value)


def test_cli_config_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    for args in (["--config", str(bad)], ["--config", str(tmp_path / "missing.yaml")]):
        proc = subprocess.run([sys.executable, "-m", "splitdet.distill.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("split-distill: error:")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda raw: raw.update(outptu=raw.pop("output")),
            "unknown key 'outptu' in the top level (did you mean 'output'?)",
        ),
        (
            lambda raw: raw["teacher"].update(ckt=raw["teacher"].pop("ckpt")),
            "unknown key 'ckt' in teacher (did you mean 'ckpt'?)",
        ),
    ],
    ids=["top-level", "teacher"],
)
def test_cli_misspelled_keys_exit_2_with_one_line(tmp_path, edit, message):
    raw = base_config(tmp_path)
    edit(raw)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "splitdet.distill.cli", "--config", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == f"split-distill: error: {path}: {message}\n"


@pytest.mark.parametrize(
    ("section", "edit", "message"),
    [
        ("train", lambda raw: raw["train"].update(epoch=3), "unknown key 'epoch' in train (did you mean 'epochs'?)"),
        (
            "dataset",
            lambda raw: raw["dataset"].update(typ="coco"),
            "unknown key 'typ' in dataset (did you mean 'type'?)",
        ),
        ("dataset.train", lambda raw: raw["dataset"]["train"].update(num_image=4), "in dataset.train (did you mean"),
        ("criterion", lambda raw: raw["train"]["criterion"].update(reduce="sum"), "in train.criterion"),
        (
            "term",
            lambda raw: raw["train"]["criterion"]["terms"][0].update(weight=2),
            "'weight' in train.criterion.terms[0]",
        ),
        (
            "optimizer",
            lambda raw: raw["train"]["optimizer"].update(momentum=0.9),
            "'momentum' in train.optimizer (Adam)",
        ),
        ("scheduler", lambda raw: raw["train"].update(scheduler={"milestone": [2]}), "did you mean 'milestones'?"),
        ("student", lambda raw: raw["student"].update(ckpt="s.pt"), "'ckpt' in student (method ghnd)"),
        ("type", lambda raw: raw["train"].update(epochs="two"), "train.epochs must be an integer, got 'two'"),
        ("type-float", lambda raw: raw["train"]["optimizer"].update(lr="fast"), "train.optimizer.lr must be a number"),
    ],
)
def test_unknown_keys_and_wrong_types_name_key_and_section(tmp_path, section, edit, message):
    raw = base_config(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "x.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_config_extends_its_base_and_overrides_win(tmp_path):
    """``base:`` merges mappings key by key (lists are replaced); ``--set`` overrides come last."""
    base = tmp_path / "base" / "ghnd.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(base_config(tmp_path)))
    child = tmp_path / "child.yaml"
    child.write_text("base: base/ghnd.yaml\nstudent: {bottleneck_channels: 6}\ntrain: {epochs: 3}\n")
    config = load_config(child)
    assert (config.student, config.epochs, config.batch_size) == ({"bottleneck_channels": 6}, 3, 2)
    assert config.dataset["scene"] == {"height": 64, "width": 64}
    config = load_config(child, ["train.epochs=8", "dataset.train.num_images=2", "train.scheduler.milestones=[1]"])
    assert (config.epochs, config.dataset["train"], config.milestones) == (8, {"num_images": 2, "seed": 1}, (1,))


@pytest.mark.parametrize(
    ("child", "overrides", "message"),
    [
        ("base: missing.yaml\n", [], "config file not found: .*missing.yaml \\(base of"),
        ("base: child.yaml\n", [], "base configs form a cycle"),
        ("base: [a]\n", [], "base must be the path of another config"),
        ("base: base.yaml\n", ["train.epochs"], "is not KEY=VALUE"),
        ("base: base.yaml\n", ["train.epoch=3"], "unknown key 'epoch' in train \\(did you mean 'epochs'\\?\\)"),
        ("base: base.yaml\n", ["train.epochs=many"], "train.epochs must be an integer, got 'many'"),
    ],
)
def test_base_and_override_errors_are_one_line(tmp_path, child, overrides, message):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))
    (tmp_path / "child.yaml").write_text(child)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path / "child.yaml", overrides)
    assert "\n" not in str(info.value)


def test_cli_set_overrides_reach_the_run(tmp_path, monkeypatch):
    import splitdet.distill.train

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))
    seen = {}
    monkeypatch.setattr(
        splitdet.distill.train, "run", lambda config, resume: seen.setdefault("config", config) and "x.pt"
    )
    from splitdet.distill.cli import main

    assert main(["--config", str(tmp_path / "base.yaml"), "--set", "train.epochs=5", "--set", "train.seed=3"]) == 0
    assert (seen["config"].epochs, seen["config"].seed) == (5, 3)


def test_misspelled_scene_key_is_one_line(tmp_path):
    from splitdet.distill.dataset_config import build_dataset

    raw = base_config(tmp_path)
    raw["dataset"]["scene"]["heigth"] = 64
    config = parse_config(raw)
    with pytest.raises(ConfigError, match=r"unknown key 'heigth' in dataset.scene \(did you mean 'height'\?\)"):
        build_dataset(config.dataset, "train")


def test_config_key_lists_match_the_model_config():
    from dataclasses import fields

    from splitdet.common.models import ModelConfig
    from splitdet.distill.config import MODEL_KEYS

    overridden = {"bottleneck_channels", "num_classes", "num_keypoints", "with_filter", "filter_arch"}
    assert set(MODEL_KEYS) == {f.name for f in fields(ModelConfig)} - overridden


def test_shipped_configs_parse():
    from pathlib import Path

    configs = sorted(Path("configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_teacher_then_ghnd_then_filter_runs_end_to_end(tmp_path):
    """A few steps of each method on tiny synthetic data: checkpoints every epoch, resume, a filter threshold."""
    teacher_cfg = {
        "method": "teacher",
        "output": str(tmp_path / "teacher"),
        "dataset": base_config(tmp_path)["dataset"],
        "model": {
            "arch": "faster_rcnn",
            "backbone": "resnet18",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()},
        },
        "train": {"epochs": 1, "batch_size": 2, "optimizer": {"type": "SGD", "lr": 0.001}},
    }
    paths = {}
    for name, raw in (("teacher", teacher_cfg),):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    assert main(["--config", str(paths["teacher"])]) == 0
    teacher = load_checkpoint(tmp_path / "teacher" / "final.pt")
    assert not teacher.config.is_student and teacher.class_names[0] == "__background__"
    assert (tmp_path / "teacher" / "last.pt").is_file()

    ghnd = base_config(tmp_path, teacher={"ckpt": str(tmp_path / "teacher" / "final.pt")})
    ghnd["train"]["epochs"] = 2
    (tmp_path / "ghnd.yaml").write_text(yaml.safe_dump(ghnd))
    assert main(["--config", str(tmp_path / "ghnd.yaml")]) == 0
    student = load_checkpoint(tmp_path / "out" / "final.pt")
    assert student.config.bottleneck_channels == 3 and student.training["epoch"] == 2
    assert main(["--config", str(tmp_path / "ghnd.yaml"), "--resume"]) == 0  # nothing left to do

    filt = {
        "method": "filter",
        "output": str(tmp_path / "filter"),
        "dataset": {
            **ghnd["dataset"],
            "scene": {"height": 64, "width": 64, "empty_ratio": 0.5},
            "train": {"num_images": 32, "seed": 3},
            "calibration": {"num_images": 16, "seed": 5},
            "val": {"num_images": 16, "seed": 4},
        },
        "student": {"ckpt": str(tmp_path / "out" / "final.pt")},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": {"type": "Adam", "lr": 0.01}, "target_recall": 0.9},
    }
    (tmp_path / "filter.yaml").write_text(yaml.safe_dump(filt))
    assert main(["--config", str(tmp_path / "filter.yaml")]) == 0
    with_filter = load_checkpoint(tmp_path / "filter" / "final.pt")
    assert with_filter.config.with_filter and with_filter.config.filter_arch == "presence"
    assert 0.0 <= with_filter.filter_threshold <= 1.0
    # the filter never changes what the server sees: same fingerprint as the student it was trained on
    assert with_filter.fingerprint == student.fingerprint


def _filter_config(tmp_path, student: str) -> dict:
    scene = {
        "height": 64,
        "width": 64,
        "empty_ratio": 0.5,
        "min_size_frac": 0.5,
        "max_size_frac": 0.9,
        "min_distractors": 0,
        "max_distractors": 0,
        "front_distractor_prob": 0.0,
        "low_contrast_prob": 0.0,
    }
    return {
        "method": "filter",
        "output": str(tmp_path / "filter"),
        "dataset": {
            "type": "synthetic",
            "scene": scene,
            "train": {"num_images": 96, "seed": 5},
            "calibration": {"num_images": 48, "seed": 7},
            "val": {"num_images": 48, "seed": 6},
        },
        "student": {"ckpt": student},
        "train": {"epochs": 8, "batch_size": 16, "optimizer": {"type": "Adam", "lr": 0.003}, "target_recall": 0.9},
    }


def test_filter_learns_above_chance_and_its_threshold_comes_from_held_out_frames(tmp_path):
    """On a tiny synthetic set the filter separates empty from object frames better than chance; its threshold is
    chosen on the calibration split (not train, not val) and its metrics are measured on the val split."""
    import numpy as np

    from splitdet.common.checkpoint import save_checkpoint
    from splitdet.common.split import Head
    from splitdet.distill.config import parse_config
    from splitdet.distill.dataset_config import build_dataset
    from splitdet.distill.filter_training import frame_probabilities, run, skip_rates

    torch.manual_seed(0)
    student = build_student("faster_rcnn", "resnet18", 3, num_classes=7, **SMALL).eval()
    names = ["__background__", "person", "disc", "triangle", "star", "ring", "cross"]
    save_checkpoint(student, tmp_path / "student.pt", names)
    config = parse_config(_filter_config(tmp_path, str(tmp_path / "student.pt")))
    ckpt = load_checkpoint(run(config))
    head = Head(ckpt.build_model().eval())
    found = {}
    for split in ("train", "calibration", "val"):
        dataset, _ = build_dataset(config.dataset, split)
        found[split] = frame_probabilities(head, dataset, None)
    assert ckpt.filter_threshold == choose_threshold(*found["calibration"], 0.9)
    assert ckpt.filter_threshold != choose_threshold(*found["val"], 0.9)
    val = ckpt.metrics["filter"]
    assert val == {**val, **skip_rates(*found["val"], ckpt.filter_threshold)} and val["val_frames"] == 48
    probs, positive = found["val"]
    assert np.mean(probs[~positive] < ckpt.filter_threshold) > 0.1  # chance would skip ~10 % at 90 % recall


def test_presence_targets_mark_centres_of_objects_of_interest_only():
    """The centre cell of an object of interest is positive, the rest of its box and a small object are not scored,
    the background is negative; the frame label follows the object-of-interest rule."""
    from splitdet.distill.filter_training import presence_targets

    target = {
        "boxes": torch.tensor([[64.0, 64.0, 128.0, 128.0], [8.0, 8.0, 14.0, 14.0]]),
        "labels": torch.tensor([2, 3]),
        "area": torch.tensor([4096.0, 36.0]),
    }
    presence, scored, label = presence_targets(target, (160, 160), (160, 160), (10, 10), None)
    assert label == 1.0 and presence[6, 6] == 1.0 and scored[6, 6] == 1.0  # centre (96, 96) is in cell 6
    assert presence.sum() == presence[5:7, 5:7].sum() and scored[4, 4] == 0.0  # box, not centre: not scored
    assert presence[0, 0] == 0.0 and scored[0, 0] == 0.0  # the small object's box is not scored either
    assert scored[9, 0] == 1.0 and presence[9, 0] == 0.0  # background: negative
    small_only = {k: v[1:] for k, v in target.items()}
    assert presence_targets(small_only, (160, 160), (160, 160), (10, 10), None)[2] == 0.0
    person_only = presence_targets(target, (160, 160), (160, 160), (10, 10), [1])
    assert person_only[2] == 0.0 and person_only[0].sum() == 0.0


def test_warm_start_copies_matching_weights_and_freezes(tmp_path):
    """A Mask R-CNN teacher warm-started from a Faster R-CNN one: shared weights copied, frozen ones never move."""
    from splitdet.common.checkpoint import save_checkpoint
    from splitdet.distill.train import DetectionTraining, warm_start

    torch.manual_seed(0)
    faster = build_teacher("faster_rcnn", "resnet18", num_classes=3, norm_layer="bn", **SMALL)
    save_checkpoint(faster, tmp_path / "faster.pt", ["__background__", "a", "b"])
    mask = build_teacher("mask_rcnn", "resnet18", num_classes=3, mask_head_layers=(16,), **SMALL)
    source = warm_start(mask, tmp_path / "faster.pt", ["backbone"])
    assert not source.config.is_student
    for name in ("backbone.fpn.inner_blocks.0.0.weight", "roi_heads.box_head.fc6.weight", "backbone.body.bn1.weight"):
        assert torch.equal(mask.state_dict()[name], faster.state_dict()[name]), name
    assert not any(p.requires_grad for p in mask.backbone.parameters())
    before = {k: v.clone() for k, v in mask.backbone.state_dict().items()}
    module = DetectionTraining(mask, ["backbone"]).train()
    assert not mask.backbone.training and mask.roi_heads.training
    image = torch.rand(3, 64, 64)
    target = {
        "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.zeros(1, 64, 64, dtype=torch.uint8),
    }
    target["masks"][0, 8:40, 8:40] = 1
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01)
    loss = sum(module([image], [target]).values())
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in mask.backbone.state_dict().items())
    with pytest.raises(ConfigError, match="no module 'nope'"):
        warm_start(mask, tmp_path / "faster.pt", ["nope"])


def test_freeze_patterns_freeze_batchnorm_but_train_convs(tmp_path):
    """``init.freeze`` takes shell-style patterns: BatchNorms frozen (and in eval mode), their convs still train."""
    from splitdet.distill.train import DetectionTraining, frozen_modules

    torch.manual_seed(0)
    model = build_teacher("faster_rcnn", "resnet18", num_classes=3, norm_layer="bn", **SMALL)
    names = frozen_modules(model, ["backbone.body.layer[34].*.bn*", "backbone.body.layer1"])
    assert "backbone.body.layer3.0.bn1" in names and "backbone.body.layer4.1.bn2" in names
    assert "backbone.body.layer3.0.conv1" not in names and "backbone.body.layer1" in names
    module = DetectionTraining(model, names).train()
    assert not model.backbone.body.layer3[0].bn1.training and model.backbone.body.layer3[0].conv1.training
    with pytest.raises(ConfigError, match=r"no module 'backbone\.body\.layer9\.\*'"):
        frozen_modules(model, ["backbone.body.layer9.*"])
    assert module.frozen == tuple(names)


def test_a_teacher_layer1_is_rebuilt_from_a_student(tmp_path):
    """init.layer1_steps: every weight but layer1 comes from the student, layer1 learns to reproduce the student's
    decoder output, and the warm start's freezing holds afterwards."""
    from splitdet.common.checkpoint import save_checkpoint
    from splitdet.distill.datasets import SyntheticCoco
    from splitdet.distill.layer1_recovery import recover_layer1
    from splitdet.distill.train import warm_start
    from splitdet.synthetic import SceneConfig

    student, _ = pair(seed=3)
    save_checkpoint(student, tmp_path / "student.pt", ["__background__", "a", "b"])
    torch.manual_seed(4)
    fresh = build_teacher("faster_rcnn", "resnet18", num_classes=3, norm_layer="bn", **SMALL)
    with pytest.raises(ConfigError, match="holds a student"):
        warm_start(fresh, tmp_path / "student.pt", ["backbone"])
    source = warm_start(fresh, tmp_path / "student.pt", ["backbone"], from_student=True)
    assert torch.equal(fresh.backbone.body.layer2[0].conv1.weight, student.backbone.body.layer2[0].conv1.weight)
    other = {k: v.clone() for k, v in fresh.state_dict().items() if not k.startswith("backbone.body.layer1.")}
    dataset = SyntheticCoco(8, 0, SceneConfig(height=64, width=64))
    first, last = recover_layer1(fresh, source.build_model(), dataset, steps=30, batch_size=2, lr=3e-3)
    assert last < 0.5 * first
    assert all(torch.equal(v, other[k]) for k, v in fresh.state_dict().items() if k in other)
    assert not any(p.requires_grad for p in fresh.backbone.parameters())
    save_checkpoint(fresh, tmp_path / "teacher.pt", ["__background__", "a", "b"])
    with pytest.raises(ConfigError, match="rebuilds layer1 from a student"):
        warm_start(fresh, tmp_path / "teacher.pt", [], from_student=True)


def test_student_bottleneck_starts_from_another_student(tmp_path):
    from splitdet.common.checkpoint import save_checkpoint
    from splitdet.distill.train import init_bottleneck

    trained, _ = pair(seed=1)
    save_checkpoint(trained, tmp_path / "s.pt", ["__background__", "a", "b"])
    fresh, _ = pair(seed=2)
    init_bottleneck(fresh, tmp_path / "s.pt")
    for k, v in fresh.state_dict().items():
        if k.startswith("backbone.body.layer1."):
            assert torch.equal(v, trained.state_dict()[k]), k
    wider = build_student("faster_rcnn", "resnet18", 6, num_classes=3, **SMALL)
    with pytest.raises(ConfigError, match="3-channel student; this one is resnet18 6-channel"):
        init_bottleneck(wider, tmp_path / "s.pt")


def test_torchrun_two_ranks_train_in_sync_and_write_one_checkpoint(tmp_path):
    """What the README's ``torchrun --nproc_per_node 8`` line does, on 2 CPU processes with gloo: one GHND epoch;
    both ranks finish with the same weights and only rank 0 writes checkpoints."""
    import os
    import re

    from splitdet.common.checkpoint import save_checkpoint
    from splitdet.distill.train import state_digest

    torch.manual_seed(0)
    teacher = build_teacher("faster_rcnn", "resnet18", num_classes=3, norm_layer="bn", **SMALL)
    save_checkpoint(teacher, tmp_path / "teacher.pt", ["__background__", "a", "b"])
    raw = base_config(tmp_path)
    raw["dataset"]["train"]["num_images"] = 8  # 2 steps of 2 images on each rank
    raw["train"]["criterion"]["terms"] = [{"student": f"backbone.body.layer{i}"} for i in (1, 2, 3, 4)]
    (tmp_path / "ghnd.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "splitdet.distill.cli", "--config", str(tmp_path / "ghnd.yaml")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    digests = dict(
        re.findall(r"^split-distill: rank (\d) of 2 done; weights sha256 ([0-9a-f]{64})$", proc.stdout, re.M)
    )
    assert set(digests) == {"0", "1"}, proc.stdout
    assert digests["0"] == digests["1"]
    assert proc.stdout.count("wrote ") == 1 and f"wrote {tmp_path / 'out' / 'final.pt'}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["final.pt", "last.pt"]
    final = load_checkpoint(tmp_path / "out" / "final.pt")
    assert final.training["epoch"] == 1
    student = final.build_model()
    assert state_digest(student) == digests["0"]  # what was written is what both ranks hold


def test_filter_without_a_calibration_split_is_one_line_exit_2(tmp_path, capsys):
    from splitdet.common.checkpoint import save_checkpoint

    student = build_student("faster_rcnn", "resnet18", 3, num_classes=7, **SMALL).eval()
    save_checkpoint(student, tmp_path / "student.pt", ["__background__", *"abcdef"])
    raw = _filter_config(tmp_path, str(tmp_path / "student.pt"))
    del raw["dataset"]["calibration"]
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "f.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.calibration" in err


def test_a_keypoint_training_step_moves_the_keypoints_toward_the_targets():
    """Keypoint R-CNN teacher training (torchvision's losses, body frozen as the keypoint configs freeze it): a few
    steps on one scene bring the keypoints decoded at the person's box closer to the ground truth."""
    scene = SceneConfig(height=96, width=96, min_objects=1, max_objects=1, empty_ratio=0.0, person_ratio=1.0,
                        person_scale=1.8, min_size_frac=0.4, max_size_frac=0.45, person_facing_away=0.0)  # fmt: skip
    dataset = SyntheticCoco(8, seed=5, config=scene, task="keypoints", remove_images_without_annotations=True)
    image, target = dataset[0]
    torch.manual_seed(0)
    model = build_teacher("keypoint_rcnn", "resnet18", num_classes=len(dataset.class_names),
                          num_keypoints=dataset.num_keypoints, norm_layer="bn",
                          **{**SMALL, "min_size": 96, "max_size": 96})  # fmt: skip
    training = DetectionTraining(model, frozen=freeze_modules(model, ["backbone.body"]))
    visible = target["keypoints"][..., 2] > 0

    def keypoint_error() -> float:
        """Mean pixel distance of the visible keypoints decoded at the ground-truth box (no rescaling at 96 x 96)."""
        model.eval()
        with torch.no_grad():
            batch, _ = model.transform([image])
            features = model.backbone(batch.tensors)
            heads = model.roi_heads
            rois = heads.keypoint_roi_pool(features, [target["boxes"]], batch.image_sizes)
            logits = heads.keypoint_predictor(heads.keypoint_head(rois))
            found, _ = keypointrcnn_inference(logits, [target["boxes"]])
        distance = (found[0][..., :2] - target["keypoints"][..., :2]).norm(dim=-1)
        return distance[visible].mean().item()

    before = keypoint_error()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    training.train()
    first = last = None
    for _ in range(25):
        losses = training([image], [target])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        first = losses["loss_keypoint"].item() if first is None else first
        last = losses["loss_keypoint"].item()
    after = keypoint_error()
    assert last < first
    assert after < before / 2, (before, after)
