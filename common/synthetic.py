"""Deterministic synthetic COCO-format scenes for detection, segmentation and keypoints.

COCO and pretrained weights cannot be downloaded in every environment, so the project measures
itself on generated scenes: five shape classes plus a stick-figure ``person`` keypoint class on
cluttered, natural-looking backgrounds (multi-scale coloured value noise, lighting gradients,
striped/blobby texture regions) with *distractor* shapes that are not object classes (irregular
polygons, ellipses, bars, arcs, crescents, L/T shapes, polygons, scribbles). Objects have varied
size, colour (often close to the local background), rotation, texture and shading, cast soft
shadows and occlude each other; annotation masks are the *visible* masks.

Everything is a pure function of an integer seed (``numpy.random.Generator(PCG64(seed))``), so any
image of a dataset can be regenerated on its own: image ``i`` of a dataset seeded ``s`` uses
:func:`image_seed` ``(s, i)``.

CLI: ``python -m common.synthetic write OUT_DIR -n 500 --seed 0 --split val`` writes a COCO-2017
style tree; ``python -m common.synthetic montage OUT.png`` draws a montage with annotations.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "CATEGORIES",
    "KEYPOINT_FLIP_INDEX",
    "KEYPOINT_NAMES",
    "PERSON_CATEGORY_ID",
    "SHAPE_NAMES",
    "SKELETON",
    "SceneConfig",
    "SyntheticVideo",
    "build_coco_annotations",
    "build_coco_dict",
    "draw_annotations",
    "image_seed",
    "iter_scenes",
    "render_scene",
    "write_coco_dataset",
]

# --------------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------------

#: Object shape classes (category ids 2..6, in this order).
SHAPE_NAMES: tuple[str, ...] = ("disc", "triangle", "star", "ring", "cross")

#: COCO-style keypoint names of the ``person`` stick figure ("left" = the person's left side).
KEYPOINT_NAMES: list[str] = [
    "head",
    "neck",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]

#: Skeleton as 1-based keypoint index pairs, like COCO's ``person_keypoints`` file.
SKELETON: list[list[int]] = [
    [1, 2],
    [2, 3],
    [2, 4],
    [3, 5],
    [5, 7],
    [4, 6],
    [6, 8],
    [3, 9],
    [4, 10],
    [9, 10],
    [9, 11],
    [11, 13],
    [10, 12],
    [12, 14],
]

#: 0-based index of the mirrored keypoint (for horizontal-flip augmentation).
KEYPOINT_FLIP_INDEX: list[int] = [0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12]

#: Category id of the keypoint class (1, as in COCO).
PERSON_CATEGORY_ID: int = 1

#: COCO ``categories`` list: person (with ``keypoints``/``skeleton``) then the shape classes.
CATEGORIES: list[dict] = [
    {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(p) for p in SKELETON],
    },
    *({"id": i + 2, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_NAMES)),
]

_SHAPE_CAT_ID = {name: i + 2 for i, name in enumerate(SHAPE_NAMES)}
_DISTRACTOR_KINDS = ("polygon", "blob", "ellipse", "bar", "ngon", "arc", "crescent", "lshape", "scribble")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of a synthetic scene; sizes are fractions of ``min(height, width)``."""

    height: int = 160
    width: int = 160
    min_objects: int = 1
    max_objects: int = 4
    empty_ratio: float = 0.2  #: share of images without any object of interest
    min_size_frac: float = 0.15  #: smallest object extent (person: height is x1.25)
    max_size_frac: float = 0.6
    person_ratio: float = 0.3  #: probability that an object is a person
    min_distractors: int = 2  #: distractor shapes behind the objects (more on empty images)
    max_distractors: int = 5
    front_distractor_prob: float = 0.35  #: probability of one small distractor in front of objects
    min_visible_frac: float = 0.2  #: drop objects whose visible share of their area is smaller
    min_visible_area: int = 12  #: ... or whose visible area (pixels) is smaller
    low_contrast_prob: float = 0.4  #: probability that an object's colour is close to its background
    shadow_prob: float = 0.3  #: probability that an object casts a soft shadow
    blur_prob: float = 0.6  #: probability of a slight global Gaussian blur (camera optics)
    max_noise_std: float = 6.0  #: sensor noise std (uint8 units) is drawn from [0.5, max]

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"SceneConfig: height and width must be >= 16, got {self.height}x{self.width}")
        if self.min_objects < 0 or self.min_objects > self.max_objects:
            raise ValueError(
                f"SceneConfig: need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.min_distractors < 0 or self.min_distractors > self.max_distractors:
            raise ValueError(
                "SceneConfig: need 0 <= min_distractors <= max_distractors, "
                f"got {self.min_distractors}, {self.max_distractors}"
            )
        if not 0.0 < self.min_size_frac <= self.max_size_frac <= 1.0:
            raise ValueError(
                "SceneConfig: need 0 < min_size_frac <= max_size_frac <= 1, "
                f"got {self.min_size_frac}, {self.max_size_frac}"
            )
        for name in (
            "empty_ratio",
            "person_ratio",
            "front_distractor_prob",
            "low_contrast_prob",
            "shadow_prob",
            "blur_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SceneConfig: {name} must be in [0, 1], got {value}")
        if not 0.0 < self.min_visible_frac <= 1.0:
            raise ValueError(f"SceneConfig: min_visible_frac must be in (0, 1], got {self.min_visible_frac}")
        if self.min_visible_area < 1:
            raise ValueError(f"SceneConfig: min_visible_area must be >= 1, got {self.min_visible_area}")
        if self.max_noise_std < 0:
            raise ValueError(f"SceneConfig: max_noise_std must be >= 0, got {self.max_noise_std}")


def _check_seed(seed: int, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{what} must be a non-negative int, got {seed!r}")
    return int(seed)


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset seeded ``seed`` (a hash of both; 64-bit)."""
    _check_seed(seed)
    _check_seed(index, "index")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


# --------------------------------------------------------------------------------------------------
# Low-level raster helpers
# --------------------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fx(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> int32 fixed point for cv2 drawing with ``shift=_SHIFT``."""
    return np.round(np.asarray(pts, dtype=np.float64) * _ONE).astype(np.int32)


def _random_color(
    rng: np.random.Generator, sat: tuple[float, float] = (0.05, 0.85), val: tuple[float, float] = (0.15, 0.95)
) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], dtype=np.float32) * 255.0


