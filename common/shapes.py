"""Sizes through the head, without torch: the transform's resize and padding rules, the bottleneck shape, and
:class:`BatchMeta` (what the tail needs besides the bottleneck).

The torch head (``splitdet.common.split``) and the ONNX head (``splitdet.mobile_client.onnx_head``) both use these; the
rules are torchvision's ``GeneralizedRCNNTransform`` in eval mode, written out so the device can apply them without
torch (``tests/test_onnx_head.py`` checks them against the transform itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Size = tuple[int, int]


@dataclass(frozen=True)
class BatchMeta:
    """What the tail needs besides the bottleneck: per-image sizes and the padded batch shape."""

    original_sizes: list[Size]
    image_sizes: list[Size]
    batch_shape: Size

    def __post_init__(self) -> None:
        if len(self.original_sizes) != len(self.image_sizes):
            raise ValueError("original_sizes and image_sizes must have one entry per image")
        bh, bw = self.batch_shape
        for h, w in self.image_sizes:
            if not (0 < h <= bh and 0 < w <= bw):
                raise ValueError(f"resized image size {h}x{w} does not fit the batch shape {bh}x{bw}")
        for h, w in self.original_sizes:
            if h <= 0 or w <= 0:
                raise ValueError(f"original image size must be positive, got {h}x{w}")

    def select(self, indices: list[int]) -> BatchMeta:
        return BatchMeta(
            [self.original_sizes[i] for i in indices],
            [self.image_sizes[i] for i in indices],
            self.batch_shape,
        )


def bottleneck_shape(channels: int, batch_shape: Size) -> tuple[int, int, int]:
    """C x (H/4+4) x (W/4+4) for a padded batch of H x W pixels."""
    h, w = batch_shape
    return channels, (h + 3) // 4 + 4, (w + 3) // 4 + 4


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Size:
    """The size the transform resizes an image to (eval mode): the shorter side to ``min_size`` unless the longer
    would pass ``max_size``; torchvision's ``_resize_image_and_masks`` + ``interpolate(recompute_scale_factor=True)``,
    in the same Python floats (double precision), so the floors agree."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(float(height) * scale), math.floor(float(width) * scale)


def padded_size(size: Size, size_divisible: int) -> Size:
    """The batch shape of one image: each side rounded up to a multiple of ``size_divisible`` (``batch_images``)."""
    return tuple(-(-side // size_divisible) * size_divisible for side in size)  # type: ignore[return-value]
