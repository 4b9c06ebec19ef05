"""Drawing COCO annotations over images (debugging, montages)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from splitdet.common.drawing import Drawable, draw
from splitdet.synthetic.categories import CATEGORIES, SKELETON
from splitdet.synthetic.config import SceneConfig
from splitdet.synthetic.scene import iter_scenes


def draw_annotations(image: Image.Image | np.ndarray, annotations: list[dict], scale: int = 1) -> Image.Image:
    """Overlay masks, boxes, class names and skeletons of COCO annotations (for debugging/montages)."""
    img = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if scale != 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    labels = [names.get(a["category_id"], str(a["category_id"])) for a in annotations]
    masks = None
    if annotations and all("segmentation" in a for a in annotations):
        masks = np.stack([mask_utils.decode(a["segmentation"]) for a in annotations])
        masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
    keypoints = None
    with_kps = [np.asarray(a["keypoints"], np.float32).reshape(-1, 3) for a in annotations if "keypoints" in a]
    if with_kps:  # annotations without keypoints get invisible ones
        empty = np.zeros_like(with_kps[0])
        keypoints = np.stack([np.asarray(a.get("keypoints", empty), np.float32).reshape(-1, 3) for a in annotations])
        keypoints[..., :2] *= scale
    items = Drawable(
        boxes=[
            [x * scale, y * scale, (x + w) * scale, (y + h) * scale] for x, y, w, h in (a["bbox"] for a in annotations)
        ],
        texts=labels,
        color_keys=labels,
        masks=masks,
        keypoints=keypoints,
    )
    return Image.fromarray(draw(img, items, [(a - 1, b - 1) for a, b in SKELETON]))


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
