"""Synthetic COCO-format scene generator: determinism, annotation consistency, video stream."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from splitdet.synthetic import (
    CATEGORIES,
    KEYPOINT_FLIP_INDEX,
    KEYPOINT_NAMES,
    PERSON_CATEGORY_ID,
    SKELETON,
    SceneConfig,
    SyntheticVideo,
    build_coco_dict,
    image_seed,
    render_scene,
)

SEEDS = range(24)


@pytest.fixture(scope="module")
def scenes():
    """A batch of busy scenes (more objects, more persons) shared by the consistency tests."""
    cfg = SceneConfig(min_objects=2, max_objects=5, empty_ratio=0.0, person_ratio=0.5)
    return cfg, [render_scene(s, cfg) for s in SEEDS]


def test_categories_and_skeleton():
    ids = [c["id"] for c in CATEGORIES]
    assert ids == list(range(1, len(CATEGORIES) + 1))
    person = next(c for c in CATEGORIES if c["id"] == PERSON_CATEGORY_ID)
    assert person["name"] == "person" and person["keypoints"] == KEYPOINT_NAMES
    assert 13 <= len(KEYPOINT_NAMES) <= 15
    k = len(KEYPOINT_NAMES)
    assert all(len(p) == 2 and 1 <= p[0] <= k and 1 <= p[1] <= k for p in SKELETON)
    assert sorted(KEYPOINT_FLIP_INDEX) == list(range(k))
    assert all(KEYPOINT_FLIP_INDEX[KEYPOINT_FLIP_INDEX[i]] == i for i in range(k))
    assert sum(1 for c in CATEGORIES if "keypoints" in c) == 1


def test_same_seed_same_scene_different_seed_different():
    img_a, anns_a = render_scene(7)
    img_b, anns_b = render_scene(7)
    img_c, _ = render_scene(8)
    assert img_a.mode == "RGB" and img_a.size == (160, 160)
    assert img_a.tobytes() == img_b.tobytes()
    assert anns_a == anns_b
    assert img_a.tobytes() != img_c.tobytes()


def test_image_seed_is_a_hash_of_seed_and_index():
    assert image_seed(0, 1) == image_seed(0, 1)
    assert len({image_seed(0, i) for i in range(50)} | {image_seed(1, i) for i in range(50)}) == 100
    d, images = build_coco_dict(3, seed=5)
    img, anns = render_scene(image_seed(5, 2))
    assert images[2].tobytes() == img.tobytes()
    assert [a["bbox"] for a in d["annotations"] if a["image_id"] == 3] == [a["bbox"] for a in anns]


def test_not_trivial_backgrounds():
    """Backgrounds are textured clutter, not a flat colour."""
    cfg = SceneConfig(empty_ratio=1.0)
    for s in range(4):
        arr = np.asarray(render_scene(s, cfg)[0], dtype=np.float32)
        assert arr.std(axis=(0, 1)).mean() > 8.0
        assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 2000


def test_masks_boxes_areas_consistent_and_occlusion(scenes):
    cfg, items = scenes
    n_overlapping_boxes = 0
    for img, anns in items:
        assert anns, "empty_ratio=0 must give at least one annotation"
        union = np.zeros((cfg.height, cfg.width), dtype=np.int32)
        for a in anns:
            assert set(a) >= {"category_id", "bbox", "area", "iscrowd", "segmentation"}
            assert "id" not in a and "image_id" not in a and a["iscrowd"] == 0
            assert isinstance(a["segmentation"]["counts"], str)
            m = mask_utils.decode(a["segmentation"])
            assert m.shape == (img.height, img.width)
            ys, xs = np.nonzero(m)
            assert a["area"] == float(m.sum()) >= cfg.min_visible_area
            assert a["bbox"] == [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]
            union += m
        assert union.max() <= 1, "visible masks of different objects must be disjoint"
        boxes = [a["bbox"] for a in anns]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                n_overlapping_boxes += x0 < x1 + w1 and x1 < x0 + w0 and y0 < y1 + h1 and y1 < y0 + h0
    assert n_overlapping_boxes > 0, "scenes should contain overlapping (occluding) objects"


def test_keypoints_flags(scenes):
    cfg, items = scenes
    k = len(KEYPOINT_NAMES)
    seen = {0: 0, 1: 0, 2: 0}
    n_person = 0
    for _img, anns in items:
        for a in anns:
            if a["category_id"] != PERSON_CATEGORY_ID:
                assert "keypoints" not in a
                continue
            n_person += 1
            kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(k, 3)
            assert set(kp[:, 2].tolist()) <= {0.0, 1.0, 2.0}
            assert a["num_keypoints"] == int((kp[:, 2] > 0).sum())
            m = mask_utils.decode(a["segmentation"])
            for x, y, v in kp:
                seen[int(v)] += 1
                if v == 0:
                    assert x == 0 and y == 0
                else:
                    assert 0 <= x < cfg.width and 0 <= y < cfg.height
                if v == 2:
                    assert m[int(y), int(x)] == 1, "a visible keypoint lies on the person's visible mask"
    assert n_person >= 5
    assert seen[2] > seen[1] > 0, seen


def test_empty_ratio_extremes():
    for s in range(8):
        assert render_scene(s, SceneConfig(empty_ratio=1.0))[1] == []
        assert len(render_scene(s, SceneConfig(empty_ratio=0.0))[1]) >= 1


def test_object_classes_all_appear(scenes):
    _, items = scenes
    cats = {a["category_id"] for _, anns in items for a in anns}
    assert cats == {c["id"] for c in CATEGORIES}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_objects": 3, "max_objects": 2},
        {"height": 0},
        {"width": -5},
        {"empty_ratio": 1.5},
        {"empty_ratio": -0.1},
        {"person_ratio": 2.0},
        {"person_scale": 0.0},
        {"min_size_frac": 0.0},
        {"min_size_frac": 0.7, "max_size_frac": 0.5},
        {"min_distractors": 5, "max_distractors": 1},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match="SceneConfig"):
        SceneConfig(**kwargs)


def test_bad_seed_raises():
    with pytest.raises(ValueError):
        render_scene(-1)


def test_coco_dict_structure():
    d, images = build_coco_dict(4, seed=3, file_prefix="syn_")
    assert len(images) == len(d["images"]) == 4
    assert [i["id"] for i in d["images"]] == [1, 2, 3, 4]
    assert d["images"][0]["file_name"] == "syn_000000000001.png"
    assert [a["id"] for a in d["annotations"]] == list(range(1, len(d["annotations"]) + 1))
    assert d["categories"] == CATEGORIES


VIDEO_CFG = SceneConfig(height=96, width=128)


def test_video_len_determinism_motion_and_empty_frames():
    video = SyntheticVideo(45, seed=3, config=VIDEO_CFG)
    assert len(video) == 45
    frames = list(video)
    again = list(SyntheticVideo(45, seed=3, config=VIDEO_CFG))
    assert len(frames) == 45
    assert all(f.dtype == np.uint8 and f.shape == (96, 128, 3) for f, _ in frames)
    assert all(np.array_equal(f, g) and a == b for (f, a), (g, b) in zip(frames, again, strict=True))
    empty = [i for i, (_, anns) in enumerate(frames) if not anns]
    assert empty, "the stream must contain empty frames"
    assert set(video.empty_frames) <= set(empty)
    moved = 0
    for (_, a), (_, b) in itertools.pairwise(frames):
        boxes_a = {x["track_id"]: x["bbox"] for x in a}
        boxes_b = {x["track_id"]: x["bbox"] for x in b}
        moved += sum(boxes_a[t] != boxes_b[t] for t in boxes_a.keys() & boxes_b.keys())
    assert moved > 10, "objects must move between consecutive frames"
    other = next(iter(SyntheticVideo(2, seed=4, config=VIDEO_CFG)))[0]
    assert not np.array_equal(frames[0][0], other)


def test_video_static_stretches_change_only_by_sensor_noise():
    assert SyntheticVideo(60, seed=3, config=VIDEO_CFG).static_frames == []
    video = SyntheticVideo(60, seed=3, config=VIDEO_CFG, static_ratio=0.5)
    frames = list(video)
    static = set(video.static_frames)
    assert 0 < len(static) < 60 and 0 not in static
    still, moving = [], []
    for t in range(1, 60):
        (before, a), (image, b) = frames[t - 1], frames[t]
        diff = np.abs(image.astype(np.float32) - before).mean()
        if t not in static:
            moving.append(diff)
        elif {x["track_id"] for x in a} == {x["track_id"] for x in b}:  # no object entered or left
            assert a == b, f"frame {t}: nothing may move in a static stretch"
            assert diff > 0, f"frame {t}: the sensor noise still changes"
            still.append(diff)
    assert still and np.mean(still) < np.mean(moving)


def test_video_background_drifts_slowly():
    frames = [
        f.astype(np.float32)
        for f, _ in SyntheticVideo(6, seed=1, config=SceneConfig(height=96, width=128, empty_ratio=1.0))
    ]
    diffs = [np.abs(a - b).mean() for a, b in itertools.pairwise(frames)]
    assert all(d < 25 for d in diffs)
