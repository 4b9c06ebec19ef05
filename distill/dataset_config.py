"""Build the datasets a training config's ``dataset:`` section names (synthetic scenes or COCO 2017 on disk)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from distill.config import ConfigError, check_keys
from distill.datasets import CocoDetection, SyntheticCoco, coco_2017
from synthetic import SceneConfig


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


def build_dataset(section: dict[str, Any], split: str, detector: bool = False) -> tuple[CocoDetection, DatasetInfo]:
    """The ``split`` ("train" or "val") dataset; ``detector`` drops images without annotations (for training)."""
    task = section.get("task", "bbox")
    options = {"remove_images_without_annotations": detector, "jpeg_quality": section.get("jpeg_quality")}
    try:
        if section.get("type", "synthetic") == "coco":
            dataset = coco_2017(section["coco_root"], split, task, **options)
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
