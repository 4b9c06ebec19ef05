"""Annotated pictures of detections or ground truth, drawn with torchvision's ``draw_*`` utilities.

Labels sit on a filled box in a scalable font (DejaVu Sans from matplotlib's data, Pillow's default font when that
is missing) sized to the picture, so they stay readable from 64-px scenes to 768-px photos, and each is drawn once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip
MASK_ALPHA = 0.45


@dataclass
class Drawable:
    """What to draw on one picture: boxes ``[x1, y1, x2, y2]``, their label texts and the names that pick colors.

    ``masks`` are COCO RLE dicts (``counts`` as str or bytes) or ``[N, H, W]`` binary arrays; ``keypoints`` are
    ``[N, K, 3]`` (x, y, visibility).
    """

    boxes: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    color_keys: list[str] = field(default_factory=list)
    masks: list[dict] | np.ndarray | None = None
    keypoints: np.ndarray | None = None


def color_for(key: str) -> tuple[int, int, int]:
    """A stable palette color per class name."""
    return PALETTE[sum(key.encode()) % len(PALETTE)]


@cache
def _font_file() -> str | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def font_size(height: int, width: int) -> int:
    """Label size in pixels: about 1/40 of the shorter side, at least 9."""
    return max(9, min(height, width) // 40)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path = _font_file()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def draw(
    image: np.ndarray, items: Drawable, skeleton: list[tuple[int, int]] = (), status: str | None = None
) -> np.ndarray:
    """An RGB uint8 copy of ``image`` (``H x W x 3``) with masks, boxes, labels, keypoints and a status line."""
    h, w = image.shape[:2]
    canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    colors = [color_for(k) for k in items.color_keys]
    if items.masks is not None and len(items.masks):
        binary = items.masks if isinstance(items.masks, np.ndarray) else np.stack([_decode(m) for m in items.masks])
        masks = torch.from_numpy(binary).bool()
        canvas = draw_segmentation_masks(canvas, masks, alpha=MASK_ALPHA, colors=colors)
    if items.boxes:
        size = font_size(h, w)
        boxes = torch.tensor(items.boxes, dtype=torch.float32).reshape(-1, 4)
        canvas = draw_bounding_boxes(
            canvas, boxes, labels=items.texts, colors=colors, width=max(1, size // 6), font=_font_file(),
            font_size=size if _font_file() else None, label_colors="black", fill_labels=True,
        )  # fmt: skip
    if items.keypoints is not None and len(items.keypoints):
        kps = torch.as_tensor(np.asarray(items.keypoints, dtype=np.float32))
        for i in range(len(kps)):  # one call per instance: draw_keypoints takes a single color
            canvas = draw_keypoints(
                canvas, kps[i : i + 1, :, :2], connectivity=list(skeleton) or None, colors=colors[i],
                radius=max(2, font_size(h, w) // 4), width=max(1, font_size(h, w) // 6),
                visibility=kps[i : i + 1, :, 2] > 0,
            )  # fmt: skip
    out = canvas.permute(1, 2, 0).numpy().copy()
    if status:
        out = _status_line(out, status)
    return out


def _decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode(
        {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    )


def _status_line(image: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a black band at the top-left corner."""
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    font = _font(font_size(*image.shape[:2]))
    *_, right, bottom = pen.textbbox((2, 2), text, font=font)
    pen.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
    pen.text((2, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture).copy()
