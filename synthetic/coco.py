"""COCO datasets of synthetic scenes: dicts in memory and the COCO-2017 layout on disk."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from splitdet.synthetic.categories import CATEGORIES, PERSON_CATEGORY_ID
from splitdet.synthetic.config import SceneConfig
from splitdet.synthetic.scene import iter_scenes
from splitdet.synthetic.video import SyntheticVideo


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


def build_video_coco_dict(video: SyntheticVideo, first: int, count: int) -> tuple[dict, list[Image.Image]]:
    """Frames ``first .. first + count - 1`` of ``video`` (one fixed camera) as a COCO dataset dict (image ids
    1..count, in frame order) and the frames; ``video`` must have at least ``first + count`` frames."""
    if first < 0 or count < 0 or first + count > len(video):
        raise ValueError(f"frames {first}..{first + count - 1} are not all in a video of {len(video)} frames")
    d = _coco_skeleton(video.config, video.seed)
    images = []
    for t, (frame, anns) in enumerate(video):
        if t >= first + count:
            break
        if t >= first:
            _add_image(d, t - first, [{k: v for k, v in a.items() if k != "track_id"} for a in anns], video.config, "")
            images.append(Image.fromarray(frame, "RGB"))
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
