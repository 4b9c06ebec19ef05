"""Shape geometry in unit coordinates (a shape spans roughly [-1, 1]^2): object classes, distractors and
the stick-figure person with its keypoints.
"""

from __future__ import annotations

import math

import numpy as np

from splitdet.synthetic.categories import KEYPOINT_NAMES

# Drawing ops: ("poly", pts(N,2), part) | ("line", pts(N,2), thickness_units, part) |
#              ("circle", center(2,), radius_units, part); part 0 erases (holes).
Op = tuple


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


def shape_ops(kind: str, rng: np.random.Generator) -> list[Op]:
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


def sample_pose(rng: np.random.Generator, facing_away: float = 0.5) -> dict:
    """Random plausible stick-figure pose (angles in degrees, 0 = limb pointing down); ``facing_away`` is the
    probability of a figure with its back to the camera (its left and right swap sides in the image)."""
    return {
        "lean": rng.uniform(-15, 15),
        "arm_u": rng.uniform(-25, 165, size=2),  # upper arm, outward from "down"
        "arm_b": rng.uniform(-10, 140, size=2) * rng.choice([-1.0, 1.0], size=2),  # elbow bend
        "leg_u": rng.uniform(-20, 65, size=2),  # thigh, outward from "down"
        "leg_b": rng.uniform(0, 110, size=2) * rng.choice([-1.0, 1.0]),  # knee bend (same side)
        "mirror": bool(rng.random() < facing_away),  # facing away: left/right swap in the image
        "thick": rng.uniform(0.04, 0.065),  # limb thickness / height
        "head_r": rng.uniform(0.065, 0.085),  # head radius / height
        "shoulder": rng.uniform(0.09, 0.13),
        "hip": rng.uniform(0.05, 0.075),
    }


def person_geometry(pose: dict) -> tuple[list[Op], np.ndarray]:
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
    ops: list[Op] = [
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
