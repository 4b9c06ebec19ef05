"""Deterministic synthetic COCO-format scenes for detection, segmentation and keypoints.

COCO and pretrained weights cannot be downloaded in every environment, so the project measures
itself on generated scenes: five shape classes plus a stick-figure ``person`` keypoint class on
cluttered, natural-looking backgrounds (multi-scale coloured value noise, lighting gradients,
striped/blobby texture regions) with *distractor* shapes that are not object classes (irregular
polygons, ellipses, bars, arcs, crescents, L/T shapes, polygons, scribbles). Objects have varied
size, colour (often close to the local background), rotation, texture and shading, cast soft
shadows and occlude each other; annotation masks are the *visible* masks.

Everything is a pure function of an integer seed (``numpy.random.Generator(PCG64(seed))``), so any
image of a dataset can be regenerated on its own: image ``i`` of a dataset seeded ``s`` uses
:func:`image_seed` ``(s, i)``.

CLI: ``python -m splitdet.synthetic write OUT_DIR -n 500 --seed 0 --split val`` writes a COCO-2017
style tree; ``python -m splitdet.synthetic montage OUT.png`` draws a montage with annotations.

Modules: :mod:`~splitdet.synthetic.categories` (classes, keypoints, skeleton), :mod:`~splitdet.synthetic.config`
(SceneConfig, seeds), :mod:`~splitdet.synthetic.raster` (low-level raster helpers), :mod:`~splitdet.synthetic.geometry`
(shapes, stick figure),
:mod:`~splitdet.synthetic.objects` (placed shapes, compositing, annotations), :mod:`~splitdet.synthetic.background`,
:mod:`~splitdet.synthetic.scene` (still scenes), :mod:`~splitdet.synthetic.coco` (COCO dicts and the on-disk writer),
:mod:`~splitdet.synthetic.video` (SyntheticVideo), :mod:`~splitdet.synthetic.draw` (annotation overlays),
:mod:`~splitdet.synthetic.cli`.
"""

from splitdet.synthetic.categories import (
    CATEGORIES,
    KEYPOINT_FLIP_INDEX,
    KEYPOINT_NAMES,
    PERSON_CATEGORY_ID,
    SHAPE_NAMES,
    SKELETON,
)
from splitdet.synthetic.coco import build_coco_annotations, build_coco_dict, build_video_coco_dict, write_coco_dataset
from splitdet.synthetic.config import SceneConfig, image_seed
from splitdet.synthetic.scene import iter_scenes, render_scene
from splitdet.synthetic.video import SyntheticVideo

__all__ = [
    "CATEGORIES",
    "KEYPOINT_FLIP_INDEX",
    "KEYPOINT_NAMES",
    "PERSON_CATEGORY_ID",
    "SHAPE_NAMES",
    "SKELETON",
    "SceneConfig",
    "SyntheticVideo",
    "build_coco_annotations",
    "build_coco_dict",
    "build_video_coco_dict",
    "image_seed",
    "iter_scenes",
    "render_scene",
    "write_coco_dataset",
]
