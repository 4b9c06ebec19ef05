"""Builders for teacher and bottleneck-injected student Faster / Mask / Keypoint R-CNN (ResNet-18/34/50 FPN)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_ResNet50_FPN_Weights,
    KeypointRCNN,
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from splitdet.common.architectures import ARCHS, BACKBONES
from splitdet.common.bottleneck import Bottleneck
from splitdet.common.filter import FILTER_ARCHS, build_filter

NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}
LAYER1_CHANNELS = {"resnet18": 64, "resnet34": 64, "resnet50": 256}
TUPLE_FIELDS = ("anchor_sizes", "mask_head_layers", "keypoint_head_layers")
COCO_WEIGHTS = {
    "faster_rcnn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    "mask_rcnn": MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "keypoint_rcnn": KeypointRCNN_ResNet50_FPN_Weights.COCO_V1,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; ``bottleneck_channels=None`` is the unmodified teacher."""

    arch: str = "faster_rcnn"
    backbone: str = "resnet50"
    bottleneck_channels: int | None = 3
    num_classes: int = 91
    num_keypoints: int = 17
    min_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    box_representation_size: int = 1024
    box_batch_size_per_image: int = 512
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)  #: conv channels of the mask head (torchvision's)
    keypoint_head_layers: tuple[int, ...] = (512,) * 8  #: conv channels of the keypoint head (torchvision's)
    norm_layer: str = "frozen_bn"
    with_filter: bool = False
    filter_arch: str = "presence"  #: neural filter layout (splitdet.common.filter.FILTER_ARCHS)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.bottleneck_channels is not None and not 1 <= self.bottleneck_channels <= 64:
            raise ValueError(f"bottleneck channels must be in 1..64, got {self.bottleneck_channels}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if self.arch == "keypoint_rcnn" and self.num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {self.num_keypoints}")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {list(self.anchor_sizes)}")
        for name in ("mask_head_layers", "keypoint_head_layers"):
            layers = getattr(self, name)
            if not layers or any(c < 1 for c in layers):
                raise ValueError(f"{name} needs at least one positive channel count, got {list(layers)}")
        if self.norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {', '.join(NORM_LAYERS)}, got {self.norm_layer!r}")
        if self.filter_arch not in FILTER_ARCHS:
            raise ValueError(f"filter_arch must be one of {', '.join(FILTER_ARCHS)}, got {self.filter_arch!r}")
        if self.with_filter and self.bottleneck_channels is None:
            raise ValueError("the neural filter needs a student (bottleneck_channels set)")

    @property
    def is_student(self) -> bool:
        return self.bottleneck_channels is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        d.setdefault("filter_arch", "seed")  # checkpoints written before there was a choice hold the seed's layout
        for name in TUPLE_FIELDS:
            if name in d:
                d[name] = tuple(int(s) for s in d[name])
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


def _backbone(config: ModelConfig) -> BackboneWithFPN:
    body = getattr(resnet, config.backbone)(weights=None, norm_layer=NORM_LAYERS[config.norm_layer])
    in_stage2 = body.inplanes // 8
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[in_stage2 * 2**i for i in range(4)],
        out_channels=config.fpn_channels,
    )
    if config.is_student:
        backbone.body.layer1 = Bottleneck(config.bottleneck_channels, LAYER1_CHANNELS[config.backbone])
    return backbone


def build_model(config: ModelConfig) -> GeneralizedRCNN:
    """Build a randomly initialised teacher or student from ``config``; the config is kept as ``model.config``."""
    backbone = _backbone(config)
    rep = config.box_representation_size
    common = dict(
        min_size=config.min_size,
        max_size=config.max_size,
        rpn_anchor_generator=AnchorGenerator(
            sizes=tuple((s,) for s in config.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5
        ),
        box_head=TwoMLPHead(config.fpn_channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, config.num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
    )
    if config.arch == "faster_rcnn":
        model = FasterRCNN(backbone, **common)
    elif config.arch == "mask_rcnn":
        # torchvision derives the mask predictor from num_classes, which must be None once box_predictor is given.
        layers = config.mask_head_layers
        model = MaskRCNN(
            backbone,
            mask_head=MaskRCNNHeads(config.fpn_channels, layers, dilation=1),
            mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], config.num_classes),
            **common,
        )
    else:
        layers = config.keypoint_head_layers
        model = KeypointRCNN(
            backbone,
            keypoint_head=KeypointRCNNHeads(config.fpn_channels, layers),
            keypoint_predictor=KeypointRCNNPredictor(layers[-1], config.num_keypoints),
            **common,
        )
    model.neural_filter = build_filter(config.filter_arch) if config.with_filter else None
    model.config = config
    return model


