"""Synthetic camera-like video: moving objects over a drifting background, with stretches of empty frames and,
optionally, static stretches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from splitdet.synthetic.background import render_background
from splitdet.synthetic.config import SceneConfig, check_seed, seeded_rng
from splitdet.synthetic.geometry import person_geometry
from splitdet.synthetic.objects import Spec, annotation, paint, rasterize, visible_annotations
from splitdet.synthetic.scene import apply_camera, distractor_layer, sample_camera, sample_object


@dataclass
class _Track:
    spec: Spec
    vx: float
    vy: float
    spin: float  # degrees / frame
    walk: float  # pose phase speed (rad / frame), persons only
    track_id: int
    base_pose: dict | None = None


class SyntheticVideo:
    """Camera-like stream: objects move smoothly (bouncing at the borders) over a slowly drifting,
    slowly re-lit background, with stretches of empty frames (about ``empty_ratio`` of the frames,
    ``config.empty_ratio`` unless given, a few every ~20). Runs of frames with objects last ``run_frames``
    (inclusive range, default 15..30) frames; the empty stretches between them are as long on average times
    ``empty_ratio / (1 - empty_ratio)``. Deterministic by seed; iterating twice yields identical frames.

    With ``static_ratio`` > 0, about that share of the frames fall in static stretches of ``static_run_frames``
    (inclusive range, default 10..30) frames: the scene's clock stops, so objects, poses, background drift and
    lighting stay as they were in the frame before the stretch, while the sensor noise is drawn anew every frame as
    in a real camera. Objects still enter and leave on the empty/object schedule above. ``static_ratio`` 0 (the
    default) renders exactly the frames it did before the option existed.

    Yields ``(frame: uint8 HxWx3 RGB, annotations)``; annotations are as in :func:`render_scene`
    plus ``track_id``.
    """

    def __init__(
        self,
        num_frames: int,
        seed: int = 0,
        config: SceneConfig = SceneConfig(height=240, width=320),
        empty_ratio: float | None = None,
        run_frames: tuple[int, int] = (15, 30),
        static_ratio: float = 0.0,
        static_run_frames: tuple[int, int] = (10, 30),
    ) -> None:
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        if not 1 <= run_frames[0] <= run_frames[1]:
            raise ValueError(f"run_frames must be (low, high) with 1 <= low <= high, got {run_frames}")
        if empty_ratio is not None and not 0.0 <= empty_ratio <= 1.0:
            raise ValueError(f"empty_ratio must be in [0, 1], got {empty_ratio}")
        if not 0.0 <= static_ratio <= 1.0:
            raise ValueError(f"static_ratio must be in [0, 1], got {static_ratio}")
        if not 1 <= static_run_frames[0] <= static_run_frames[1]:
            raise ValueError(f"static_run_frames must be (low, high) with 1 <= low <= high, got {static_run_frames}")
        self.num_frames = int(num_frames)
        self.seed = check_seed(seed)
        self.config = config
        rng = seeded_rng(self.seed, 0)
        r = config.empty_ratio if empty_ratio is None else empty_ratio
        active = np.zeros(self.num_frames, dtype=bool)
        segments: list[tuple[int, int]] = []
        t = 0
        while t < self.num_frames:
            length = int(rng.integers(run_frames[0], run_frames[1] + 1))
            if r < 1.0:
                segments.append((t, min(t + length, self.num_frames)))
                active[t : t + length] = True
                t += length
            if r > 0.0:
                gap = length if r >= 1.0 else max(1, round(length * r / (1.0 - r) * rng.uniform(0.6, 1.4)))
                t += gap
        self._active = active
        self._segments = segments
        self._frozen = self._static_schedule(static_ratio, static_run_frames)
        #: the scene's clock at each frame: it stops during static stretches
        self._clock = np.concatenate([[0], np.cumsum(~self._frozen[1:])]).astype(int)[: self.num_frames]

    def _static_schedule(self, ratio: float, run_frames: tuple[int, int]) -> np.ndarray:
        """True at frames that show the scene of the frame before (its own RNG: the rest of the video is unchanged).
        Moving stretches come first, as long on average as the static ones times ``(1 - ratio) / ratio``."""
        frozen = np.zeros(self.num_frames, dtype=bool)
        if ratio <= 0.0:
            return frozen
        rng = seeded_rng(self.seed, 3)
        t = 0
        while t < self.num_frames:
            length = int(rng.integers(run_frames[0], run_frames[1] + 1))
            if ratio < 1.0:
                t += max(1, round(length * (1.0 - ratio) / ratio * rng.uniform(0.6, 1.4)))
            frozen[t : t + length] = True
            t += length
        frozen[:1] = False  # the first frame has no frame before it
        return frozen

    def __len__(self) -> int:
        return self.num_frames

    @property
    def empty_frames(self) -> list[int]:
        """Indices of the frames scheduled without objects."""
        return [int(i) for i in np.flatnonzero(~self._active)]

    @property
    def static_frames(self) -> list[int]:
        """Indices of the frames that show the same scene as the frame before (only the sensor noise differs, unless
        objects enter or leave at that frame)."""
        return [int(i) for i in np.flatnonzero(self._frozen)]

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[dict]]]:
        cfg = self.config
        h, w = cfg.height, cfg.width
        rng = seeded_rng(self.seed, 1)
        margin = round(0.1 * max(h, w))
        bg = render_background(rng, h + 2 * margin, w + 2 * margin)
        for _ in range(int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))):
            paint(bg, distractor_layer(rng, bg, cfg, max_frac=max(0.1, cfg.max_size_frac)))
        drift = (rng.uniform(150, 400), rng.uniform(150, 400), rng.uniform(0, 6.3), rng.uniform(0, 6.3))
        light = (rng.uniform(100, 300), rng.uniform(0, 6.3), rng.uniform(0.02, 0.08))
        camera = sample_camera(rng, cfg)
        seg_start = {s: e for s, e in self._segments}
        tracks: list[_Track] = []
        next_track = 1
        for t in range(self.num_frames):
            c = int(self._clock[t])  # the scene's time: t unless a static stretch stopped it
            ox = margin + 0.9 * margin * math.sin(2 * math.pi * c / drift[0] + drift[2])
            oy = margin + 0.9 * margin * math.sin(2 * math.pi * c / drift[1] + drift[3])
            shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
            img = cv2.warpAffine(bg, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            img *= np.float32(1.0 + light[2] * math.sin(2 * math.pi * c / light[0] + light[1]))
            if t in seg_start:  # a new set of objects enters
                tracks = []
                for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
                    spec = sample_object(rng, img, cfg, track_bounds=True)
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
                        self._animate(tr, c)
                    layers.append(rasterize(tr.spec, seeded_rng(tr.spec.tex_seed)))
                kept = visible_annotations(layers, [], h, w, cfg)
                for layer in layers:
                    paint(img, layer)
                ids = {id(layer.spec): tr.track_id for layer, tr in zip(layers, tracks, strict=True)}
                anns = [dict(annotation(layer, vis), track_id=ids[id(layer.spec)]) for layer, vis in kept]
                if t + 1 >= self.num_frames or not self._frozen[t + 1]:
                    for tr in tracks:
                        self._step(tr, w, h)
            yield apply_camera(seeded_rng(self.seed, 2, t), img, camera), anns

    @staticmethod
    def _animate(tr: _Track, t: int) -> None:
        pose = dict(tr.base_pose)
        ph = tr.walk * t
        swing = np.array([math.sin(ph), -math.sin(ph)])
        pose["arm_u"] = np.clip(tr.base_pose["arm_u"] + 25 * swing, -25, 165)
        pose["leg_u"] = np.clip(tr.base_pose["leg_u"] - 20 * swing, -20, 65)
        ops, kps = person_geometry(pose)
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
