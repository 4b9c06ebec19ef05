"""Build the datasets a training config's ``dataset:`` section names (synthetic scenes or COCO 2017 on disk)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from splitdet.distill.config import ConfigError, check_keys
from splitdet.distill.datasets import CocoDetection, SyntheticCoco, SyntheticVideoCoco, coco_2017
from splitdet.synthetic import SceneConfig, SyntheticVideo


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its dataset."""

    class_names: list[str]
    keypoint_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def scene_config(section: dict[str, Any]) -> SceneConfig:
    """A :class:`SceneConfig` from a config mapping; unknown keys are an error."""
    if not isinstance(section, dict):
        raise ConfigError(f"dataset.scene must be a mapping, got {section!r}")
    check_keys(section, [f.name for f in fields(SceneConfig)], "dataset.scene", "")
    try:
        return SceneConfig(**section)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"dataset.scene: {e}") from None


def dataset_info(dataset: CocoDetection) -> DatasetInfo:
    keypoint_names: list[str] = []
    if dataset.task == "keypoints":
        cat = dataset.coco.loadCats(dataset.label_to_cat_id[1])[0]
        keypoint_names = list(cat.get("keypoints", []))
    return DatasetInfo(dataset.class_names, keypoint_names)


def _video_split(section: dict[str, Any], split: str, task: str, options: dict[str, Any]) -> SyntheticVideoCoco:
    part = section.get(split) or {}
    if "num_images" not in part or "first_frame" not in part:
        raise ConfigError(f"dataset.{split} of a video needs first_frame and num_images")
    video_section = dict(section.get("video") or {})
    check_keys(video_section, ["seed", "empty_ratio", "run_frames"], "dataset.video", "")
    first, count = int(part["first_frame"]), int(part["num_images"])
    video = SyntheticVideo(
        first + count,
        int(video_section.get("seed", 0)),
        scene_config(section.get("scene") or {}),
        empty_ratio=video_section.get("empty_ratio"),
        run_frames=tuple(video_section.get("run_frames", (15, 30))),
    )
    return SyntheticVideoCoco(video, first, count, task=task, **options)


def build_dataset(section: dict[str, Any], split: str, detector: bool = False) -> tuple[CocoDetection, DatasetInfo]:
    """The ``split`` ("train", "calibration" or "val") dataset; ``detector`` drops images without annotations (for
    training). ``type: video`` takes each split as frames ``first_frame ..`` of one synthetic video (``video:``)."""
    task = section.get("task", "bbox")
    options = {"remove_images_without_annotations": detector, "jpeg_quality": section.get("jpeg_quality")}
    try:
        if section.get("type", "synthetic") == "coco":
            dataset = coco_2017(section["coco_root"], split, task, **options)
        elif section["type"] == "video":
            dataset = _video_split(section, split, task, options)
        else:
            part = section.get(split) or {}
            if "num_images" not in part:
                raise ConfigError(f"dataset.{split}.num_images is missing")
            dataset = SyntheticCoco(
                int(part["num_images"]),
                int(part.get("seed", 0 if split == "train" else 1)),
                scene_config(section.get("scene") or {}),
                task=task,
                **options,
            )
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"dataset: {e}") from None
    return dataset, dataset_info(dataset)
