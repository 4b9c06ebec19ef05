"""Instance masks as COCO run-length encoding (RLE): one encoder for the wire, the results and the ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:  # the synthetic data generator uses this module without torch
    from torch import Tensor

MASK_THRESHOLD = 0.5  #: a Mask R-CNN pixel belongs to the instance when its probability is at least this


def binary_masks(masks: Tensor, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Mask R-CNN's ``[N, 1, H, W]`` probabilities -> ``[N, H, W]`` uint8 masks."""
    return (masks.detach().cpu()[:, 0] >= threshold).numpy().astype(np.uint8)


def encode_rle(binary: np.ndarray) -> list[dict]:
    """``[N, H, W]`` (or one ``[H, W]``) binary masks -> COCO RLE dicts with ``size`` and ``counts`` (ASCII str)."""
    single = binary.ndim == 2
    stack = binary[None] if single else binary
    if len(stack) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(stack.astype(np.uint8).transpose(1, 2, 0)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]
