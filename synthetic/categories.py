"""Categories of the synthetic scenes: shape classes, the ``person`` keypoint class and its skeleton."""

from __future__ import annotations

#: Object shape classes (category ids 2..6, in this order).
SHAPE_NAMES: tuple[str, ...] = ("disc", "triangle", "star", "ring", "cross")

#: COCO-style keypoint names of the ``person`` stick figure ("left" = the person's left side).
KEYPOINT_NAMES: list[str] = [
    "head",
    "neck",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]

#: Skeleton as 1-based keypoint index pairs, like COCO's ``person_keypoints`` file.
SKELETON: list[list[int]] = [
    [1, 2],
    [2, 3],
    [2, 4],
    [3, 5],
    [5, 7],
    [4, 6],
    [6, 8],
    [3, 9],
    [4, 10],
    [9, 10],
    [9, 11],
    [11, 13],
    [10, 12],
    [12, 14],
]

#: 0-based index of the mirrored keypoint (for horizontal-flip augmentation).
KEYPOINT_FLIP_INDEX: list[int] = [0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12]

#: Category id of the keypoint class (1, as in COCO).
PERSON_CATEGORY_ID: int = 1

#: COCO ``categories`` list: person (with ``keypoints``/``skeleton``) then the shape classes.
CATEGORIES: list[dict] = [
    {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(p) for p in SKELETON],
    },
    *({"id": i + 2, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_NAMES)),
]

SHAPE_CATEGORY_ID = {name: i + 2 for i, name in enumerate(SHAPE_NAMES)}
DISTRACTOR_KINDS = ("polygon", "blob", "ellipse", "bar", "ngon", "arc", "crescent", "lshape", "scribble")