# Speed notes (2-core CPU budget of a few ms per 160x160 image): numpy broadcasting of (h, w, 1) or
# (3,) operands against (h, w, 3) runs an inner loop of length 3 and is ~10x slower than same-shape
# arithmetic, so single-channel maps are expanded with ``_rgb`` and colour vectors are applied with
# OpenCV scalar arithmetic (``_sc``).


def _rgb(m: np.ndarray) -> np.ndarray:
    """(h, w) float32 map -> (h, w, 3) with the map in every channel."""
    return cv2.cvtColor(np.ascontiguousarray(m, dtype=np.float32), cv2.COLOR_GRAY2RGB)


def _sc(c: np.ndarray) -> tuple[float, float, float, float]:
    """Colour vector -> OpenCV scalar."""
    return (float(c[0]), float(c[1]), float(c[2]), 0.0)


def _upsample(rng: np.random.Generator, gy: int, gx: int, channels: int, h: int, w: int) -> np.ndarray:
    """Random (gy, gx, channels) grid bicubically upsampled to float32 in ~[0, 1]; (h, w) if one channel.

    The grid is uint8 on purpose: OpenCV's bicubic resize is SIMD-fast for uint8 and several times
    slower for float (and BLAS-based separable products hit thread start-up costs on small CPUs).
    """
    grid = rng.integers(0, 256, size=(gy, gx, channels), dtype=np.uint8)
    up = cv2.resize(grid if channels > 1 else grid[..., 0], (w, h), interpolation=cv2.INTER_CUBIC)
    return up.astype(np.float32) * np.float32(1.0 / 255.0)


def _noise(
    rng: np.random.Generator, h: int, w: int, channels: int, cells: float, octaves: int = 1, persistence: float = 0.5
) -> np.ndarray:
    """Multi-octave value noise in ~[0, 1], shape (h, w, channels) or (h, w) for one channel;
    ``cells`` = grid cells on the long side of the coarsest octave.

    The octaves are summed on the finest octave's small grid (coarser grids bicubically upsampled to
    it), so only one full-size resize is needed.
    """
    long_side = max(h, w)

    def grid_shape(c: float) -> tuple[int, int]:
        return max(2, math.ceil(c * h / long_side) + 1), max(2, math.ceil(c * w / long_side) + 1)

    gy, gx = grid_shape(cells * 2 ** (octaves - 1))
    acc = np.zeros((gy, gx, channels), dtype=np.float32)
    total = 0.0
    amp = 1.0
    for _ in range(octaves):
        oy, ox = grid_shape(cells)
        grid = rng.random((oy, ox, channels), dtype=np.float32)
        if (oy, ox) != (gy, gx):
            grid = cv2.resize(grid, (gx, gy), interpolation=cv2.INTER_CUBIC).reshape(gy, gx, channels)
        acc += np.float32(amp) * grid
        total += amp
        amp *= persistence
        cells *= 2.0
    q = np.clip(acc * np.float32(255.0 / total) + np.float32(0.5), 0, 255).astype(np.uint8)
    up = cv2.resize(q if channels > 1 else q[..., 0], (w, h), interpolation=cv2.INTER_CUBIC)
    return up.astype(np.float32) * np.float32(1.0 / 255.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ramp(h: int, w: int, angle: float) -> np.ndarray:
    """Linear ramp in [-1, 1] along direction ``angle`` (radians), shape (h, w)."""
    gx = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    gy = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    return gx[None, :] * np.float32(math.cos(angle)) + gy[:, None] * np.float32(math.sin(angle))


def _stripes(h: int, w: int, angle: float, period: float, phase: float, hardness: float) -> np.ndarray:
    """Stripe pattern in [-1, 1] with ``period`` pixels; ``hardness`` > 1 makes it square-ish."""
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    t = xs[None, :] * np.float32(math.cos(angle)) + ys[:, None] * np.float32(math.sin(angle))
    s = np.sin(t * np.float32(2 * math.pi / period) + np.float32(phase))
    return np.tanh(hardness * s) / np.float32(math.tanh(hardness))


# --------------------------------------------------------------------------------------------------
# Shape geometry (unit coordinates: the shape spans roughly [-1, 1]^2)
# --------------------------------------------------------------------------------------------------

# Drawing ops: ("poly", pts(N,2), part) | ("line", pts(N,2), thickness_units, part) |
#              ("circle", center(2,), radius_units, part); part 0 erases (holes).
_Op = tuple


def _circle_pts(
    n: int = 48,
    r: float = 1.0,
    a0: float = 0.0,
    a1: float = 2 * math.pi,
    center: tuple[float, float] = (0.0, 0.0),
    endpoint: bool = False,
) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=endpoint)
    return np.stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)], axis=1)


