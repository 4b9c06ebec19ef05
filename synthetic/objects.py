"""Placed shapes (objects and distractors): sampling their look, rasterising them, compositing with
occlusion, and their COCO annotations (visible masks, boxes, keypoints).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from splitdet.common.masks import encode_rle
from splitdet.synthetic.config import SceneConfig
from splitdet.synthetic.geometry import Op, person_geometry, sample_pose, shape_ops
from splitdet.synthetic.raster import (
    FIXED_ONE,
    FIXED_SHIFT,
    fixed_point,
    gray_to_rgb,
    ramp,
    random_color,
    stripes,
    upsampled_grid,
)


@dataclass
class Spec:
    """A placed shape (object or distractor): geometry in unit coords + appearance."""

    kind: str
    category_id: int | None
    cx: float
    cy: float
    scale: float  # pixels per unit
    angle: float  # degrees
    aspect: float  # x stretch (y = 1/aspect)
    ops: list[Op]
    keypoints: np.ndarray | None  # (K, 2) unit coords
    palette: np.ndarray  # (4, 3) float32, row 0 unused
    shade_angle: float
    shade_amp: float
    noise_amp: float
    noise_cells: float
    grain: float
    stripe: tuple[float, float, float, float] | None  # angle, period(px), amplitude, hardness
    shadow: tuple[float, float, float] | None  # dx, dy (px), darkening factor
    tex_seed: int
    pose: dict | None = None


@dataclass
class Layer:
    x0: int
    y0: int
    mask: np.ndarray  # bool (h, w), full shape (also outside the image)
    rgb: np.ndarray  # float32 (h, w, 3)
    spec: Spec
    keypoints: np.ndarray | None  # (K, 2) in drawing coords (pixel centres at integers)


def local_mean(img: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    h, w = img.shape[:2]
    x0, x1 = int(max(0, cx - r)), int(min(w, cx + r + 1))
    y0, y1 = int(max(0, cy - r)), int(min(h, cy + r + 1))
    if x1 <= x0 or y1 <= y0:
        return img.reshape(-1, 3).mean(0)
    return img[y0:y1:2, x0:x1:2].reshape(-1, 3).mean(0)


def _object_color(rng: np.random.Generator, bg: np.ndarray, low_contrast_prob: float) -> np.ndarray:
    if rng.random() < low_contrast_prob:  # close to the local background: needs shape, not colour
        d = rng.normal(size=3)
        d = d / (np.linalg.norm(d) + 1e-6) * rng.uniform(35.0, 75.0)
        c = bg + d.astype(np.float32)
        if np.any(c < 0) or np.any(c > 255):  # push away from the violated bound instead
            c = bg - d.astype(np.float32)
        return np.clip(c, 0, 255).astype(np.float32)
    return random_color(rng, sat=(0.0, 1.0), val=(0.08, 1.0))


def make_spec(
    rng: np.random.Generator,
    kind: str,
    category_id: int | None,
    cx: float,
    cy: float,
    size: float,
    bg: np.ndarray,
    cfg: SceneConfig,
    shadow_prob: float,
) -> Spec:
    """Sample geometry and appearance of one shape of extent ``size`` pixels centred at (cx, cy)."""
    pose = None
    kps = None
    if kind == "person":
        pose = sample_pose(rng, cfg.person_facing_away)
        ops, kps = person_geometry(pose)
        scale = size
        angle = rng.normal(0, 15) if rng.random() > 0.1 else rng.uniform(-180, 180)
        aspect = 1.0
        palette = np.zeros((4, 3), np.float32)
        skin = (
            np.array(
                colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.65), rng.uniform(0.25, 0.95)),
                np.float32,
            )
            * 255
        )
        palette[1] = skin if rng.random() < 0.7 else _object_color(rng, bg, cfg.low_contrast_prob)
        palette[2] = _object_color(rng, bg, cfg.low_contrast_prob)
        palette[3] = _object_color(rng, bg, cfg.low_contrast_prob) if rng.random() < 0.8 else palette[2]
    else:
        ops = shape_ops(kind, rng)
        scale = size / 2.0
        angle = rng.uniform(0, 360)
        roundish = kind in ("disc", "ring")
        aspect = math.exp(rng.uniform(-1, 1) * (math.log(1.1) if roundish else math.log(1.35)))
        palette = np.zeros((4, 3), np.float32)
        palette[1] = _object_color(rng, bg, cfg.low_contrast_prob)
    stripe = None
    if rng.random() < 0.25:
        stripe = (
            rng.uniform(0, math.pi),
            rng.uniform(3.0, max(4.0, size / 3)),
            rng.uniform(10, 45),
            rng.uniform(0.5, 4.0),
        )
    shadow = None
    if rng.random() < shadow_prob:
        d = size * rng.uniform(0.04, 0.12)
        a = rng.uniform(0, 2 * math.pi)
        shadow = (d * math.cos(a), d * math.sin(a), rng.uniform(0.5, 0.8))
    return Spec(
        kind=kind,
        category_id=category_id,
        cx=cx,
        cy=cy,
        scale=scale,
        angle=angle,
        aspect=aspect,
        ops=ops,
        keypoints=kps,
        palette=palette,
        shade_angle=rng.uniform(0, 2 * math.pi),
        shade_amp=rng.uniform(0.0, 0.4),
        noise_amp=rng.uniform(8, 45),
        noise_cells=rng.uniform(2, 6),
        grain=rng.uniform(0, 14),
        stripe=stripe,
        shadow=shadow,
        tex_seed=int(rng.integers(0, 2**63 - 1)),
        pose=pose,
    )


def _transform(spec: Spec, pts: np.ndarray) -> np.ndarray:
    a = math.radians(spec.angle)
    c, s = math.cos(a), math.sin(a)
    x = pts[..., 0] * spec.aspect * spec.scale
    y = pts[..., 1] / spec.aspect * spec.scale
    return np.stack([c * x - s * y + spec.cx, s * x + c * y + spec.cy], axis=-1)


def rasterize(spec: Spec, tex_rng: np.random.Generator) -> Layer:
    """Draw ``spec`` into a local patch: full mask + textured colour."""
    placed = []
    lo = np.array([np.inf, np.inf])
    hi = -lo
    for op in spec.ops:
        if op[0] == "circle":
            c = _transform(spec, np.asarray(op[1])[None])[0]
            r = max(0.8, op[2] * spec.scale)
            placed.append(("circle", c, r, op[3]))
            lo, hi = np.minimum(lo, c - r), np.maximum(hi, c + r)
        elif op[0] == "line":
            p = _transform(spec, np.asarray(op[1]))
            t = max(1, round(op[2] * spec.scale))
            placed.append(("line", p, t, op[3]))
            lo, hi = np.minimum(lo, p.min(0) - t), np.maximum(hi, p.max(0) + t)
        else:
            p = _transform(spec, np.asarray(op[1]))
            placed.append(("poly", p, op[2]))
            lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0))
    x0, y0 = math.floor(lo[0]) - 2, math.floor(lo[1]) - 2
    w = math.ceil(hi[0]) + 3 - x0
    h = math.ceil(hi[1]) + 3 - y0
    off = np.array([x0, y0], dtype=np.float64)
    label = np.zeros((h, w), np.uint8)
    for op in placed:
        if op[0] == "poly":
            cv2.fillPoly(label, [fixed_point(op[1] - off)], int(op[2]), cv2.LINE_8, FIXED_SHIFT)
        elif op[0] == "line":
            cv2.polylines(label, [fixed_point(op[1] - off)], False, int(op[3]), int(op[2]), cv2.LINE_8, FIXED_SHIFT)
        else:
            c = fixed_point(op[1] - off)
            cv2.circle(label, (int(c[0]), int(c[1])), round(op[2] * FIXED_ONE), int(op[3]), -1, cv2.LINE_8, FIXED_SHIFT)
    mask = label > 0
    rgb = spec.palette[label]
    g = int(spec.noise_cells) + 2
    amp = np.float32(spec.noise_amp)
    lum = upsampled_grid(tex_rng, g, g, 1, h, w) * amp - np.float32(0.675) * amp
    if spec.grain > 0:
        lum += (tex_rng.random((h, w), dtype=np.float32) - np.float32(0.5)) * np.float32(spec.grain)
    if spec.stripe is not None:
        ang, period, s_amp, hard = spec.stripe
        lum += stripes(h, w, ang + math.radians(spec.angle), period, 0.0, hard) * np.float32(s_amp)
    rgb *= gray_to_rgb(1.0 + spec.shade_amp * ramp(h, w, spec.shade_angle))
    rgb += upsampled_grid(tex_rng, g, g, 3, h, w) * (np.float32(0.35) * amp)
    rgb += gray_to_rgb(lum)
    kps = _transform(spec, spec.keypoints) if spec.keypoints is not None else None
    return Layer(x0=x0, y0=y0, mask=mask, rgb=rgb, spec=spec, keypoints=kps)


def _clip(layer: Layer, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    ph, pw = layer.mask.shape
    gx0, gy0 = max(layer.x0, 0), max(layer.y0, 0)
    gx1, gy1 = min(layer.x0 + pw, w), min(layer.y0 + ph, h)
    if gx1 <= gx0 or gy1 <= gy0:
        return None
    return (
        (slice(gy0, gy1), slice(gx0, gx1)),
        (slice(gy0 - layer.y0, gy1 - layer.y0), slice(gx0 - layer.x0, gx1 - layer.x0)),
    )


def paint(img: np.ndarray, layer: Layer) -> None:
    h, w = img.shape[:2]
    sp = layer.spec
    if sp.shadow is not None:
        dx, dy, dark = sp.shadow
        shadow = Layer(
            x0=layer.x0 + round(dx), y0=layer.y0 + round(dy), mask=layer.mask, rgb=layer.rgb, spec=sp, keypoints=None
        )
        cl = _clip(shadow, h, w)
        if cl is not None:
            g, l_ = cl
            alpha = cv2.blur(layer.mask.astype(np.float32), (5, 5))[l_]
            img[g] *= gray_to_rgb(1.0 - (1.0 - dark) * alpha)
    cl = _clip(layer, h, w)
    if cl is not None:
        g, l_ = cl
        m = layer.mask[l_]
        img[g][m] = layer.rgb[l_][m]


def visible_annotations(
    layers: list[Layer], front: list[Layer], h: int, w: int, cfg: SceneConfig
) -> list[tuple[Layer, np.ndarray]]:
    """Occlusion-aware visible masks (full-image bool) of the objects that stay annotated."""
    owner = np.full((h, w), -1, np.int16)
    for i, layer in enumerate(layers):
        cl = _clip(layer, h, w)
        if cl is not None:
            owner[cl[0]][layer.mask[cl[1]]] = i
    for layer in front:
        cl = _clip(layer, h, w)
        if cl is not None:
            owner[cl[0]][layer.mask[cl[1]]] = -1
    kept = []
    for i, layer in enumerate(layers):
        cl = _clip(layer, h, w)
        if cl is None:
            continue
        vis = owner == i
        area = int(vis.sum())
        full = int(layer.mask.sum())
        if area >= cfg.min_visible_area and area >= cfg.min_visible_frac * full:
            kept.append((layer, vis))
        elif i == len(layers) - 1 and not kept and area > 0 and not front:
            kept.append((layer, vis))  # guarantee: the top object of a non-empty scene is annotated
    return kept


def annotation(layer: Layer, vis: np.ndarray) -> dict:
    (rle,) = encode_rle(vis)
    ann = {
        "category_id": int(layer.spec.category_id),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 0,
        "segmentation": rle,
    }
    if layer.keypoints is not None:
        h, w = vis.shape
        flat: list[float] = []
        n_labeled = 0
        for x, y in layer.keypoints + 0.5:  # COCO convention: pixel i spans [i, i + 1)
            if 0.0 <= x < w and 0.0 <= y < h:
                v = 2 if vis[int(y), int(x)] else 1
                flat += [round(float(x), 2), round(float(y), 2), v]
                n_labeled += 1
            else:
                flat += [0.0, 0.0, 0]
        ann["keypoints"] = flat
        ann["num_keypoints"] = n_labeled
    return ann


def composite(img: np.ndarray, objects: list[Layer], front: list[Layer], cfg: SceneConfig) -> list[dict]:
    """Paint objects (and front distractors) onto ``img`` in place and return their annotations."""
    h, w = img.shape[:2]
    kept = visible_annotations(objects, front, h, w, cfg)
    if objects and not kept and front:  # never let a front distractor empty a non-empty scene
        front = []
        kept = visible_annotations(objects, front, h, w, cfg)
    for layer in objects:
        paint(img, layer)
    for layer in front:
        paint(img, layer)
    return [annotation(layer, vis) for layer, vis in kept]
