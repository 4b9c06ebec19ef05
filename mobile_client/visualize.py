"""Annotated frames for ``--save-vis``: masks, boxes, labels with scores, keypoints and skeleton."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mobile_client.pipeline import FrameResult
from synthetic import KEYPOINT_NAMES as SYNTHETIC_KEYPOINTS
from synthetic import SKELETON as SYNTHETIC_SKELETON

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]  # fmt: skip
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11],
    [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip


def skeleton_for(keypoint_names: list[str]) -> list[tuple[int, int]]:
    """0-based limb pairs for COCO's or the synthetic data's keypoints; no limbs for other layouts."""
    layouts = ((COCO_KEYPOINTS, COCO_SKELETON), (SYNTHETIC_KEYPOINTS, SYNTHETIC_SKELETON))
    for names, skeleton in layouts:
        if list(keypoint_names) == list(names):
            return [(a - 1, b - 1) for a, b in skeleton]
    return []


def annotate(result: FrameResult, skeleton: list[tuple[int, int]]) -> np.ndarray:
    """An RGB copy of the frame with the result drawn on it, plus a status line at the top."""
    image = np.ascontiguousarray(result.image).copy()
    for det in result.detections:
        if "mask_rle" in det:
            rle = {"size": det["mask_rle"]["size"], "counts": det["mask_rle"]["counts"].encode("ascii")}
            mask = mask_utils.decode(rle).astype(bool)
            color = np.array(_color(det["label"]), dtype=np.float32)
            image[mask] = (0.5 * image[mask] + 0.5 * color).astype(np.uint8)
    for det in result.detections:
        color = _color(det["label"])
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        cv2.rectangle(image, (x1, y1), (x2, y2), color, 2)
        _text(image, f"{det['label']} {det['score']:.2f}", (x1, max(y1 - 4, 10)), color)
        if "keypoints" in det:
            points = [(round(x), round(y), v > 0) for x, y, v in det["keypoints"]]
            for a, b in skeleton:
                if a < len(points) and b < len(points) and points[a][2] and points[b][2]:
                    cv2.line(image, points[a][:2], points[b][:2], color, 2, cv2.LINE_AA)
            for x, y, visible in points:
                if visible:
                    cv2.circle(image, (x, y), 3, (255, 255, 255), -1, cv2.LINE_AA)
    status = "skipped by the filter" if result.skipped else f"{len(result.detections)} detections"
    if result.error is not None:
        status = f"failed: {result.error}"
    _text(image, f"#{result.index} {result.mode}: {status}", (4, 14), (255, 255, 255))
    return image


def save(result: FrameResult, out_dir: Path, skeleton: list[tuple[int, int]]) -> Path | None:
    """Write ``frame_NNNNNN.jpg`` into ``out_dir``; frames without an image (unreadable files) are not written."""
    if result.image is None:
        return None
    path = Path(out_dir) / f"frame_{result.index:06d}.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(annotate(result, skeleton), cv2.COLOR_RGB2BGR))
    return path


def _color(label: str) -> tuple[int, int, int]:
    return PALETTE[sum(label.encode()) % len(PALETTE)]


def _text(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int]) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