def _shape_ops(kind: str, rng: np.random.Generator) -> list[_Op]:
    """Unit-coordinate drawing ops of an object class or a distractor kind."""
    if kind == "disc":
        return [("poly", _circle_pts(), 1)]
    if kind == "ring":
        inner = rng.uniform(0.45, 0.72)
        off = rng.uniform(-0.06, 0.06, size=2)
        return [("poly", _circle_pts(), 1), ("poly", _circle_pts(r=inner, center=(off[0], off[1])), 0)]
    if kind == "triangle":
        ang = np.deg2rad([-90.0, 30.0, 150.0]) + rng.uniform(-0.15, 0.15, size=3)
        r = rng.uniform(0.9, 1.1, size=3)
        pts = np.stack([r * np.cos(ang), r * np.sin(ang) + 0.25], axis=1)
        return [("poly", pts, 1)]
    if kind == "star":
        n = 5
        inner = rng.uniform(0.36, 0.52)
        ang = -math.pi / 2 + np.arange(2 * n) * math.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner) * rng.uniform(0.93, 1.07, size=2 * n)
        return [("poly", np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1), 1)]
    if kind == "cross":
        a = rng.uniform(0.2, 0.33)
        arms = rng.uniform(0.85, 1.0, size=4)  # right, down, left, up
        pts = np.array(
            [
                [a, -a],
                [arms[0], -a],
                [arms[0], a],
                [a, a],
                [a, arms[1]],
                [-a, arms[1]],
                [-a, a],
                [-arms[2], a],
                [-arms[2], -a],
                [-a, -a],
                [-a, -arms[3]],
                [a, -arms[3]],
            ]
        )
        return [("poly", pts, 1)]
    # ---- distractors -------------------------------------------------------------------------
    if kind == "polygon":  # irregular, 5..8 spread-out vertices (never triangle-like), often non-convex
        n = int(rng.integers(5, 9))
        ang = (np.arange(n) + rng.uniform(-0.3, 0.3, size=n)) * (2 * math.pi / n)
        r = rng.uniform(0.5, 1.0, size=n)
        return [("poly", np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1), 1)]
    if kind == "blob":  # smooth closed curve with strong harmonics (never disc-like)
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0.1, 0.22) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r = np.clip(r, 0.25, None) / r.max()
        return [("poly", np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]
    if kind == "ellipse":
        ry = 1.0 / rng.uniform(1.7, 3.2)
        pts = _circle_pts()
        pts[:, 1] *= ry
        return [("poly", pts, 1)]
    if kind == "bar":
        hy = 1.0 / rng.uniform(1.0, 5.0)
        return [("poly", np.array([[-1, -hy], [1, -hy], [1, hy], [-1, hy]], dtype=np.float64), 1)]
    if kind == "ngon":
        n = int(rng.choice([4, 5, 6]))
        return [("poly", _circle_pts(n=n, a0=rng.uniform(0, math.pi)), 1)]
    if kind == "arc":  # partial annulus: gap of at least 100 degrees, so never a ring
        span = rng.uniform(math.radians(110), math.radians(260))
        a0 = rng.uniform(0, 2 * math.pi)
        inner = rng.uniform(0.45, 0.75)
        outer = _circle_pts(n=32, a0=a0, a1=a0 + span, endpoint=True)
        inner_pts = _circle_pts(n=32, r=inner, a0=a0, a1=a0 + span, endpoint=True)[::-1]
        return [("poly", np.concatenate([outer, inner_pts]), 1)]
    if kind == "crescent":
        off = rng.uniform(0.35, 0.7)
        ang = rng.uniform(0, 2 * math.pi)
        return [
            ("poly", _circle_pts(), 1),
            ("poly", _circle_pts(r=rng.uniform(0.8, 1.0), center=(off * math.cos(ang), off * math.sin(ang))), 0),
        ]
    if kind == "lshape":
        a = rng.uniform(0.25, 0.45)
        if rng.random() < 0.5:  # L
            pts = np.array([[-1, -1], [-1 + 2 * a, -1], [-1 + 2 * a, 1 - 2 * a], [1, 1 - 2 * a], [1, 1], [-1, 1]])
        else:  # T
            pts = np.array(
                [
                    [-1, -1],
                    [1, -1],
                    [1, -1 + 2 * a],
                    [a, -1 + 2 * a],
                    [a, 1],
                    [-a, 1],
                    [-a, -1 + 2 * a],
                    [-1, -1 + 2 * a],
                ]
            )
        return [("poly", pts.astype(np.float64), 1)]
    if kind == "scribble":
        n = int(rng.integers(2, 5))
        pts = rng.uniform(-1, 1, size=(n + 1, 2))
        return [("line", pts, rng.uniform(0.06, 0.18), 1)]
    raise ValueError(f"unknown shape kind {kind!r}")


def _sample_pose(rng: np.random.Generator) -> dict:
    """Random plausible stick-figure pose (angles in degrees, 0 = limb pointing down)."""
    return {
        "lean": rng.uniform(-15, 15),
        "arm_u": rng.uniform(-25, 165, size=2),  # upper arm, outward from "down"
        "arm_b": rng.uniform(-10, 140, size=2) * rng.choice([-1.0, 1.0], size=2),  # elbow bend
        "leg_u": rng.uniform(-20, 65, size=2),  # thigh, outward from "down"
        "leg_b": rng.uniform(0, 110, size=2) * rng.choice([-1.0, 1.0]),  # knee bend (same side)
        "mirror": bool(rng.random() < 0.5),  # facing away: left/right swap in the image
        "thick": rng.uniform(0.04, 0.065),  # limb thickness / height
        "head_r": rng.uniform(0.065, 0.085),  # head radius / height
        "shoulder": rng.uniform(0.09, 0.13),
        "hip": rng.uniform(0.05, 0.075),
    }


def _person_geometry(pose: dict) -> tuple[list[_Op], np.ndarray]:
    """Ops and keypoints (K, 2) of a stick figure of height ~1 centred on its bounding box."""

    def rot(v: np.ndarray, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])

    def limb_dir(deg: float, side: float) -> np.ndarray:  # side +1 = person's left (+x)
        return np.array([side * math.sin(math.radians(deg)), math.cos(math.radians(deg))])

    lean = pose["lean"]
    mid_hip = np.array([0.0, 0.02])
    neck = mid_hip + rot(np.array([0.0, -0.34]), lean)
    head = neck + rot(np.array([0.0, -0.1]), lean)
    kp = {"head": head, "neck": neck}
    for i, (side, name) in enumerate(((1.0, "left"), (-1.0, "right"))):
        sh = neck + rot(np.array([side * pose["shoulder"], 0.025]), lean)
        el = sh + 0.16 * rot(limb_dir(pose["arm_u"][i], side), lean)
        wr = el + 0.15 * rot(limb_dir(pose["arm_u"][i] + pose["arm_b"][i], side), lean)
        hp = mid_hip + np.array([side * pose["hip"], 0.0])
        kn = hp + 0.235 * limb_dir(pose["leg_u"][i], side)
        an = kn + 0.225 * limb_dir(pose["leg_u"][i] + side * pose["leg_b"][i], side)  # same image-side bend
        kp.update(
            {
                f"{name}_shoulder": sh,
                f"{name}_elbow": el,
                f"{name}_wrist": wr,
                f"{name}_hip": hp,
                f"{name}_knee": kn,
                f"{name}_ankle": an,
            }
        )
    pts = np.stack([kp[n] for n in KEYPOINT_NAMES]).astype(np.float64)
    if pose["mirror"]:
        pts[:, 0] *= -1.0
    r_head = pose["head_r"]
    lo = np.minimum(pts.min(0), pts[0] - r_head)
    hi = np.maximum(pts.max(0), pts[0] + r_head)
    pts -= (lo + hi) / 2.0
    t = pose["thick"]
    k = {n: pts[i] for i, n in enumerate(KEYPOINT_NAMES)}
    torso = np.stack([k["left_shoulder"], k["right_shoulder"], k["right_hip"], k["left_hip"]])
    ops: list[_Op] = [
        ("line", np.stack([k["left_hip"], k["left_knee"], k["left_ankle"]]), 1.15 * t, 3),
        ("line", np.stack([k["right_hip"], k["right_knee"], k["right_ankle"]]), 1.15 * t, 3),
        ("line", np.stack([k["left_hip"], k["right_hip"]]), 1.15 * t, 3),
        ("poly", torso, 2),
        ("line", np.concatenate([torso, torso[:1]]), t, 2),
        ("line", np.stack([k["head"], k["neck"]]), 0.8 * t, 1),
        ("line", np.stack([k["left_shoulder"], k["left_elbow"], k["left_wrist"]]), t, 2),
        ("line", np.stack([k["right_shoulder"], k["right_elbow"], k["right_wrist"]]), t, 2),
        ("circle", k["left_wrist"], 0.7 * t, 1),
        ("circle", k["right_wrist"], 0.7 * t, 1),
        ("circle", k["head"], r_head, 1),
    ]
    return ops, pts


