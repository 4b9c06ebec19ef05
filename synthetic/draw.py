"""Drawing COCO annotations over images (debugging, montages)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from synthetic.categories import CATEGORIES, SKELETON
from synthetic.config import SceneConfig
from synthetic.scene import iter_scenes

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
]


def draw_annotations(image: Image.Image | np.ndarray, annotations: list[dict], scale: int = 1) -> Image.Image:
    """Overlay masks, boxes, class names and skeletons of COCO annotations (for debugging/montages)."""
    img = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    if scale != 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    out = img.astype(np.float32)
    for a in annotations:
        col = np.array(_PALETTE[a["category_id"] % len(_PALETTE)], np.float32)
        if "segmentation" in a:
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            if scale != 1:
                m = cv2.resize(m.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) > 0
            out[m] = out[m] * 0.55 + col * 0.45
    out = np.clip(out, 0, 255).astype(np.uint8)
    for a in annotations:
        col = _PALETTE[a["category_id"] % len(_PALETTE)]
        x, y, bw, bh = (v * scale for v in a["bbox"])
        cv2.rectangle(out, (round(x), round(y)), (round(x + bw) - 1, round(y + bh) - 1), col, 1)
        cv2.putText(
            out,
            names.get(a["category_id"], str(a["category_id"])),
            (round(x), max(8, round(y) - 2)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3 * scale,
            col,
            1,
            cv2.LINE_AA,
        )
        if "keypoints" in a:
            k = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
            for i, j in SKELETON:
                if k[i - 1, 2] > 0 and k[j - 1, 2] > 0:
                    cv2.line(
                        out,
                        tuple(int(v) for v in k[i - 1, :2] * scale),
                        tuple(int(v) for v in k[j - 1, :2] * scale),
                        (255, 255, 255),
                        1,
                        cv2.LINE_AA,
                    )
            for x_, y_, v in k:
                if v > 0:
                    c = (0, 255, 0) if v == 2 else (255, 0, 0)
                    cv2.circle(out, (int(x_ * scale), int(y_ * scale)), max(1, scale), c, -1)
    return Image.fromarray(out)


def montage(
    path: str | Path, n: int, seed: int, config: SceneConfig, cols: int = 4, scale: int = 2, annotate: bool = True
) -> Path:
    tiles = []
    for _, img, anns in iter_scenes(n, seed, config):
        raw = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        tiles.append(np.array(raw))
        if annotate:
            tiles.append(np.array(draw_annotations(img, anns, scale=scale)))
    tiles_per_row = cols * (2 if annotate else 1)
    th, tw = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / tiles_per_row)
    canvas = np.full((rows * (th + 4), tiles_per_row * (tw + 4), 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, tiles_per_row)
        canvas[r * (th + 4) : r * (th + 4) + th, c * (tw + 4) : c * (tw + 4) + tw] = tile
    Image.fromarray(canvas).save(path)
    return Path(path)
