"""Annotated frames for ``--save-vis``: masks, boxes, labels with scores, keypoints and skeleton."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from splitdet.common.drawing import Drawable, draw
from splitdet.mobile_client.pipeline import FrameResult
from splitdet.synthetic import KEYPOINT_NAMES as SYNTHETIC_KEYPOINTS
from splitdet.synthetic import SKELETON as SYNTHETIC_SKELETON

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]  # fmt: skip
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11],
    [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


def skeleton_for(keypoint_names: list[str]) -> list[tuple[int, int]]:
    """0-based limb pairs for COCO's or the synthetic data's keypoints; no limbs for other layouts."""
    layouts = ((COCO_KEYPOINTS, COCO_SKELETON), (SYNTHETIC_KEYPOINTS, SYNTHETIC_SKELETON))
    for names, skeleton in layouts:
        if list(keypoint_names) == list(names):
            return [(a - 1, b - 1) for a, b in skeleton]
    return []


def annotate(result: FrameResult, skeleton: list[tuple[int, int]]) -> np.ndarray:
    """An RGB copy of the frame with the result drawn on it, plus a status line at the top."""
    dets = result.detections
    items = Drawable(
        boxes=[d["box"] for d in dets],
        texts=[f"{d['label']} {d['score']:.2f}" for d in dets],
        color_keys=[d["label"] for d in dets],
        masks=[d["mask_rle"] for d in dets] if dets and all("mask_rle" in d for d in dets) else None,
        keypoints=np.array([d["keypoints"] for d in dets]) if dets and all("keypoints" in d for d in dets) else None,
    )
    status = "skipped by the filter" if result.skipped else f"{len(dets)} detections"
    if result.reused:
        status += f" reused from #{result.reused_from} (static)"
    if result.error is not None:
        status = f"failed: {result.error}"
    return draw(result.image, items, skeleton, status=f"#{result.index} {result.mode}: {status}")


def save(result: FrameResult, out_dir: Path, skeleton: list[tuple[int, int]]) -> Path | None:
    """Write ``frame_NNNNNN.jpg`` into ``out_dir``; frames without an image (unreadable files) are not written."""
    if result.image is None:
        return None
    path = Path(out_dir) / f"frame_{result.index:06d}.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(annotate(result, skeleton), cv2.COLOR_RGB2BGR))
    return path
