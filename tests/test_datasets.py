"""COCO-format datasets: reading a written synthetic COCO tree, targets, options, errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from splitdet.distill.datasets import (
    MIN_OBJECT_FRACTION,
    CocoDetection,
    SyntheticCoco,
    coco_2017,
    collate_detection,
    has_object_of_interest,
    objects_of_interest,
)
from splitdet.synthetic import KEYPOINT_NAMES, PERSON_CATEGORY_ID, SceneConfig, write_coco_dataset

CFG = SceneConfig(height=96, width=112, person_ratio=0.5, empty_ratio=0.25)
N = 10


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), N, seed=11, config=CFG, split="val")


def test_layout(coco_root):
    assert sorted(p.name for p in (coco_root / "val2017").iterdir())[0] == "000000000001.png"
    assert len(list((coco_root / "val2017").glob("*.png"))) == N
    inst = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    kp = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    assert len(inst["images"]) == len(kp["images"]) == N
    assert [c["id"] for c in kp["categories"]] == [PERSON_CATEGORY_ID]
    assert all(a["category_id"] == PERSON_CATEGORY_ID for a in kp["annotations"])
    assert {a["id"] for a in kp["annotations"]} <= {a["id"] for a in inst["annotations"]}


def test_bbox_targets_match_annotations(coco_root):
    ds = coco_2017(coco_root, "val", "bbox")
    assert len(ds) == N
    assert ds.class_names == ["__background__", "person", "disc", "triangle", "star", "ring", "cross"]
    assert ds.num_classes == 7 and ds.cat_id_to_label[1] == 1 and ds.label_to_cat_id[6] == 6
    raw = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    n_empty = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, CFG.height, CFG.width)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        anns = [a for a in raw["annotations"] if a["image_id"] == t["image_id"]]
        assert isinstance(t["image_id"], int)
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (len(anns), 4)
        assert t["labels"].dtype == torch.int64
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        assert torch.allclose(t["boxes"], expected.float())
        assert t["labels"].tolist() == [ds.cat_id_to_label[a["category_id"]] for a in anns]
        assert t["area"].tolist() == [a["area"] for a in anns] and t["iscrowd"].sum() == 0
        n_empty += len(anns) == 0
        short = min(CFG.height, CFG.width)
        assert has_object_of_interest(t, image.shape[-2:]) == any(a["area"] ** 0.5 >= 0.1 * short for a in anns)
    assert n_empty > 0, "empty images are kept by default"
    removed = coco_2017(coco_root, "val", "bbox", remove_images_without_annotations=True)
    assert len(removed) == N - n_empty


def test_segm_targets(coco_root):
    ds = coco_2017(coco_root, "val", "segm")
    for i in range(len(ds)):
        _, t = ds[i]
        masks = t["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(t["boxes"]), CFG.height, CFG.width)
        for m, box, area in zip(masks, t["boxes"], t["area"], strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert float(m.sum()) == float(area)
            assert box.tolist() == [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def test_keypoint_targets(coco_root):
    ds = coco_2017(coco_root, "val", "keypoints")
    assert ds.class_names == ["__background__", "person"] and ds.num_keypoints == len(KEYPOINT_NAMES)
    n_person = 0
    for i in range(len(ds)):
        _, t = ds[i]
        k = t["keypoints"]
        assert k.dtype == torch.float32 and k.shape == (len(t["boxes"]), len(KEYPOINT_NAMES), 3)
        assert (t["labels"] == 1).all()
        n_person += len(k)
    assert n_person > 0
    # keypoints from the instances file (category restricted) give the same targets
    inst = CocoDetection(coco_root / "val2017", coco_root / "annotations" / "instances_val2017.json", task="keypoints")
    for i in range(len(ds)):
        assert torch.equal(inst[i][1]["keypoints"], ds[i][1]["keypoints"])


def test_jpeg_quality_and_transforms(coco_root):
    png = coco_2017(coco_root, "val")[0][0]
    jpg = coco_2017(coco_root, "val", jpeg_quality=50)[0][0]
    diff = (png - jpg).abs()
    assert 0 < float(diff.mean()) < 0.05

    def flip(image, target):
        return image.flip(-1), dict(target, flipped=True)

    image, target = coco_2017(coco_root, "val", transforms=flip)[0]
    assert torch.equal(image, png.flip(-1)) and target["flipped"]
    with pytest.raises(ValueError):
        coco_2017(coco_root, "val", jpeg_quality=0)


def test_missing_coco_root_message(tmp_path):
    missing = tmp_path / "no_coco_here"
    with pytest.raises(FileNotFoundError) as err:
        coco_2017(missing, "val", "bbox")
    msg = str(err.value)
    assert str(missing / "val2017") in msg and "\n" not in msg and "download" in msg
    (missing / "train2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"person_keypoints_train2017\.json"):
        coco_2017(missing, "train", "keypoints")


def test_category_ids_option(coco_root):
    ds = coco_2017(coco_root, "val", "bbox", category_ids=[3, 2])
    assert ds.class_names == ["__background__", "triangle", "disc"]
    assert ds.cat_id_to_label == {3: 1, 2: 2}
    for i in range(len(ds)):
        assert set(ds[i][1]["labels"].tolist()) <= {1, 2}
    with pytest.raises(ValueError):
        coco_2017(coco_root, "val", "bbox", category_ids=[99])


def test_synthetic_coco_matches_disk_and_cocoeval_sanity(coco_root):
    mem = SyntheticCoco(N, seed=11, config=CFG, task="segm")
    disk = coco_2017(coco_root, "val", "segm")
    lazy = SyntheticCoco(3, seed=11, config=CFG, cache_images=False)
    assert len(mem) == len(disk) and mem.class_names == disk.class_names
    for i in range(3):
        (a, ta), (b, tb) = mem[i], disk[i]
        assert torch.equal(a, b) and torch.equal(lazy[i][0], a)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])

    # ground truth as detections -> AP 1.0
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": a["segmentation"],
        }
        for a in mem.coco.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = mem.coco.loadRes(dets)
        ev = COCOeval(mem.coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    assert mask_utils.area(dets[0]["segmentation"]) == mem.coco.anns[1]["area"]


def test_collate_and_objects_of_interest():
    images = [torch.zeros(3, 4, 4), torch.ones(3, 5, 5)]
    targets = [
        {"labels": torch.tensor([1, 3]), "area": torch.tensor([100.0, 400.0])},
        {"labels": torch.zeros(0, dtype=torch.int64), "area": torch.zeros(0)},
    ]
    imgs, tgts = collate_detection(list(zip(images, targets, strict=True)))
    assert isinstance(imgs, list) and isinstance(tgts, list) and imgs[1] is images[1] and tgts[0] is targets[0]
    # 160 px: an object of interest is >= 16 px across (sqrt of its visible area); 10 px and 20 px objects here
    assert MIN_OBJECT_FRACTION * 160 == 16
    assert objects_of_interest(targets[0], (160, 200)).tolist() == [False, True]
    assert has_object_of_interest(targets[0], (160, 200)) and not has_object_of_interest(targets[1], (160, 200))
    assert not has_object_of_interest(targets[0], (160, 200), label_ids=[1])  # the person is too small
    assert has_object_of_interest(targets[0], (160, 200), label_ids=[3])
    assert not has_object_of_interest(targets[0], (400, 400))  # the same pixels in a larger frame


def test_synthetic_coco_remove_empty_for_training():
    ds = SyntheticCoco(
        8, seed=2, config=SceneConfig(height=64, width=64, empty_ratio=0.5), remove_images_without_annotations=True
    )
    assert 0 < len(ds) < 8
    assert all(len(ds[i][1]["boxes"]) > 0 for i in range(len(ds)))
    assert np.all(np.diff(ds.ids) > 0)


def test_video_splits_are_frames_of_one_camera():
    """A ``type: video`` split is frames first_frame.. of one synthetic video, with that frame's annotations."""
    from splitdet.distill.dataset_config import build_dataset
    from splitdet.synthetic import SyntheticVideo

    section = {
        "type": "video",
        "scene": {"height": 48, "width": 64},
        "video": {"seed": 3, "empty_ratio": 0.5, "run_frames": [2, 4]},
        "train": {"first_frame": 5, "num_images": 4},
    }
    ds, info = build_dataset(section, "train")
    frames = list(SyntheticVideo(9, 3, SceneConfig(height=48, width=64), empty_ratio=0.5, run_frames=(2, 4)))
    assert len(ds) == 4 and info.class_names[1] == "person"
    for i in range(4):
        image, target = ds[i]
        frame, anns = frames[5 + i]
        assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(frame).permute(2, 0, 1))
        assert target["area"].tolist() == [a["area"] for a in anns]
