"""The neural filter on frames it has never seen: skipped empty frames against lost frames with objects.

    python -m studies.filter_curve [--ckpt A.pt B.pt ...] [--config configs/filter/synthetic-demo.yaml]

For each checkpoint's filter and for the whole detector used as a presence test (its highest detection score per
frame, the reference a filter has to approach), on the config's ``val`` split: the curve over the threshold, and the
operating point at the threshold chosen on the ``calibration`` split for ``train.target_recall`` of the frames with
objects of interest (what ``split-distill`` does). P(object) is computed by :class:`splitdet.common.split.Head`, as on
the device. Also: the detector's recall by object size (why the object-of-interest rule is what it is), the filter's
cost against the head's (multiply-adds), and a contact sheet of the hardest frames.
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision.ops import box_iou

from splitdet.benchmarks.paths import shown_args, shown_path, write_report
from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.demo import DEMO_CHECKPOINT
from splitdet.common.split import Head
from splitdet.distill.config import load_config
from splitdet.distill.dataset_config import build_dataset
from splitdet.distill.datasets import MIN_OBJECT_FRACTION, has_object_of_interest, objects_of_interest
from splitdet.distill.evaluate import object_labels
from splitdet.distill.filter_training import choose_threshold, frame_probabilities, skip_rates

CONFIG = "configs/filter/synthetic-demo.yaml"
RESULTS = Path("studies/results")
DEFAULT_CKPTS = ("runs/filter-synthetic-faster_rcnn-resnet18-b3ch/final.pt", str(DEMO_CHECKPOINT))
SIZE_BINS = (0.0, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 1.01)  #: sqrt(visible area) / shorter side


def conv_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of ``module``'s convolutions and linear layers on input ``x``."""
    total = 0

    def count(m: nn.Module, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return total


@torch.no_grad()
def detector_scores(
    model: nn.Module, dataset, label_ids: list[int] | None
) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
    """Highest detection score per frame (of the wanted labels), whether each frame holds an object of interest,
    and per ground-truth object the best score of a detection of its class at IoU >= 0.5 (0 when none)."""
    best_per_frame, positive, best_per_object = [], [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        det = model([image])[0]
        keep = torch.ones_like(det["scores"], dtype=torch.bool)
        if label_ids is not None:
            keep = torch.isin(det["labels"], torch.tensor(label_ids))
        scores = det["scores"][keep]
        best_per_frame.append(float(scores.max()) if len(scores) else 0.0)
        positive.append(has_object_of_interest(target, tuple(image.shape[-2:]), label_ids))
        found = []
        boxes = torch.as_tensor(target["boxes"]).reshape(-1, 4)
        for box, label in zip(boxes, torch.as_tensor(target["labels"]).tolist(), strict=True):
            same = det["labels"] == label
            iou = box_iou(box[None], det["boxes"][same])[0] if same.any() else torch.zeros(0)
            ok = iou >= 0.5
            found.append(float(det["scores"][same][ok].max()) if ok.any() else 0.0)
        best_per_object.append(found)
    return np.array(best_per_frame), np.array(positive, dtype=bool), best_per_object


def recall_by_size(dataset, found: list[list[float]]) -> list[dict]:
    """The detector's recall (score >= 0.5, IoU >= 0.5) by sqrt(visible area) / shorter side."""
    sizes, hits = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        short = min(image.shape[-2:])
        sizes += (torch.as_tensor(target["area"]).sqrt() / short).tolist()
        hits += [s >= 0.5 for s in found[i]]
    sizes, hits = np.array(sizes), np.array(hits)
    rows = []
    for lo, hi in itertools.pairwise(SIZE_BINS):
        m = (sizes >= lo) & (sizes < hi)
        rows.append(
            {
                "from": lo,
                "to": min(hi, 1.0),
                "objects": int(m.sum()),
                "recall": float(hits[m].mean()) if m.any() else None,
            }
        )
    return rows


def curve(probs: np.ndarray, positive: np.ndarray) -> list[dict]:
    """(share of frames with objects lost, share of empty frames skipped) at every distinct threshold."""
    points = []
    for t in np.unique(np.concatenate([probs, [np.inf]])):
        rates = skip_rates(probs, positive, float(t))
        points.append(
            {
                "threshold": float(t),
                "lost": rates["object_frames_wrongly_skipped"],
                "skipped": rates["empty_frames_skipped"],
            }
        )
    return points


def skipped_at_lost(points: list[dict], lost: float) -> float:
    """The most empty frames skipped while losing at most ``lost`` of the frames with objects."""
    return max((p["skipped"] for p in points if p["lost"] <= lost + 1e-12), default=0.0)


def contact_sheet(dataset, probs: np.ndarray, positive: np.ndarray, label_ids, out: Path, count: int = 8) -> None:
    """The ``count`` lowest-scored frames with objects of interest (top row) and highest-scored empty frames (bottom
    row); objects of interest boxed red, smaller ones yellow; P(object) under each."""
    rows = [
        np.where(positive)[0][np.argsort(probs[positive])][:count],
        np.where(~positive)[0][np.argsort(-probs[~positive])][:count],
    ]
    tile = 160
    sheet = Image.new("RGB", (count * (tile + 4), 2 * (tile + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, indices in enumerate(rows):
        for c, i in enumerate(indices):
            image, target = dataset[int(i)]
            pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            scale = tile / max(pil.size)
            pil = pil.resize((round(pil.width * scale), round(pil.height * scale)))
            d = ImageDraw.Draw(pil)
            wanted = objects_of_interest(target, tuple(image.shape[-2:]), label_ids).tolist()
            for box, ok in zip(torch.as_tensor(target["boxes"]).reshape(-1, 4).tolist(), wanted, strict=True):
                d.rectangle([v * scale for v in box], outline=(255, 0, 0) if ok else (255, 210, 0))
            x, y = c * (tile + 4), r * (tile + 18)
            sheet.paste(pil, (x, y))
            draw.text((x + 2, y + tile + 2), f"P(object) {probs[i]:.3f}", fill=(0, 0, 0))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(out)


def plot(curves: dict[str, list[dict]], points: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, pts in curves.items():
        line = ax.plot([100 * p["lost"] for p in pts], [100 * p["skipped"] for p in pts], label=name)[0]
        op = points[name]
        ax.plot(
            [100 * op["object_frames_wrongly_skipped"]], [100 * op["empty_frames_skipped"]], "o", color=line.get_color()
        )
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(90.0, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 20)
    ax.set_ylim(0, 100)
    ax.set_xlabel("frames with objects of interest lost (%)")
    ax.set_ylabel("empty frames skipped (%)")
    ax.set_title("Neural filter on held-out frames (dots: threshold chosen on calibration)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.filter_curve", description=__doc__)
    p.add_argument(
        "--ckpt", nargs="+", default=list(DEFAULT_CKPTS), help="checkpoints with a filter (default: %(default)s)"
    )
    p.add_argument("--config", default=CONFIG, help="its calibration and val splits are used (default: %(default)s)")
    p.add_argument(
        "--detector", default=str(DEMO_CHECKPOINT), help="whole model used as a presence test (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "filter_curve", help="output prefix (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    config = load_config(args.config)
    calibration, info = build_dataset(config.dataset, "calibration")
    val, _ = build_dataset(config.dataset, "val")
    recall = config.target_recall
    curves, points, costs = {}, {}, {}
    val_probs = {}
    for path in args.ckpt:
        ckpt = load_checkpoint(path)
        if not ckpt.config.with_filter:
            print(f"filter_curve: error: {path} has no neural filter", file=sys.stderr)
            return 2
        model = ckpt.build_model().eval()
        head = Head(model)
        labels = object_labels(ckpt.config.arch, list(info.class_names))
        cal_p, cal_pos = frame_probabilities(head, calibration, labels)
        v_p, v_pos = frame_probabilities(head, val, labels)
        name = f"{ckpt.config.filter_arch} filter ({shown_path(path)})"
        threshold = choose_threshold(cal_p, cal_pos, recall)
        curves[name] = curve(v_p, v_pos)
        points[name] = {"threshold": threshold, **skip_rates(v_p, v_pos, threshold)}
        x = head.preprocess([val[0][0]])[0]
        stem = head.stem(x)
        costs[name] = {
            "filter_macs": conv_macs(model.neural_filter, stem),
            "head_macs": conv_macs(head.stem, x) + conv_macs(head.encoder, stem),
        }
        val_probs[name] = (v_p, v_pos, labels)
    detector = load_checkpoint(args.detector)
    model = detector.build_model().eval()
    labels = object_labels(detector.config.arch, list(info.class_names))
    cal_s, cal_pos, _ = detector_scores(model, calibration, labels)
    v_s, v_pos, found = detector_scores(model, val, labels)
    name = f"whole detector, max score ({shown_path(args.detector)})"
    threshold = choose_threshold(cal_s, cal_pos, recall)
    curves[name] = curve(v_s, v_pos)
    points[name] = {"threshold": threshold, **skip_rates(v_s, v_pos, threshold)}
    sizes = recall_by_size(val, found)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(val_probs))
    contact_sheet(
        val, val_probs[first][0], val_probs[first][1], val_probs[first][2], out.with_name(out.name + "_hardest.png")
    )
    plot(curves, points, out.with_suffix(".png"))
    result = {
        "command": "python -m studies.filter_curve " + " ".join(shown_args(sys.argv[1:] if argv is None else argv)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU",
        "config": shown_path(args.config),
        "target_recall": recall,
        "calibration_frames": len(calibration),
        "val_frames": len(val),
        "min_object_fraction": MIN_OBJECT_FRACTION,
        "operating_points": points,
        "skipped_at_lost": {
            n: {f"{q:g}": skipped_at_lost(c, q) for q in (0.01, 0.02, 0.05)} for n, c in curves.items()
        },
        "costs": costs,
        "detector_recall_by_size": sizes,
        "curves": curves,
        "seconds": round(time.time() - t0),
    }
    write_report(out, result, report(result, out))
    return 0


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def report(r: dict, out: Path) -> str:
    lines = [
        "# Neural filter: empty frames skipped against frames with objects lost",
        "",
        f"Command: `{r['command']}` ({r['machine']}, {r['seconds']} s).",
        "",
        f"Frames: the `val` split of `{r['config']}` ({r['val_frames']} frames, never seen in training or for the "
        f"threshold); thresholds chosen on its `calibration` split ({r['calibration_frames']} frames) for "
        f"{100 * r['target_recall']:g} % of the frames with objects of interest. An object of interest is one whose "
        f"visible area's square root is at least {100 * r['min_object_fraction']:g} % of the image's shorter side; "
        "frames without one count as empty.",
        "",
        "| filter | threshold | empty frames | skipped | frames with objects | lost "
        "| skipped at <= 1 % lost | at <= 2 % | at <= 5 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, op in r["operating_points"].items():
        s = r["skipped_at_lost"][name]
        lines.append(
            f"| {name} | {op['threshold']:.4f} | {op['empty_frames']} | {_pct(op['empty_frames_skipped'])} | "
            f"{op['frames_with_objects']} | {_pct(op['object_frames_wrongly_skipped'])} | {_pct(s['0.01'])} | "
            f"{_pct(s['0.02'])} | {_pct(s['0.05'])} |"
        )
    goal_met = [
        n
        for n, op in r["operating_points"].items()
        if op["empty_frames_skipped"] >= 0.9 and op["object_frames_wrongly_skipped"] <= 0.01
    ]
    lines += [
        "",
        'The "skipped at <= x % lost" columns read the val curve itself (an oracle threshold): the bound a '
        "perfectly calibrated threshold would reach.",
        "",
        "Goal (>= 90 % of empty frames skipped at <= 1 % of frames with objects lost): "
        + (f"met by {', '.join(goal_met)}." if goal_met else "not met by any filter here, nor by the whole detector."),
        "",
        "Cost on the device (multiply-adds of convolutions and linear layers, one frame of the val split):",
        "",
        "| filter | filter MACs | head MACs (stem + encoder) | filter / head |",
        "|---|---|---|---|",
    ]
    for name, c in r["costs"].items():
        share = 100 * c["filter_macs"] / c["head_macs"]
        lines.append(f"| {name} | {c['filter_macs'] / 1e6:.1f} M | {c['head_macs'] / 1e6:.1f} M | {share:.1f} % |")
    lines += [
        "",
        "The whole detector's recall (a detection of the right class with IoU >= 0.5 and score >= 0.5) by object size "
        "(square root of the visible area over the shorter side), on the same val frames:",
        "",
        "| size | objects | recall |",
        "|---|---|---|",
    ]
    for row in r["detector_recall_by_size"]:
        lines.append(f"| {row['from']:.3f} - {row['to']:.3f} | {row['objects']} | {_pct(row['recall'])} |")
    lines += [
        "",
        f"Curve: `{out.with_suffix('.png').name}`. Hardest frames for the first filter: "
        f"`{out.name}_hardest.png` (top: the lowest-scored frames with objects of interest; bottom: the highest-scored "
        "empty frames; red boxes are objects of interest, yellow ones smaller objects).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
