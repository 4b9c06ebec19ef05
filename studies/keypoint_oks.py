"""How strict keypoint AP is on the synthetic persons: ground-truth keypoints with pixel noise, scored by COCOeval.

    python -m studies.keypoint_oks [--images 300] [--config CONFIG] [--out studies/results/keypoint_oks]

Each ground-truth person of the Keypoint R-CNN validation set (the scenes of ``--config``, by default
``configs/teacher/synthetic-keypoint_rcnn-resnet18.yaml``) becomes a detection with its own keypoints moved by
Gaussian noise of a few pixels (score 1, exact box), scored with the OKS sigma :mod:`splitdet.distill.evaluate` uses.
OKS scales the tolerance by the object's area, and a stick figure's area (its mask) is a third of its box: this measures
how much of a Keypoint R-CNN's AP the metric itself takes, with the mask area and, for comparison, the box area as
the scale. ``--scene-defaults`` scores the default scenes instead (persons 1.25x the object extent of 0.15..0.6 of
the image side), the scale the first Keypoint R-CNN was trained on.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

from splitdet.benchmarks.paths import shown_args, write_report
from splitdet.distill.config import load_config
from splitdet.distill.dataset_config import scene_config
from splitdet.distill.datasets import coco_from_dict
from splitdet.distill.evaluate import DEFAULT_OKS_SIGMA, coco_eval
from splitdet.synthetic import PERSON_CATEGORY_ID, SceneConfig, build_coco_dict

JITTERS = (0.5, 1.0, 2.0, 3.0, 4.0)


def jittered_ap(d: dict, jitter: float, area: str, seed: int = 0) -> float:
    """Keypoint AP of the ground truth's own keypoints moved by N(0, jitter) px, OKS scaled by ``area``."""
    d = copy.deepcopy(d)
    if area == "box":
        for a in d["annotations"]:
            a["area"] = a["bbox"][2] * a["bbox"][3]
    rng = np.random.default_rng(seed)
    results = []
    for a in d["annotations"]:
        if a["category_id"] != PERSON_CATEGORY_ID:
            continue
        k = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
        k[:, :2] += rng.normal(0.0, jitter, size=(len(k), 2))
        k[:, 2] = 1.0
        results.append(
            {"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": k.ravel().tolist(), "score": 1.0}
        )
    return coco_eval(coco_from_dict(d), results, "keypoints", [PERSON_CATEGORY_ID])["AP"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.keypoint_oks", description=__doc__)
    p.add_argument("--images", type=int, default=300, help="validation scenes (default: %(default)s)")
    p.add_argument("--config", type=Path, default=Path("configs/teacher/synthetic-keypoint_rcnn-resnet18.yaml"))
    p.add_argument("--scene-defaults", action="store_true", help="default persons (x1.25), not the config's scene")
    p.add_argument("--out", type=Path, default=Path("studies/results/keypoint_oks"), help="output prefix")
    args = p.parse_args(argv)
    scene = scene_config(load_config(args.config).dataset.get("scene") or {})
    if args.scene_defaults:
        scene = SceneConfig(height=scene.height, width=scene.width, person_ratio=scene.person_ratio)
    d, _ = build_coco_dict(args.images, 2, scene)
    persons = [a for a in d["annotations"] if a["category_id"] == PERSON_CATEGORY_ID]
    fill = float(np.median([a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in persons]))
    size = float(np.median([a["area"] ** 0.5 for a in persons]))
    rows = [
        {"jitter_px": j, "ap_mask_area": jittered_ap(d, j, "mask"), "ap_box_area": jittered_ap(d, j, "box")}
        for j in JITTERS
    ]
    command = "python -m studies.keypoint_oks " + " ".join(shown_args(list(argv if argv is not None else sys.argv[1:])))
    result = {
        "command": command.strip(),
        "images": args.images,
        "persons": len(persons),
        "scene": {
            k: getattr(scene, k)
            for k in ("person_scale", "min_size_frac", "max_size_frac", "person_ratio", "person_facing_away")
        },
        "oks_sigma": DEFAULT_OKS_SIGMA,
        "median_mask_over_box_area": fill,
        "median_sqrt_mask_area_px": size,
        "rows": rows,
    }
    lines = [
        "# Keypoint AP of the ground truth moved by pixel noise",
        "",
        f"Command: `{result['command']}`. {len(persons)} persons in {args.images} validation scenes "
        f"({scene.width}x{scene.height}, seed 2; {result['scene']}), "
        f"OKS sigma {DEFAULT_OKS_SIGMA} for each of the 14 keypoints; exact boxes, score 1. A person's mask covers "
        f"{100 * fill:.0f} % of its box (median) and the square root of its mask area is {size:.0f} px (median).",
        "",
        "| keypoint noise (px, per axis) | keypoint AP, OKS scaled by mask area (as evaluated) | by box area |",
        "|---|---|---|",
        *(f"| {r['jitter_px']:g} | {100 * r['ap_mask_area']:.1f} | {100 * r['ap_box_area']:.1f} |" for r in rows),
        "",
    ]
    write_report(args.out, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
