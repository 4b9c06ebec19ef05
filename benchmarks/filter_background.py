"""How well "the frame differs from the empty background" separates empty frames from frames with objects, on one
fixed camera: the signal a stateful filter would use, measured before building one.

    python -m benchmarks.filter_background [--config configs/filter/synthetic-camera.yaml] [--train-frames 600]

Each frame's stem (the demo head's, as the device computes it) is compared with a background stem: the mean squared
difference over channels, averaged over 4x4 stem cells, and its maximum over the frame is the score. Two
backgrounds: a **fixed** one (the mean stem of the empty frames among the first ``--train-frames`` of the config's
train clip) and a **running** one (an exponential moving average, rate 0.1, of the earlier frames of the same clip
that hold no object of interest). The running one is updated with the ground truth, i.e. as if every frame's
emptiness were known at once: an upper bound for a device that learns it from the server's answers. Scored on the
config's calibration and val clips: ROC AUC, and the share of empty frames skipped at 99 % of the frames with objects
kept, at the clip's own threshold and, for val, at the threshold chosen on calibration.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.paths import shown_args
from common.checkpoint import load_checkpoint
from common.demo import DEMO_CHECKPOINT
from common.split import Head
from distill.config import load_config
from distill.dataset_config import build_dataset
from distill.datasets import has_object_of_interest
from distill.evaluate import object_labels
from distill.filter_training import choose_threshold, skip_rates

RESULTS = Path("benchmarks/results")
EMA_RATE = 0.1
CELL = 4  #: stem pixels per side of a scored cell (16 input pixels)


@torch.no_grad()
def stems(head: Head, dataset, arch: str, count: int | None = None) -> tuple[Tensor, np.ndarray]:
    """Stems ``[N, 64, h, w]`` and whether each frame holds an object of interest (for a detector of ``arch``)."""
    labels = object_labels(arch, list(dataset.class_names))
    out, positive = [], []
    for i in range(len(dataset) if count is None else min(count, len(dataset))):
        image, target = dataset[i]
        out.append(head.stem(head.preprocess([image])[0])[0])
        positive.append(has_object_of_interest(target, tuple(image.shape[-2:]), labels))
    return torch.stack(out), np.array(positive, dtype=bool)


def score(stem: Tensor, background: Tensor) -> float:
    """Largest mean squared difference over a ``CELL`` x ``CELL`` cell."""
    d = ((stem - background) ** 2).mean(0)[None, None]
    return float(torch.nn.functional.avg_pool2d(d, CELL).amax())


def fixed_scores(clip: Tensor, background: Tensor) -> np.ndarray:
    return np.array([score(s, background) for s in clip])


def running_scores(clip: Tensor, positive: np.ndarray, start: Tensor) -> np.ndarray:
    background, out = start.clone(), []
    for s, has_object in zip(clip, positive, strict=True):
        out.append(score(s, background))
        if not has_object:
            background.mul_(1 - EMA_RATE).add_(EMA_RATE * s)
    return np.array(out)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.filter_background", description=__doc__)
    p.add_argument("--config", default="configs/filter/synthetic-camera.yaml", help="default: %(default)s")
    p.add_argument("--train-frames", type=int, default=600, help="frames of the train clip (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS / "filter_background", help="default: %(default)s")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    config = load_config(args.config)
    demo = load_checkpoint(DEMO_CHECKPOINT)
    head, arch = Head(demo.build_model().eval()), demo.config.arch
    train, train_positive = stems(head, build_dataset(config.dataset, "train")[0], arch, args.train_frames)
    fixed = train[torch.from_numpy(~train_positive)].mean(0)
    rows = []
    thresholds: dict[str, float] = {}
    for split in ("calibration", "val"):
        clip, positive = stems(head, build_dataset(config.dataset, split)[0], arch)
        for name, scores in (
            ("fixed background", fixed_scores(clip, fixed)),
            ("running background (ground-truth updates)", running_scores(clip, positive, fixed)),
        ):
            own = choose_threshold(scores, positive, 0.99)
            thresholds.setdefault(name, own)  # calibration comes first: its threshold is the one val is scored at
            row = {
                "background": name,
                "split": split,
                "frames": len(clip),
                "auc": auc(scores, positive),
                "skipped_at_own_threshold": skip_rates(scores, positive, own),
                "skipped_at_calibration_threshold": skip_rates(scores, positive, thresholds[name]),
            }
            rows.append(row)
            print(name, split, f"AUC {row['auc']:.3f}", row["skipped_at_own_threshold"])
    report = {
        "command": " ".join(["python -m benchmarks.filter_background", *shown_args(list(argv or sys.argv[1:]))]),
        "machine": f"{platform.machine()}, 1 torch thread, CPU",
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        "# Difference from the empty background as a presence signal (one fixed camera)",
        "",
        f"Command: `{report['command']}` ({report['machine']}, {report['wall_s']:.0f} s). Score: the largest "
        f"{CELL}x{CELL}-cell mean squared difference between the frame's stem and a background stem. The running "
        "background is updated with the ground truth (an upper bound for a device that learns emptiness from the "
        "server's answers).",
        "",
        "| background | clip | frames | ROC AUC | empty skipped at 99 % recall (clip's own threshold) | lost | "
        "empty skipped at the calibration threshold | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        own, cal = r["skipped_at_own_threshold"], r["skipped_at_calibration_threshold"]
        lines.append(
            f"| {r['background']} | {r['split']} | {r['frames']} | {r['auc']:.3f} | "
            f"{100 * own['empty_frames_skipped']:.1f} % | {100 * own['object_frames_wrongly_skipped']:.1f} % | "
            f"{100 * cal['empty_frames_skipped']:.1f} % | {100 * cal['object_frames_wrongly_skipped']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
