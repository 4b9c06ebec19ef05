"""Where a Keypoint R-CNN misplaces keypoints: the pixel error of each keypoint on the persons it finds.

    python -m studies.keypoint_errors --ckpt runs/teacher-synthetic-keypoint_rcnn-resnet18/final.pt \\
        [--config configs/teacher/synthetic-keypoint_rcnn-resnet18.yaml] [--images 300] [--out OUT]

Each ground-truth person of the config's val scenes is matched to the detection (score >= 0.5) with the highest box
IoU, when it is >= 0.5; for its labelled keypoints (visible or occluded), the distance in pixels between the
detection's keypoint and the ground truth. Reports the median and 90th percentile per keypoint and by visibility,
and how many persons have a median error above 10 px (placed wrong as a whole). Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from splitdet.benchmarks.paths import shown_args, shown_path, write_report
from splitdet.common.checkpoint import load_checkpoint
from splitdet.distill.config import load_config
from splitdet.distill.dataset_config import build_dataset

SCORE = 0.5
WRONG_PX = 10.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.keypoint_errors", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="a Keypoint R-CNN checkpoint")
    p.add_argument("--config", default="configs/teacher/synthetic-keypoint_rcnn-resnet18.yaml")
    p.add_argument("--images", type=int, default=300, help="val scenes (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("studies/results/keypoint_errors"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.ckpt)
    model = checkpoint.build_model().eval()
    dataset, info = build_dataset(load_config(args.config).dataset, "val")
    names = info.keypoint_names
    per_keypoint: list[list[float]] = [[] for _ in names]
    by_visibility: dict[int, list[float]] = {1: [], 2: []}
    person_medians = []
    with torch.inference_mode():
        for i in range(min(args.images, len(dataset))):
            image, target = dataset[i]
            if len(target["boxes"]) == 0:
                continue
            det = model([image])[0]
            keep = det["scores"] >= SCORE
            if not keep.any():
                continue
            iou = box_iou(target["boxes"], det["boxes"][keep])
            for g in range(len(target["boxes"])):
                j = int(iou[g].argmax())
                if iou[g, j] < 0.5:
                    continue
                truth, found = target["keypoints"][g], det["keypoints"][keep][j]
                labelled = truth[:, 2] > 0
                if not labelled.any():
                    continue
                error = (truth[:, :2] - found[:, :2]).norm(dim=1)
                for k in np.flatnonzero(labelled.numpy()):
                    per_keypoint[k].append(float(error[k]))
                    by_visibility[int(truth[k, 2])].append(float(error[k]))
                person_medians.append(float(error[labelled].median()))

    def stats(values: list[float]) -> dict:
        return {"n": len(values), "median_px": float(np.median(values)), "p90_px": float(np.percentile(values, 90))}

    report = {
        "command": " ".join(["python -m studies.keypoint_errors", *shown_args(list(argv or sys.argv[1:]))]),
        "ckpt": shown_path(args.ckpt),
        "persons_matched": len(person_medians),
        "persons_wrong": int(sum(m > WRONG_PX for m in person_medians)),
        "keypoints": {name: stats(v) for name, v in zip(names, per_keypoint, strict=True) if v},
        "visible": stats(by_visibility[2]),
        "occluded": stats(by_visibility[1]),
    }
    lines = [
        "# Keypoint errors in pixels",
        "",
        f"Command: `{report['command']}`. {report['persons_matched']} persons matched (box IoU >= 0.5, score >= "
        f"{SCORE}); {report['persons_wrong']} of them have a median keypoint error above {WRONG_PX:g} px.",
        "",
        "| keypoint | labelled | median px | p90 px |",
        "|---|---|---|---|",
        *(f"| {k} | {s['n']} | {s['median_px']:.1f} | {s['p90_px']:.1f} |" for k, s in report["keypoints"].items()),
        f"| all visible | {report['visible']['n']} | {report['visible']['median_px']:.1f} | "
        f"{report['visible']['p90_px']:.1f} |",
        f"| all occluded | {report['occluded']['n']} | {report['occluded']['median_px']:.1f} | "
        f"{report['occluded']['p90_px']:.1f} |",
        "",
    ]
    write_report(args.out, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
