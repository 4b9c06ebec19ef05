"""The detectors and backbones a student can be built from (no torch, so CLIs parse fast)."""

ARCHS = ("faster_rcnn", "mask_rcnn", "keypoint_rcnn")
BACKBONES = ("resnet18", "resnet34", "resnet50")
