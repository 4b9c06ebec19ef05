"""Import the seed's published checkpoints (emdl2020 / icpr2020 zips) into this project's checkpoint format.

A seed file is ``{'model', 'optimizer', 'lr_scheduler', 'best_value', 'config', 'args'}``; its model is
torchvision's GeneralizedRCNN layout except ``backbone.body.layer1`` = ``{encoder: {encoder, ext_classifier},
decoder}``, and an FPN saved by the torchvision of 2020 (``inner_blocks.{i}.weight``). Architecture, backbone
and channel count are read from the tensors themselves.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from splitdet.common.checkpoint import Checkpoint, CheckpointError, read_checkpoint_file, save_checkpoint
from splitdet.common.filter import DEFAULT_THRESHOLD
from splitdet.common.models import LAYER1_CHANNELS, ModelConfig, build_model, coco_class_names

SEED_PREFIXES = (
    ("backbone.body.layer1.encoder.ext_classifier.", "neural_filter."),
    ("backbone.body.layer1.encoder.encoder.", "backbone.body.layer1.encoder."),
)
OLD_FPN_KEY = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")
FILTER_CONVS = (1, 4, 7)


def _rename(key: str) -> str:
    for old, new in SEED_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    m = OLD_FPN_KEY.match(key)
    return f"{m.group(1)}.0.{m.group(2)}" if m else key


def _dig(config: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(config, dict) or k not in config:
            return default
        config = config[k]
    return config


def seed_state_to_config(state: dict[str, torch.Tensor], seed_config: Any = None) -> ModelConfig:
    """Infer the :class:`ModelConfig` of a (renamed) seed state dict from its tensors."""
    enc_out = state.get("backbone.body.layer1.encoder.7.weight")
    if enc_out is None:
        raise CheckpointError("not a bottleneck-injected model: no backbone.body.layer1.encoder.encoder.7 weights")
    if "roi_heads.keypoint_predictor.kps_score_lowres.weight" in state:
        arch = "keypoint_rcnn"
    elif "roi_heads.mask_predictor.mask_fcn_logits.weight" in state:
        arch = "mask_rcnn"
    else:
        arch = "faster_rcnn"
    if "backbone.body.layer2.0.conv3.weight" in state:
        backbone = "resnet50"
    else:
        blocks = {k.split(".")[3] for k in state if k.startswith("backbone.body.layer3.")}
        backbone = "resnet18" if len(blocks) == 2 else "resnet34"
    decoder_out = state["backbone.body.layer1.decoder.9.weight"].shape[0]
    if decoder_out != LAYER1_CHANNELS[backbone]:
        raise CheckpointError(
            f"the decoder outputs {decoder_out} channels but {backbone}'s layer2 takes {LAYER1_CHANNELS[backbone]}"
        )
    params = _dig(seed_config, "student_model", "params", default={}) or {}
    return ModelConfig(
        arch=arch,
        backbone=backbone,
        bottleneck_channels=int(enc_out.shape[0]),
        num_classes=int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]),
        num_keypoints=int(state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1])
        if arch == "keypoint_rcnn"
        else 17,
        min_size=int(params.get("min_size", 800)),
        max_size=int(params.get("max_size", 1333)),
        fpn_channels=int(state["backbone.fpn.inner_blocks.0.0.weight"].shape[0]),
        box_representation_size=int(state["roi_heads.box_head.fc6.weight"].shape[0]),
        norm_layer="bn" if "backbone.body.bn1.num_batches_tracked" in state else "frozen_bn",
        with_filter=any(k.startswith("neural_filter.") for k in state),
        filter_arch="seed",
    )


def import_seed(path: str | Path, out: str | Path) -> Checkpoint:
    """Convert a seed checkpoint to this project's format at ``out`` and return it."""
    # The seed stored its argparse.Namespace beside the weights: allow exactly that class, nothing else.
    with torch.serialization.safe_globals([argparse.Namespace]):
        blob = read_checkpoint_file(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise CheckpointError(f"{path} is not a seed checkpoint: no 'model' state dict")
    state = {_rename(k): v for k, v in blob["model"].items()}
    config = seed_state_to_config(state, blob.get("config"))
    model = build_model(config)
    own = model.state_dict()
    for i in FILTER_CONVS:  # a bias-free conv before BatchNorm is the same as a zero bias
        key = f"neural_filter.extractor.{i}.bias"
        if config.with_filter and key not in state:
            state[key] = torch.zeros_like(own[key])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"seed weights do not fit the inferred {config.arch}/{config.backbone}: {str(e).splitlines()[0]}"
        ) from None
    class_names, keypoint_names = coco_class_names(config)
    threshold = _dig(blob.get("config"), "ext_model", "threshold", default=DEFAULT_THRESHOLD)
    return save_checkpoint(
        model.eval(),
        out,
        class_names=class_names,
        keypoint_names=keypoint_names,
        filter_threshold=float(threshold),
        training={"imported_from": str(path), "seed_best_value": float(blob.get("best_value", 0.0) or 0.0)},
    )
