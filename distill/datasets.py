"""COCO-format detection datasets read through pycocotools, in torchvision's detection format.

* :class:`CocoDetection` reads any COCO-format tree (real COCO 2017 or one written by
  :func:`synthetic.write_coco_dataset`) for the ``bbox``, ``segm`` or ``keypoints`` task.
* :class:`SyntheticCoco` is the same dataset over scenes generated in memory (no disk).
* :func:`coco_2017` locates the standard COCO 2017 layout under a root directory.

Items are ``(image, target)``: ``image`` a float tensor [3, H, W] in [0, 1]; ``target`` a dict with
``boxes`` (float [N, 4], xyxy absolute pixels), ``labels`` (int64, contiguous 1..num_classes-1),
``image_id`` (int), ``area`` (float [N]), ``iscrowd`` (int64 [N]), plus ``masks`` (uint8 [N, H, W])
for ``segm`` and ``keypoints`` (float [N, K, 3]) for ``keypoints``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from splitdet.common.interest import MIN_OBJECT_FRACTION
from splitdet.common.split import image_tensor
from splitdet.synthetic import (
    SceneConfig,
    SyntheticVideo,
    build_coco_annotations,
    build_coco_dict,
    build_video_coco_dict,
    image_seed,
    render_scene,
)

__all__ = [
    "MIN_OBJECT_FRACTION",
    "TASKS",
    "AnnotationKind",
    "CocoDetection",
    "SyntheticCoco",
    "SyntheticVideoCoco",
    "coco_2017",
    "coco_from_dict",
    "collate_detection",
    "has_object_of_interest",
    "load_coco",
    "objects_of_interest",
]

AnnotationKind = Literal["bbox", "segm", "keypoints"]
TASKS: tuple[str, ...] = ("bbox", "segm", "keypoints")
Transforms = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def load_coco(ann_file: str | Path) -> COCO:
    """Load a COCO annotation file without pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def coco_from_dict(dataset: dict) -> COCO:
    """Build a pycocotools ``COCO`` index over an in-memory COCO dataset dict (e.g. for COCOeval)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _jpeg_roundtrip(img: Image.Image, quality: int, image_format: str = "JPEG") -> Image.Image:
    """``img`` encoded and decoded again as JPEG (or ``image_format``, e.g. WEBP) at ``quality``."""
    buf = io.BytesIO()
    img.save(buf, format=image_format, quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return image_tensor(np.array(img.convert("RGB"), dtype=np.uint8))  # a writable copy


class CocoDetection(Dataset):
    """A COCO-format dataset (images under ``root``, annotations in ``ann_file``).

    Crowd annotations and degenerate boxes (width or height < 1 px after clipping to the image) are
    dropped. Images without annotations are kept unless ``remove_images_without_annotations`` (then,
    like torchvision's references, an image needs a valid box and, for ``keypoints``, at least
    :attr:`min_keypoints_per_image` labelled keypoints). ``category_ids`` restricts (and orders) the
    categories; by default all of them, or only those with ``keypoints`` for the keypoints task.
    ``jpeg_quality`` re-encodes every image as JPEG at that quality in memory before conversion.
    """

    #: keypoints task + ``remove_images_without_annotations``: labelled (v > 0) keypoints an image needs
    min_keypoints_per_image: int = 10

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        task: AnnotationKind = "bbox",
        transforms: Transforms | None = None,
        remove_images_without_annotations: bool = False,
        jpeg_quality: int | None = None,
        category_ids: list[int] | None = None,
    ) -> None:
        self.root = Path(root)
        ann_file = Path(ann_file)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.root}")
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {ann_file}")
        self.ann_file = ann_file
        self._setup(
            load_coco(ann_file), task, transforms, remove_images_without_annotations, jpeg_quality, category_ids
        )

    # ---- construction shared with SyntheticCoco -------------------------------------------------

    def _setup(
        self,
        coco: COCO,
        task: str,
        transforms: Transforms | None,
        remove_images_without_annotations: bool,
        jpeg_quality: int | None,
        category_ids: Sequence[int] | None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if jpeg_quality is not None and not (isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 100):
            raise ValueError(f"jpeg_quality must be None or an int in [1, 100], got {jpeg_quality!r}")
        self.coco = coco
        self.task: str = task
        self.transforms = transforms
        self.jpeg_quality = jpeg_quality
        self.image_format = "JPEG"  #: the lossy format ``jpeg_quality`` re-encodes with (JPEG or WEBP)
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        by_id = {c["id"]: c for c in cats}
        if category_ids is None:
            selected = [c["id"] for c in cats if task != "keypoints" or c.get("keypoints")]
            if not selected:
                raise ValueError(f"no {'keypoint ' if task == 'keypoints' else ''}categories in the annotations")
        else:
            selected = [int(c) for c in category_ids]
            missing = [c for c in selected if c not in by_id]
            if missing:
                raise ValueError(f"category_ids {missing} not in the annotations (have {sorted(by_id)})")
            if len(set(selected)) != len(selected):
                raise ValueError(f"duplicate category_ids: {selected}")
            if task == "keypoints" and not all(by_id[c].get("keypoints") for c in selected):
                raise ValueError("keypoints task: every selected category needs a 'keypoints' list")
        self.cat_id_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(selected)}
        self.label_to_cat_id: dict[int, int] = {v: k for k, v in self.cat_id_to_label.items()}
        self._names = [by_id[c]["name"] for c in selected]
        self.num_keypoints = len(by_id[selected[0]].get("keypoints", [])) if task == "keypoints" else 0
        ids = sorted(coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if self._has_valid_annotation(i)]
        self.ids: list[int] = ids

    # ---- metadata -------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Names in label order; index 0 is ``"__background__"``."""
        return ["__background__", *self._names]

    @property
    def num_classes(self) -> int:
        """Number of classes including the background (torchvision's ``num_classes``)."""
        return len(self._names) + 1

    def __len__(self) -> int:
        return len(self.ids)

    # ---- items ----------------------------------------------------------------------------------

    def _load_image(self, image_id: int) -> Image.Image:
        with Image.open(self.root / self.coco.imgs[image_id]["file_name"]) as img:
            return img.convert("RGB")

    def _valid_annotations(self, image_id: int, height: int, width: int) -> list[tuple[dict, list[float]]]:
        """Non-crowd annotations of the selected categories with their clipped xyxy box (w, h >= 1)."""
        out = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) or ann["category_id"] not in self.cat_id_to_label:
                continue
            x, y, w, h = ann["bbox"]
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 - x0 >= 1.0 and y1 - y0 >= 1.0:
                out.append((ann, [float(x0), float(y0), float(x1), float(y1)]))
        return out

    def _has_valid_annotation(self, image_id: int) -> bool:
        info = self.coco.imgs[image_id]
        anns = self._valid_annotations(image_id, info["height"], info["width"])
        if not anns:
            return False
        if self.task != "keypoints":
            return True
        labelled = sum(sum(1 for v in a.get("keypoints", [])[2::3] if v > 0) for a, _ in anns)
        return labelled >= self.min_keypoints_per_image

    def _target(self, image_id: int, height: int, width: int) -> dict[str, Any]:
        anns = self._valid_annotations(image_id, height, width)
        n = len(anns)
        target: dict[str, Any] = {
            "boxes": torch.tensor([b for _, b in anns], dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a, _ in anns], dtype=torch.int64),
            "image_id": int(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a, _ in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        if self.task == "segm":
            if n:
                masks = np.stack([self.coco.annToMask(a) for a, _ in anns]).astype(np.uint8)
                if masks.shape[1:] != (height, width):
                    raise ValueError(f"image {image_id}: mask size {masks.shape[1:]} != image {(height, width)}")
                target["masks"] = torch.from_numpy(masks)
            else:
                target["masks"] = torch.zeros((0, height, width), dtype=torch.uint8)
        elif self.task == "keypoints":
            k = self.num_keypoints
            kps = [a.get("keypoints") or [0.0] * (3 * k) for a, _ in anns]
            target["keypoints"] = torch.tensor(kps, dtype=torch.float32).reshape(n, k, 3)
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        img = self._load_image(image_id)
        if self.jpeg_quality is not None:
            img = _jpeg_roundtrip(img, self.jpeg_quality, getattr(self, "image_format", "JPEG"))
        target = self._target(image_id, img.height, img.width)
        image = _to_tensor(img)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class SyntheticCoco(CocoDetection):
    """:class:`CocoDetection` over :mod:`synthetic` scenes generated in memory (no disk).

    Image ids are 1..num_images; ``.coco`` is a pycocotools ``COCO`` over the generated annotations
    (usable as COCOeval ground truth). With ``cache_images=False`` images are not kept but rendered
    again (deterministically) on access, trading ~4 ms per item for memory.
    """

    def __init__(
        self,
        num_images: int,
        seed: int,
        config: SceneConfig = SceneConfig(),
        task: AnnotationKind = "bbox",
        transforms: Transforms | None = None,
        remove_images_without_annotations: bool = False,
        jpeg_quality: int | None = None,
        category_ids: list[int] | None = None,
        cache_images: bool = True,
    ) -> None:
        self.seed = seed
        self.config = config
        self.root = None
        self.ann_file = None
        self._images: dict[int, Image.Image] | None
        if cache_images:
            d, images = build_coco_dict(num_images, seed, config)
            self._images = {info["id"]: img for info, img in zip(d["images"], images, strict=True)}
        else:
            d = build_coco_annotations(num_images, seed, config)
            self._images = None
        self._setup(coco_from_dict(d), task, transforms, remove_images_without_annotations, jpeg_quality, category_ids)

    def _load_image(self, image_id: int) -> Image.Image:
        if self._images is not None:
            return self._images[image_id]
        return render_scene(image_seed(self.seed, image_id - 1), self.config)[0]


class SyntheticVideoCoco(CocoDetection):
    """:class:`CocoDetection` over frames ``first .. first + num_images - 1`` of one :class:`synthetic.SyntheticVideo`
    (one fixed camera: the same background and clutter in every frame, objects entering and leaving), in memory.
    Disjoint frame ranges of one video are the train / calibration / val splits of a filter fitted to a camera."""

    def __init__(
        self,
        video: SyntheticVideo,
        first: int,
        num_images: int,
        task: AnnotationKind = "bbox",
        remove_images_without_annotations: bool = False,
        jpeg_quality: int | None = None,
    ) -> None:
        self.seed = video.seed
        self.config = video.config
        self.root = None
        self.ann_file = None
        d, images = build_video_coco_dict(video, first, num_images)
        self._images = {info["id"]: img for info, img in zip(d["images"], images, strict=True)}
        self._setup(coco_from_dict(d), task, None, remove_images_without_annotations, jpeg_quality, None)

    def _load_image(self, image_id: int) -> Image.Image:
        return self._images[image_id]


def coco_2017(
    coco_root: str | Path, split: Literal["train", "val"], task: AnnotationKind = "bbox", **kw: Any
) -> CocoDetection:
    """COCO 2017 from ``{coco_root}/{split}2017/`` and ``{coco_root}/annotations/instances_{split}2017.json``
    (``person_keypoints_{split}2017.json`` for the keypoints task). ``kw`` go to :class:`CocoDetection`."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = Path(coco_root)
    img_dir = root / f"{split}2017"
    ann_name = f"person_keypoints_{split}2017.json" if task == "keypoints" else f"instances_{split}2017.json"
    ann_file = root / "annotations" / ann_name
    for path, is_ok in ((img_dir, img_dir.is_dir()), (ann_file, ann_file.is_file())):
        if not is_ok:
            raise FileNotFoundError(
                f"COCO 2017 not found: expected {path} - download COCO 2017 ({split}2017.zip and "
                f"annotations_trainval2017.zip from cocodataset.org) and unpack both under {root} "
                "yourself; this program cannot download it"
            )
    return CocoDetection(img_dir, ann_file, task=task, **kw)


def objects_of_interest(
    target: dict[str, Any], image_size: tuple[int, int], label_ids: Iterable[int] | None = None
) -> torch.Tensor:
    """Bool ``[N]``: which of ``target``'s objects are of interest in an image of ``image_size`` (h, w): of one of
    ``label_ids`` (any label when None; e.g. only the person label for Keypoint R-CNN) and at least
    :data:`MIN_OBJECT_FRACTION` of the shorter side across (square root of the visible area)."""
    labels = torch.as_tensor(target["labels"], dtype=torch.int64)
    area = torch.as_tensor(target["area"], dtype=torch.float32)
    keep = area.sqrt() >= MIN_OBJECT_FRACTION * min(image_size)
    if label_ids is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(label_ids), dtype=torch.int64))
    return keep


def has_object_of_interest(
    target: dict[str, Any], image_size: tuple[int, int], label_ids: Iterable[int] | None = None
) -> bool:
    """Whether ``target`` holds an object of interest (:func:`objects_of_interest`): the neural filter's target."""
    return bool(objects_of_interest(target, image_size, label_ids).any())


def collate_detection(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Collate ``(image, target)`` pairs into ``(list of images, list of targets)``."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