def build_student(
    arch: str,
    backbone: str = "resnet50",
    channels: int = 3,
    num_classes: int = 91,
    num_keypoints: int = 17,
    min_size: int = 800,
    max_size: int = 1333,
    **options: Any,
) -> GeneralizedRCNN:
    """A bottleneck-injected student; ``options`` are further :class:`ModelConfig` fields."""
    return build_model(ModelConfig(arch, backbone, channels, num_classes, num_keypoints, min_size, max_size, **options))


def coco_weights_path(arch: str) -> Path:
    """Where torchvision keeps the COCO_V1 weights of ``arch`` (ResNet-50 FPN) in the torch hub cache."""
    url = COCO_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def coco_class_names(config: ModelConfig) -> tuple[list[str], list[str]]:
    """Class and keypoint names of torchvision's COCO models (labels are COCO category ids), else generic ones."""
    if config.arch == "keypoint_rcnn" and config.num_classes == 2:
        meta = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.meta
        keypoints = list(meta["keypoint_names"]) if config.num_keypoints == len(meta["keypoint_names"]) else []
        return ["__background__", *meta["categories"][1:]], keypoints
    coco = list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    if config.num_classes == len(coco):
        return coco, []
    return ["__background__"] + [f"class_{i}" for i in range(1, config.num_classes)], []


def build_teacher(
    arch: str,
    backbone: str = "resnet50",
    num_classes: int = 91,
    num_keypoints: int = 17,
    weights: str | Path | None = None,
    **options: Any,
) -> GeneralizedRCNN:
    """The unmodified torchvision model. ``weights="COCO"`` loads torchvision's COCO_V1 weights from the torch
    cache, a path loads that file; neither ever downloads."""
    config = ModelConfig(arch, backbone, None, num_classes, num_keypoints, **options)
    model = build_model(config)
    if weights is None:
        return model
    if str(weights).upper() == "COCO":
        if arch not in COCO_WEIGHTS or backbone != "resnet50":
            raise ValueError(f"torchvision publishes COCO weights only for ResNet-50 FPN, not {backbone}")
        path = coco_weights_path(arch)
        if not path.is_file():
            raise FileNotFoundError(
                f"COCO weights for {arch} not found: download {COCO_WEIGHTS[arch].url} and put it at {path} "
                f"(or pass its path as weights=)"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"teacher weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def init_student_from_teacher(student: GeneralizedRCNN, teacher: GeneralizedRCNN) -> None:
    """Copy every teacher weight into the student except the replaced ``layer1`` (and the student's filter)."""
    own = student.state_dict()
    taken = {
        k: v
        for k, v in teacher.state_dict().items()
        if not k.startswith(("backbone.body.layer1.", "neural_filter.")) and not k.endswith("num_batches_tracked")
    }
    own_keys = {k for k in own if not k.startswith(("backbone.body.layer1.", "neural_filter."))}
    own_keys = {k for k in own_keys if not k.endswith("num_batches_tracked")}
    if own_keys != set(taken):
        extra = sorted(set(taken) - own_keys)[:3] or sorted(own_keys - set(taken))[:3]
        raise ValueError(f"teacher and student do not match: {extra} is only in one of them")
    for k, v in taken.items():
        if own[k].shape != v.shape:
            raise ValueError(f"teacher and student do not match at {k}: {tuple(v.shape)} vs {tuple(own[k].shape)}")
    student.load_state_dict(taken, strict=False)
