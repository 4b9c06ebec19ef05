"""Model builders: shapes per backbone, config validation, teacher weights, init from the teacher."""

from __future__ import annotations

import pytest
import torch

from splitdet.common.models import ModelConfig, build_model, build_student, build_teacher, init_student_from_teacher


@pytest.mark.parametrize(("backbone", "layer1_channels"), [("resnet18", 64), ("resnet34", 64), ("resnet50", 256)])
def test_bottleneck_replaces_layer1_with_matching_shapes(backbone, layer1_channels):
    model = build_student("faster_rcnn", backbone, 5, num_classes=3)
    body = model.backbone.body
    stem = torch.rand(1, 64, 16, 24)
    z = body.layer1.encoder(stem)
    assert z.shape == (1, 5, 20, 28)
    assert body.layer1.decoder(z).shape == (1, layer1_channels, 16, 24)


def test_encoder_and_decoder_follow_the_seed_layout():
    layer1 = build_student("faster_rcnn", "resnet50", 3).backbone.body.layer1
    assert [type(m).__name__ for m in layer1.encoder] == [
        "Conv2d",
        "BatchNorm2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "Conv2d",
    ]
    assert [type(m).__name__ for m in layer1.decoder] == [
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
    ]
    assert all(m.bias is None for m in layer1.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "yolo"}, "arch must be one of"),
        ({"backbone": "resnet101"}, "backbone must be one of"),
        ({"bottleneck_channels": 0}, "1..64"),
        ({"bottleneck_channels": 65}, "1..64"),
        ({"num_classes": 1}, "num_classes"),
        ({"min_size": 900, "max_size": 800}, "min_size"),
        ({"anchor_sizes": (32, 64)}, "anchor_sizes"),
        ({"bottleneck_channels": None, "with_filter": True}, "needs a student"),
        ({"mask_head_layers": ()}, "mask_head_layers"),
        ({"keypoint_head_layers": (64, 0)}, "keypoint_head_layers"),
    ],
)
def test_bad_config_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_lighter_roi_heads_change_only_the_heads():
    from splitdet.common.models import build_model

    mask = build_model(ModelConfig("mask_rcnn", "resnet18", None, 3, mask_head_layers=(32, 16)))
    assert [m.out_channels for m in mask.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 16]
    assert mask.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    kp = build_model(ModelConfig("keypoint_rcnn", "resnet18", None, 2, 5, keypoint_head_layers=(24,)))
    assert [m.out_channels for m in kp.roi_heads.keypoint_head.modules() if isinstance(m, torch.nn.Conv2d)] == [24]
    out = kp.eval()([torch.rand(3, 64, 64)])[0]
    assert out["keypoints"].shape[1:] == (5, 3)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(
        arch="mask_rcnn", backbone="resnet18", anchor_sizes=(16, 32, 64, 128, 256), mask_head_layers=(64, 64)
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_coco_teacher_weights_missing_gives_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        build_teacher("keypoint_rcnn", weights="COCO")
    message = str(info.value)
    assert "keypointrcnn_resnet50_fpn_coco" in message and str(tmp_path / "checkpoints") in message
    with pytest.raises(ValueError, match="only for ResNet-50"):
        build_teacher("faster_rcnn", "resnet18", weights="COCO")


def test_coco_teacher_loads_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = build_teacher("faster_rcnn", "resnet50", num_classes=91)
    url_name = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / url_name)
    loaded = build_teacher("faster_rcnn", "resnet50", weights="COCO")
    for (k, a), b in zip(reference.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_student_initialised_from_teacher_shares_everything_but_layer1():
    teacher = build_teacher("mask_rcnn", "resnet18", num_classes=3)
    student = build_model(ModelConfig("mask_rcnn", "resnet18", 3, num_classes=3, with_filter=True))
    init_student_from_teacher(student, teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    shared = [k for k in s_state if not k.startswith(("backbone.body.layer1.", "neural_filter."))]
    assert shared and all(torch.equal(s_state[k], t_state[k]) for k in shared)
    with pytest.raises(ValueError, match="do not match"):
        init_student_from_teacher(student, build_teacher("mask_rcnn", "resnet34", num_classes=3))