# --------------------------------------------------------------------------------------------------
# Object specs, rasterisation and compositing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """A placed shape (object or distractor): geometry in unit coords + appearance."""

    kind: str
    category_id: int | None
    cx: float
    cy: float
    scale: float  # pixels per unit
    angle: float  # degrees
    aspect: float  # x stretch (y = 1/aspect)
    ops: list[_Op]
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
    extra: dict = field(default_factory=dict)


@dataclass
class _Layer:
    x0: int
    y0: int
    mask: np.ndarray  # bool (h, w), full shape (also outside the image)
    rgb: np.ndarray  # float32 (h, w, 3)
    spec: _Spec
    keypoints: np.ndarray | None  # (K, 2) in drawing coords (pixel centres at integers)


def _local_mean(img: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
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
    return _random_color(rng, sat=(0.0, 1.0), val=(0.08, 1.0))


def _make_spec(
    rng: np.random.Generator,
    kind: str,
    category_id: int | None,
    cx: float,
    cy: float,
    size: float,
    bg: np.ndarray,
    cfg: SceneConfig,
    shadow_prob: float,
) -> _Spec:
    """Sample geometry and appearance of one shape of extent ``size`` pixels centred at (cx, cy)."""
    pose = None
    kps = None
    if kind == "person":
        pose = _sample_pose(rng)
        ops, kps = _person_geometry(pose)
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
        ops = _shape_ops(kind, rng)
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
    return _Spec(
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


def _transform(spec: _Spec, pts: np.ndarray) -> np.ndarray:
    a = math.radians(spec.angle)
    c, s = math.cos(a), math.sin(a)
    x = pts[..., 0] * spec.aspect * spec.scale
    y = pts[..., 1] / spec.aspect * spec.scale
    return np.stack([c * x - s * y + spec.cx, s * x + c * y + spec.cy], axis=-1)


def _rasterize(spec: _Spec, tex_rng: np.random.Generator) -> _Layer:
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
            cv2.fillPoly(label, [_fx(op[1] - off)], int(op[2]), cv2.LINE_8, _SHIFT)
        elif op[0] == "line":
            cv2.polylines(label, [_fx(op[1] - off)], False, int(op[3]), int(op[2]), cv2.LINE_8, _SHIFT)
        else:
            c = _fx(op[1] - off)
            cv2.circle(label, (int(c[0]), int(c[1])), round(op[2] * _ONE), int(op[3]), -1, cv2.LINE_8, _SHIFT)
    mask = label > 0
    rgb = spec.palette[label]
    g = int(spec.noise_cells) + 2
    amp = np.float32(spec.noise_amp)
    lum = _upsample(tex_rng, g, g, 1, h, w) * amp - np.float32(0.675) * amp
    if spec.grain > 0:
        lum += (tex_rng.random((h, w), dtype=np.float32) - np.float32(0.5)) * np.float32(spec.grain)
    if spec.stripe is not None:
        ang, period, s_amp, hard = spec.stripe
        lum += _stripes(h, w, ang + math.radians(spec.angle), period, 0.0, hard) * np.float32(s_amp)
    rgb *= _rgb(1.0 + spec.shade_amp * _ramp(h, w, spec.shade_angle))
    rgb += _upsample(tex_rng, g, g, 3, h, w) * (np.float32(0.35) * amp)
    rgb += _rgb(lum)
    kps = _transform(spec, spec.keypoints) if spec.keypoints is not None else None
    return _Layer(x0=x0, y0=y0, mask=mask, rgb=rgb, spec=spec, keypoints=kps)


def _clip(layer: _Layer, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    ph, pw = layer.mask.shape
    gx0, gy0 = max(layer.x0, 0), max(layer.y0, 0)
    gx1, gy1 = min(layer.x0 + pw, w), min(layer.y0 + ph, h)
    if gx1 <= gx0 or gy1 <= gy0:
        return None
    return (
        (slice(gy0, gy1), slice(gx0, gx1)),
        (slice(gy0 - layer.y0, gy1 - layer.y0), slice(gx0 - layer.x0, gx1 - layer.x0)),
    )


def _paint(img: np.ndarray, layer: _Layer) -> None:
    h, w = img.shape[:2]
    sp = layer.spec
    if sp.shadow is not None:
        dx, dy, dark = sp.shadow
        shadow = _Layer(
            x0=layer.x0 + round(dx), y0=layer.y0 + round(dy), mask=layer.mask, rgb=layer.rgb, spec=sp, keypoints=None
        )
        cl = _clip(shadow, h, w)
        if cl is not None:
            g, l_ = cl
            alpha = cv2.blur(layer.mask.astype(np.float32), (5, 5))[l_]
            img[g] *= _rgb(1.0 - (1.0 - dark) * alpha)
    cl = _clip(layer, h, w)
    if cl is not None:
        g, l_ = cl
        m = layer.mask[l_]
        img[g][m] = layer.rgb[l_][m]


def _visible_annotations(
    layers: list[_Layer], front: list[_Layer], h: int, w: int, cfg: SceneConfig
) -> list[tuple[_Layer, np.ndarray]]:
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


def _annotation(layer: _Layer, vis: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    ann = {
        "category_id": int(layer.spec.category_id),
        "bbox": bbox,
        "area": area,
        "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]},
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


def _composite(img: np.ndarray, objects: list[_Layer], front: list[_Layer], cfg: SceneConfig) -> list[dict]:
    """Paint objects (and front distractors) onto ``img`` in place and return their annotations."""
    h, w = img.shape[:2]
    kept = _visible_annotations(objects, front, h, w, cfg)
    if objects and not kept and front:  # never let a front distractor empty a non-empty scene
        front = []
        kept = _visible_annotations(objects, front, h, w, cfg)
    for layer in objects:
        _paint(img, layer)
    for layer in front:
        _paint(img, layer)
    return [_annotation(layer, vis) for layer, vis in kept]


# --------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Natural-looking clutter: coloured multi-scale noise regions, lighting, stripes, soft blobs."""
    c0, c1, c2 = (_random_color(rng) for _ in range(3))
    n1 = _noise(rng, h, w, 1, cells=rng.uniform(1.5, 4.0), octaves=3)
    t1 = _smoothstep((n1 - 0.5) * rng.uniform(1.5, 4.0) + 0.5)
    img = cv2.add(cv2.multiply(_rgb(t1), _sc(c1 - c0)), _sc(c0))
    n2 = _noise(rng, h, w, 1, cells=rng.uniform(2.0, 5.0), octaves=2)
    m2 = _rgb(_smoothstep((n2 - rng.uniform(0.5, 0.7)) * rng.uniform(4.0, 20.0)))
    img -= m2 * img
    img += cv2.multiply(m2, _sc(c2))
    a_d, a_l = rng.uniform(10, 50), rng.uniform(10, 70)
    img += _noise(rng, h, w, 3, cells=rng.uniform(5.0, 14.0), octaves=3) * np.float32(a_d)
    lum = _noise(rng, h, w, 1, cells=rng.uniform(8.0, 24.0), octaves=2) * np.float32(a_l)
    lum -= np.float32(0.5 * (a_d + a_l))
    if rng.random() < 0.5:  # textured stripe region (fabric, floor boards, tiles...)
        region = _smoothstep((_noise(rng, h, w, 1, cells=rng.uniform(1.5, 3.0)) - rng.uniform(0.35, 0.6)) * 8)
        pat = _stripes(
            h, w, rng.uniform(0, math.pi), rng.uniform(3.0, 16.0), rng.uniform(0, 6.3), rng.uniform(0.5, 5.0)
        )
        if rng.random() < 0.3:  # checker / tiles
            pat = pat * _stripes(h, w, rng.uniform(0, math.pi), rng.uniform(4.0, 16.0), 0.0, 5.0)
        col = rng.uniform(-1, 1, size=3).astype(np.float32) * np.float32(rng.uniform(15, 55))
        if rng.random() < 0.5:
            img += cv2.multiply(_rgb(region * pat), _sc(col))
        else:  # achromatic pattern
            lum += region * pat * np.float32(col[0])
    img += _rgb(lum)
    for _ in range(int(rng.integers(0, 5))):  # soft blobs, blended in their own window only
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        # elongated and clearly soft, so that a blob never passes for an (unannotated) disc
        ax = rng.uniform(0.08, 0.35) * min(h, w) + 1
        ay = ax / rng.uniform(1.4, 3.0)
        angle, col = rng.uniform(0, 180), _random_color(rng)
        sigma = max(3.0, rng.uniform(0.15, 0.5) * ay)
        r = max(ax, ay) + 3 * sigma
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        m = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(m, (round(cx - x0), round(cy - y0)), (round(ax), round(ay)), angle, 0, 360, 0.8, -1)
        m3 = _rgb(cv2.GaussianBlur(m, (0, 0), sigma))
        win = img[y0:y1, x0:x1]
        win -= m3 * win
        win += cv2.multiply(m3, _sc(col))
    img *= _rgb(1.0 + rng.uniform(0, 0.45) * _ramp(h, w, rng.uniform(0, 2 * math.pi)))
    return img


def _distractor_layer(rng: np.random.Generator, img: np.ndarray, cfg: SceneConfig, max_frac: float) -> _Layer:
    h, w = img.shape[:2]
    s = min(h, w)
    kind = str(rng.choice(_DISTRACTOR_KINDS))
    size = s * math.exp(rng.uniform(math.log(0.08), math.log(max_frac)))
    cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
    bg = _local_mean(img, cx, cy, size / 2)
    spec = _make_spec(rng, kind, None, cx, cy, size, bg, cfg, shadow_prob=cfg.shadow_prob * 0.5)
    return _rasterize(spec, rng)


def _camera(rng: np.random.Generator, cfg: SceneConfig) -> tuple[float, float, float, float]:
    """Camera parameters: contrast, brightness offset, blur sigma (0 = none), sensor noise std."""
    contrast, offset = rng.uniform(0.8, 1.15), rng.uniform(-15, 15)
    sigma = rng.uniform(0.4, 1.0) if rng.random() < cfg.blur_prob else 0.0
    return contrast, offset, sigma, rng.uniform(0.5, max(0.5, cfg.max_noise_std))


def _finish(rng: np.random.Generator, img: np.ndarray, camera: tuple[float, float, float, float]) -> np.ndarray:
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


def _sample_object(rng: np.random.Generator, img: np.ndarray, cfg: SceneConfig, track_bounds: bool = False) -> _Spec:
    h, w = img.shape[:2]
    s = min(h, w)
    is_person = rng.random() < cfg.person_ratio
    kind = "person" if is_person else str(rng.choice(SHAPE_NAMES))
    cat = PERSON_CATEGORY_ID if is_person else _SHAPE_CAT_ID[kind]
    size = s * math.exp(rng.uniform(math.log(cfg.min_size_frac), math.log(cfg.max_size_frac)))
    if is_person:
        size *= 1.25
    lo, hi = (0.2, 0.8) if track_bounds else (0.08, 0.92)
    cx, cy = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
    bg = _local_mean(img, cx, cy, size / 2)
    return _make_spec(rng, kind, cat, cx, cy, size, bg, cfg, shadow_prob=cfg.shadow_prob)


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
    rng = np.random.Generator(np.random.PCG64(_check_seed(seed)))
    cfg = config
    h, w = cfg.height, cfg.width
    img = _background(rng, h, w)
    empty = rng.random() < cfg.empty_ratio
    n_obj = 0 if empty else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_dis = int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1)) + (2 if empty else 0)
    for _ in range(n_dis):
        _paint(img, _distractor_layer(rng, img, cfg, max_frac=max(0.1, cfg.max_size_frac)))
    objects = [_rasterize(_sample_object(rng, img, cfg), rng) for _ in range(n_obj)]
    front = []
    if rng.random() < cfg.front_distractor_prob:
        front.append(_distractor_layer(rng, img, cfg, max_frac=0.25))
    anns = _composite(img, objects, front, cfg)
    return Image.fromarray(_finish(rng, img, _camera(rng, cfg)), "RGB"), anns


def iter_scenes(
    num_images: int, seed: int, config: SceneConfig = SceneConfig()
) -> Iterator[tuple[int, Image.Image, list[dict]]]:
    """Yield ``(index, image, annotations)`` of image ``index`` = 0..num_images-1 of a dataset."""
    _check_seed(seed)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    for i in range(num_images):
        img, anns = render_scene(image_seed(seed, i), config)
        yield i, img, anns


def _coco_skeleton(config: SceneConfig, seed: int) -> dict:
    return {
        "info": {
            "description": "splitdet synthetic COCO-format scenes",
            "version": "1.0",
            "year": 2017,
            "seed": int(seed),
            "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        },
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [
            dict(c, keypoints=list(c["keypoints"]), skeleton=[list(p) for p in c["skeleton"]])
            if "keypoints" in c
            else dict(c)
            for c in CATEGORIES
        ],
    }


def _add_image(d: dict, index: int, anns: list[dict], config: SceneConfig, file_prefix: str) -> None:
    image_id = index + 1
    d["images"].append(
        {
            "id": image_id,
            "file_name": f"{file_prefix}{image_id:012d}.png",
            "height": config.height,
            "width": config.width,
        }
    )
    for a in anns:
        d["annotations"].append({"id": len(d["annotations"]) + 1, "image_id": image_id, **a})


def build_coco_dict(
    num_images: int, seed: int, config: SceneConfig = SceneConfig(), file_prefix: str = ""
) -> tuple[dict, list[Image.Image]]:
    """Generate ``num_images`` scenes in memory: a COCO dataset dict (image ids 1..N) and the images."""
    d = _coco_skeleton(config, seed)
    images = []
    for i, img, anns in iter_scenes(num_images, seed, config):
        _add_image(d, i, anns, config, file_prefix)
        images.append(img)
    return d, images


def build_coco_annotations(
    num_images: int, seed: int, config: SceneConfig = SceneConfig(), file_prefix: str = ""
) -> dict:
    """Like :func:`build_coco_dict` but discards the images (regenerate one with
    ``render_scene(image_seed(seed, image_id - 1), config)``)."""
    d = _coco_skeleton(config, seed)
    for i, _img, anns in iter_scenes(num_images, seed, config):
        _add_image(d, i, anns, config, file_prefix)
    return d


def write_coco_dataset(
    out_dir: str | Path, num_images: int, seed: int, config: SceneConfig = SceneConfig(), split: str = "val"
) -> Path:
    """Write a COCO-2017-layout dataset: ``{split}2017/*.png``, ``annotations/instances_{split}2017.json``
    and ``annotations/person_keypoints_{split}2017.json`` (person category only, all images). Returns out_dir.
    """
    out = Path(out_dir)
    img_dir = out / f"{split}2017"
    ann_dir = out / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    d = _coco_skeleton(config, seed)
    for i, img, anns in iter_scenes(num_images, seed, config):
        _add_image(d, i, anns, config, "")
        img.save(img_dir / d["images"][-1]["file_name"], format="PNG", compress_level=1)
    (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(d))
    kp = dict(d)
    kp["categories"] = [c for c in d["categories"] if c["id"] == PERSON_CATEGORY_ID]
    kp["annotations"] = [a for a in d["annotations"] if a["category_id"] == PERSON_CATEGORY_ID]
    (ann_dir / f"person_keypoints_{split}2017.json").write_text(json.dumps(kp))
    return out


# --------------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------------


@dataclass
class _Track:
    spec: _Spec
    vx: float
    vy: float
    spin: float  # degrees / frame
    walk: float  # pose phase speed (rad / frame), persons only
    track_id: int
    base_pose: dict | None = None


class SyntheticVideo:
    """Camera-like stream: objects move smoothly (bouncing at the borders) over a slowly drifting,
    slowly re-lit background, with stretches of empty frames (about ``empty_ratio`` of the frames,
    a few every ~20). Deterministic by seed; iterating twice yields identical frames.

    Yields ``(frame: uint8 HxWx3 RGB, annotations)``; annotations are as in :func:`render_scene`
    plus ``track_id``.
    """

    def __init__(
        self, num_frames: int, seed: int = 0, config: SceneConfig = SceneConfig(height=240, width=320)
    ) -> None:
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        self.num_frames = int(num_frames)
        self.seed = _check_seed(seed)
        self.config = config
        rng = _rng(self.seed, 0)
        r = config.empty_ratio
        active = np.zeros(self.num_frames, dtype=bool)
        segments: list[tuple[int, int]] = []
        t = 0
        while t < self.num_frames:
            length = int(rng.integers(15, 31))
            if r < 1.0:
                segments.append((t, min(t + length, self.num_frames)))
                active[t : t + length] = True
                t += length
            if r > 0.0:
                gap = length if r >= 1.0 else max(1, round(length * r / (1.0 - r) * rng.uniform(0.6, 1.4)))
                t += gap
        self._active = active
        self._segments = segments

    def __len__(self) -> int:
        return self.num_frames

    @property
    def empty_frames(self) -> list[int]:
        """Indices of the frames scheduled without objects."""
        return [int(i) for i in np.flatnonzero(~self._active)]

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[dict]]]:
        cfg = self.config
        h, w = cfg.height, cfg.width
        rng = _rng(self.seed, 1)
        margin = round(0.1 * max(h, w))
        bg = _background(rng, h + 2 * margin, w + 2 * margin)
        for _ in range(int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))):
            _paint(bg, _distractor_layer(rng, bg, cfg, max_frac=max(0.1, cfg.max_size_frac)))
        drift = (rng.uniform(150, 400), rng.uniform(150, 400), rng.uniform(0, 6.3), rng.uniform(0, 6.3))
        light = (rng.uniform(100, 300), rng.uniform(0, 6.3), rng.uniform(0.02, 0.08))
        camera = _camera(rng, cfg)
        seg_start = {s: e for s, e in self._segments}
        tracks: list[_Track] = []
        next_track = 1
        for t in range(self.num_frames):
            ox = margin + 0.9 * margin * math.sin(2 * math.pi * t / drift[0] + drift[2])
            oy = margin + 0.9 * margin * math.sin(2 * math.pi * t / drift[1] + drift[3])
            shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
            img = cv2.warpAffine(bg, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            img *= np.float32(1.0 + light[2] * math.sin(2 * math.pi * t / light[0] + light[1]))
            if t in seg_start:  # a new set of objects enters
                tracks = []
                for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
                    spec = _sample_object(rng, img, cfg, track_bounds=True)
                    speed = rng.uniform(0.004, 0.015) * max(h, w)
                    a = rng.uniform(0, 2 * math.pi)
                    is_person = spec.pose is not None
                    tracks.append(
                        _Track(
                            spec=spec,
                            vx=speed * math.cos(a),
                            vy=speed * math.sin(a),
                            spin=rng.uniform(-0.5, 0.5) if is_person else rng.uniform(-3, 3),
                            walk=rng.uniform(0.15, 0.4),
                            track_id=next_track,
                            base_pose=dict(spec.pose) if is_person else None,
                        )
                    )
                    next_track += 1
            anns: list[dict] = []
            if self._active[t]:
                layers = []
                for tr in tracks:
                    if tr.base_pose is not None:
                        self._animate(tr, t)
                    layers.append(_rasterize(tr.spec, _rng(tr.spec.tex_seed)))
                kept = _visible_annotations(layers, [], h, w, cfg)
                for layer in layers:
                    _paint(img, layer)
                ids = {id(layer.spec): tr.track_id for layer, tr in zip(layers, tracks, strict=True)}
                anns = [dict(_annotation(layer, vis), track_id=ids[id(layer.spec)]) for layer, vis in kept]
                for tr in tracks:
                    self._step(tr, w, h)
            yield _finish(_rng(self.seed, 2, t), img, camera), anns

    @staticmethod
    def _animate(tr: _Track, t: int) -> None:
        pose = dict(tr.base_pose)
        ph = tr.walk * t
        swing = np.array([math.sin(ph), -math.sin(ph)])
        pose["arm_u"] = np.clip(tr.base_pose["arm_u"] + 25 * swing, -25, 165)
        pose["leg_u"] = np.clip(tr.base_pose["leg_u"] - 20 * swing, -20, 65)
        ops, kps = _person_geometry(pose)
        tr.spec.ops, tr.spec.keypoints = ops, kps

    @staticmethod
    def _step(tr: _Track, w: int, h: int) -> None:
        sp = tr.spec
        sp.cx += tr.vx
        sp.cy += tr.vy
        sp.angle += tr.spin
        if not 0.05 * w <= sp.cx <= 0.95 * w:
            tr.vx = -tr.vx
            sp.cx = min(max(sp.cx, 0.05 * w), 0.95 * w)
        if not 0.05 * h <= sp.cy <= 0.95 * h:
            tr.vy = -tr.vy
            sp.cy = min(max(sp.cy, 0.05 * h), 0.95 * h)


# --------------------------------------------------------------------------------------------------
# Visualisation and CLI
# --------------------------------------------------------------------------------------------------

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


def _montage(
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


def main(argv: list[str] | None = None) -> int:
    """CLI: ``write OUT_DIR`` (COCO-2017 layout) or ``montage OUT.png``."""
    p = argparse.ArgumentParser(prog="python -m common.synthetic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pw = sub.add_parser("write", help="write a COCO-2017-layout synthetic dataset")
    pw.add_argument("out_dir")
    pw.add_argument("--split", default="val")
    pm = sub.add_parser("montage", help="draw generated images with their annotations")
    pm.add_argument("out_png")
    for q in (pw, pm):
        q.add_argument("-n", "--num-images", type=int, default=12)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--height", type=int, default=160)
        q.add_argument("--width", type=int, default=160)
        q.add_argument("--empty-ratio", type=float, default=0.2)
    args = p.parse_args(argv)
    cfg = SceneConfig(height=args.height, width=args.width, empty_ratio=args.empty_ratio)
    if args.cmd == "write":
        out = write_coco_dataset(args.out_dir, args.num_images, args.seed, cfg, split=args.split)
    else:
        out = _montage(args.out_png, args.num_images, args.seed, cfg)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
