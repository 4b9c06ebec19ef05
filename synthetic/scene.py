"""Still scenes: distractors, objects and camera effects on a background; :func:`render_scene`, :func:`iter_scenes`."""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image

from splitdet.synthetic.background import render_background
from splitdet.synthetic.categories import DISTRACTOR_KINDS, PERSON_CATEGORY_ID, SHAPE_CATEGORY_ID, SHAPE_NAMES
from splitdet.synthetic.config import SceneConfig, check_seed, image_seed
from splitdet.synthetic.objects import Layer, Spec, composite, local_mean, make_spec, paint, rasterize


def distractor_layer(rng: np.random.Generator, img: np.ndarray, cfg: SceneConfig, max_frac: float) -> Layer:
    h, w = img.shape[:2]
    s = min(h, w)
    kind = str(rng.choice(DISTRACTOR_KINDS))
    size = s * math.exp(rng.uniform(math.log(0.08), math.log(max_frac)))
    cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
    bg = local_mean(img, cx, cy, size / 2)
    spec = make_spec(rng, kind, None, cx, cy, size, bg, cfg, shadow_prob=cfg.shadow_prob * 0.5)
    return rasterize(spec, rng)


def sample_camera(rng: np.random.Generator, cfg: SceneConfig) -> tuple[float, float, float, float]:
    """Camera parameters: contrast, brightness offset, blur sigma (0 = none), sensor noise std."""
    contrast, offset = rng.uniform(0.8, 1.15), rng.uniform(-15, 15)
    sigma = rng.uniform(0.4, 1.0) if rng.random() < cfg.blur_prob else 0.0
    return contrast, offset, sigma, rng.uniform(0.5, max(0.5, cfg.max_noise_std))


def apply_camera(rng: np.random.Generator, img: np.ndarray, camera: tuple[float, float, float, float]) -> np.ndarray:
    """Camera effects: contrast/brightness, slight blur, sensor noise (drawn from ``rng``); returns uint8."""
    contrast, offset, sigma, std = camera
    img = img * np.float32(contrast) + np.float32(128.0 * (1.0 - contrast) + offset)
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # Triangular noise from two uniform bytes: Gaussian-like sensor noise at a fraction of the cost.
    u = np.frombuffer(rng.bytes(2 * img.size), dtype=np.uint8).reshape(2, *img.shape).astype(np.float32)
    img += (u[0] + u[1] - np.float32(255.0)) * np.float32(std / 104.5)
    img += np.float32(0.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_object(rng: np.random.Generator, img: np.ndarray, cfg: SceneConfig, track_bounds: bool = False) -> Spec:
    h, w = img.shape[:2]
    s = min(h, w)
    is_person = rng.random() < cfg.person_ratio
    kind = "person" if is_person else str(rng.choice(SHAPE_NAMES))
    cat = PERSON_CATEGORY_ID if is_person else SHAPE_CATEGORY_ID[kind]
    size = s * math.exp(rng.uniform(math.log(cfg.min_size_frac), math.log(cfg.max_size_frac)))
    if is_person:
        size *= cfg.person_scale
    lo, hi = (0.2, 0.8) if track_bounds else (0.08, 0.92)
    cx, cy = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
    bg = local_mean(img, cx, cy, size / 2)
    return make_spec(rng, kind, cat, cx, cy, size, bg, cfg, shadow_prob=cfg.shadow_prob)


# --------------------------------------------------------------------------------------------------
# Public API: still images and datasets
# --------------------------------------------------------------------------------------------------


def render_scene(seed: int, config: SceneConfig = SceneConfig()) -> tuple[Image.Image, list[dict]]:
    """Render one scene deterministically from ``seed``.

    Returns the RGB image and COCO annotation dicts without ``id``/``image_id``: ``category_id``,
    ``bbox`` ([x, y, w, h] of the visible mask), ``area`` (visible pixels), ``iscrowd`` (0),
    ``segmentation`` (RLE with str counts) and, for persons, ``keypoints`` ([x, y, v] * K with v=2
    visible, 1 occluded, 0 outside the image) and ``num_keypoints``.
    """
    rng = np.random.Generator(np.random.PCG64(check_seed(seed)))
    cfg = config
    h, w = cfg.height, cfg.width
    img = render_background(rng, h, w)
    empty = rng.random() < cfg.empty_ratio
    n_obj = 0 if empty else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_dis = int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1)) + (2 if empty else 0)
    for _ in range(n_dis):
        paint(img, distractor_layer(rng, img, cfg, max_frac=max(0.1, cfg.max_size_frac)))
    objects = [rasterize(sample_object(rng, img, cfg), rng) for _ in range(n_obj)]
    front = []
    if rng.random() < cfg.front_distractor_prob:
        front.append(distractor_layer(rng, img, cfg, max_frac=0.25))
    anns = composite(img, objects, front, cfg)
    return Image.fromarray(apply_camera(rng, img, sample_camera(rng, cfg)), "RGB"), anns


def iter_scenes(
    num_images: int, seed: int, config: SceneConfig = SceneConfig()
) -> Iterator[tuple[int, Image.Image, list[dict]]]:
    """Yield ``(index, image, annotations)`` of image ``index`` = 0..num_images-1 of a dataset."""
    check_seed(seed)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    for i in range(num_images):
        img, anns = render_scene(image_seed(seed, i), config)
        yield i, img, anns
