"""``--skip-static``: bytes saved and the fidelity of reused detections, at a few thresholds.

    python -m studies.skip_static [--frames 240] [--static-ratio 0.5] [--thresholds 0,0.03,0.04,0.06,0.1] \\
        [--out studies/results/skip_static]

An edge server runs in this process (the bundled demo checkpoint unless ``--ckpt``) and ``mobile-client`` itself
(:func:`splitdet.mobile_client.cli.main`: its command line, pipeline and report) streams the synthetic video with static
stretches (``--static-ratio``: nothing moves, only the sensor noise changes) once per threshold, pipelined
(``--window``). Threshold 0 sends every frame: its detections scoring >= 0.5 are the ground truth (what the server
would have answered for every frame) against which each run's per-frame output, fresh or reused, is scored with
:func:`splitdet.distill.evaluate.coco_eval` (bbox AP@[.5:.95] and AP50, "fidelity AP"), over all frames and over the
reused frames alone. The client reports detections down to score 0.05 so that AP has a ranking to work with.

A calibration table gives the change measure (:func:`splitdet.mobile_client.static.change`) of every frame against the
frame before it, from the same head, for the frames of the static stretches (those where only the sensor noise changed
and those where objects entered or left) and for the others; the answer for the frame before, scored as the answer for a
frame where only the noise changed, is the floor a reused frame can be held to.

Writes ``OUT.md`` (the command and the machine at the top) and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from splitdet.benchmarks.paths import shown_args, shown_path, write_report

GT_SCORE = 0.5  #: the threshold-0 run's detections at or above this score are the ground truth
REPORT_SCORE = 0.05  #: the client reports detections down to this score in every run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studies.skip_static", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="checkpoint for both sides (default: the bundled demo checkpoint)")
    p.add_argument("--frames", type=int, default=240, help="synthetic frames per run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default: %(default)s)")
    p.add_argument(
        "--static-ratio", type=float, default=0.5, help="share of frames in static stretches (default: %(default)s)"
    )
    p.add_argument(
        "--thresholds",
        default="0,0.03,0.04,0.06,0.1",
        help="--skip-static values, comma-separated; 0 (off, every frame sent) is always run first "
        "(default: %(default)s)",
    )
    p.add_argument("--skip-static-max", type=int, default=30, help="--skip-static-max (default: %(default)s)")
    p.add_argument("--window", type=int, default=4, help="client --window (default: %(default)s)")
    p.add_argument(
        "--out", default="studies/results/skip_static", help="writes OUT.md and OUT.json (default: %(default)s)"
    )
    args = p.parse_args(argv)
    args.thresholds = sorted({0.0, *(float(t) for t in args.thresholds.split(","))})
    if args.frames < 2 or not 0.0 <= args.static_ratio <= 1.0 or min(args.thresholds) < 0:
        p.error("need --frames >= 2, --static-ratio in [0, 1] and thresholds >= 0")
    return args


def run_client(target: str, ckpt: Path, args: argparse.Namespace, threshold: float, work: Path) -> dict:
    """One ``mobile-client`` run: its JSON lines, its summary (stderr) and its wall time."""
    jsonl = work / f"run-{threshold:g}.jsonl"
    argv = ["--server", target, "--ckpt", str(ckpt), "--synthetic", str(args.frames), "--seed", str(args.seed)]
    argv += ["--static-ratio", str(args.static_ratio), "--skip-static", str(threshold)]
    argv += ["--skip-static-max", str(args.skip_static_max), "--window", str(args.window)]
    argv += ["--score-threshold", str(REPORT_SCORE), "--threads", "1", "--jsonl", str(jsonl)]
    from splitdet.mobile_client import cli

    stderr = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    wall_s = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"mobile-client exited {code} at --skip-static {threshold:g}:\n{stderr.getvalue()}")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    summary = [line for line in stderr.getvalue().splitlines() if line.startswith(("summary", "  frames", "  static"))]
    return {"lines": lines, "summary": summary, "wall_s": wall_s}


def coco_results(lines: list[dict], class_names: list[str]) -> list[dict]:
    """The client's JSON detections as COCO results (image id = frame + 1, category id = label index)."""
    out = []
    for line in lines:
        for d in line["detections"]:
            x1, y1, x2, y2 = d["box"]
            out.append(
                {
                    "image_id": line["frame"] + 1,
                    "category_id": class_names.index(d["label"]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": d["score"],
                }
            )
    return out


def fidelity(
    reference: list[dict], results: list[dict], frames: list[int], size: tuple[int, int], class_names: list[str]
) -> dict[str, float] | None:
    """bbox AP and AP50 of ``results`` against ``reference`` (score >= :data:`GT_SCORE`) over ``frames``; None when
    the reference has no detection there."""
    from splitdet.distill.datasets import coco_from_dict
    from splitdet.distill.evaluate import coco_eval, teacher_as_ground_truth

    ids = {f + 1 for f in frames}
    images = [{"id": i, "width": size[1], "height": size[0], "file_name": f"{i}"} for i in sorted(ids)]
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names) if k > 0]
    frame_set = coco_from_dict({"images": images, "categories": categories, "annotations": []})
    gt = teacher_as_ground_truth(frame_set, [r for r in reference if r["image_id"] in ids], GT_SCORE)
    if not gt.getAnnIds():
        return None
    scores = coco_eval(gt, [r for r in results if r["image_id"] in ids], "bbox")
    return {"AP": scores["AP"], "AP50": scores["AP50"]}


KINDS = {
    "still": "in static stretches, same objects as the frame before (sensor noise only)",
    "cut": "in static stretches, objects entered or left",
    "moving": "outside static stretches (motion)",
}


def calibration(ckpt: Path, args: argparse.Namespace) -> tuple[dict, dict[int, str], tuple[int, int]]:
    """The change measure of each frame against the frame before it, by kind of frame (:data:`KINDS`); the kind of
    every frame but the first; the frame size."""
    from splitdet.mobile_client.static import change
    from splitdet.mobile_client.torch_head import ClientModel
    from splitdet.synthetic.video import SyntheticVideo

    model = ClientModel.load(ckpt)
    video = SyntheticVideo(args.frames, seed=args.seed, static_ratio=args.static_ratio)
    static = set(video.static_frames)
    values: dict[str, list[float]] = {kind: [] for kind in KINDS}
    kinds: dict[int, str] = {}
    before = None
    for t, (image, anns) in enumerate(video):
        bottleneck = model.run_head(image, use_filter=False).bottleneck
        if before is not None:
            same = {a["track_id"] for a in anns} == {a["track_id"] for a in before[1]}
            kinds[t] = ("still" if same else "cut") if t in static else "moving"
            values[kinds[t]].append(change(before[0], bottleneck))
        before = bottleneck, anns
    pcts = (5, 25, 50, 75, 95)
    table = {
        kind: {"frames": len(v), **{f"p{q}": float(np.percentile(v, q)) for q in pcts}} if v else {"frames": 0}
        for kind, v in values.items()
    }
    return {"static_frames": len(static), **table}, kinds, image.shape[:2]


def machine(load_start: tuple[float, float, float]) -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    cpu = cpu or platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores shared with other work (load average {load_start[0]:.1f} at the start), "
        f"Python {platform.python_version()}, torch {torch.__version__}, one torch thread for the client and the "
        "in-process server together"
    )


def _ap(scores: dict[str, float] | None) -> str:
    return "n/a" if scores is None else f"{scores['AP']:.3f} ({scores['AP50']:.3f})"


def render(report: dict) -> str:
    lines = [
        "# Skipping static frames (`--skip-static`)",
        "",
        f"`{report['command']}`, {report['date']}, {report['wall_s'] / 60:.1f} min in all; machine: "
        f"{report['machine']}.",
        "",
        f"Checkpoint {report['ckpt']} on both sides (model input {report['input']}); the synthetic video: "
        f"{report['frames']} frames of {report['frame_size'][0]}x{report['frame_size'][1]}, seed {report['seed']}, "
        f"{report['calibration']['static_frames']} frames in static stretches (`--static-ratio "
        f"{report['static_ratio']:g}`: only the sensor noise changes; objects still enter and leave on the "
        f"empty/object schedule, {report['empty_frames']} frames without objects). Client: split mode, the "
        f"checkpoint's neural filter, `--window {report['window']}`, `--skip-static-max {report['skip_static_max']}`, "
        f"detections down to score {REPORT_SCORE:g}. Fidelity AP: bbox AP@[.5:.95] (AP50) of each run's per-frame "
        f"output, fresh or reused, against the detections scoring >= {GT_SCORE:g} that the server answered when every "
        "frame was sent (threshold 0), by pycocotools (`splitdet.distill.evaluate.coco_eval`).",
        "",
        "| --skip-static | frames sent | reused (still / entered or left / moving) | filter-skipped | bytes/frame "
        "| bytes saved vs off | fidelity AP (AP50), all frames | fidelity AP (AP50), reused frames "
        "| frames since the answer reused, mean / max | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        reused = run["reused"] > 0
        age = f"{run['reuse_age']['mean']:.1f} / {run['reuse_age']['max']}" if reused else "-"
        lines.append(
            f"| {run['threshold']:g}{' (off)' if run['threshold'] == 0 else ''} | {run['sent']} | {run['reused']} "
            f"({' / '.join(str(run['reused_by_kind'][kind]) for kind in KINDS)}) | "
            f"{run['skipped']} | {run['bytes_per_frame']:,.0f} | {run['saved']:.1%} | {_ap(run['fidelity_all'])} | "
            f"{_ap(run['fidelity_reused']) if reused else '-'} | {age} | {run['wall_s']:.1f} |"
        )
    cal = report["calibration"]
    lines += [
        "",
        "Reused frames by kind: still = in a static stretch, with the same objects as the frame before (only the "
        "sensor noise changed); entered or left = in a static stretch, where objects entered or left; moving = "
        "outside the static stretches. "
        "The floor for reused frames: over the still frames, the server's answer for the frame "
        f"before, scored as the answer for the frame itself, has fidelity AP {_ap(report['noise_floor'])}: a fresh "
        "answer moves that much between two frames that differ by sensor noise alone.",
        "",
        "Bytes saved = 1 - total bytes sent / total bytes sent with the threshold at 0. Frames since the answer "
        "reused: frame index - `reused_from`. Wall time includes loading the checkpoint; the CPU is shared, so it "
        "is indicative only.",
        "",
        "## Calibration: the change measure between consecutive frames",
        "",
        "`splitdet.mobile_client.static.change` (mean |difference| / mean |value| of the earlier bottleneck) of every "
        "frame "
        "against the frame before it, from the same torch head on the same video.",
        "",
        "| frames | count | p5 | p25 | p50 | p75 | p95 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, label in KINDS.items():
        c = cal[kind]
        if c["frames"]:
            lines.append(
                f"| {label} | {c['frames']} | " + " | ".join(f"{c[f'p{q}']:.4f}" for q in (5, 25, 50, 75, 95)) + " |"
            )
    lines += ["", "## Client summaries", ""]
    for run in report["runs"]:
        lines += [f"`--skip-static {run['threshold']:g}`:", "", "```", *run["summary"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = time.monotonic(), os.getloadavg()
    import torch

    torch.set_num_threads(1)
    from splitdet.common.demo import demo_checkpoint
    from splitdet.edge_server.server import serve
    from splitdet.mobile_client.torch_head import ClientModel
    from splitdet.synthetic.video import SyntheticVideo

    ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
    model = ClientModel.load(ckpt)
    class_names, (min_size, max_size) = model.class_names, model.size_rule
    cal, kinds, size = calibration(ckpt, args)
    video = SyntheticVideo(args.frames, seed=args.seed, static_ratio=args.static_ratio)
    server = serve(ckpt, host="127.0.0.1", port=0, workers=2)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="skip-static-") as tmp:
            for threshold in args.thresholds:
                print(f"skip_static: --skip-static {threshold:g} ...", file=sys.stderr, flush=True)
                runs.append((threshold, run_client(f"127.0.0.1:{server.port}", ckpt, args, threshold, Path(tmp))))
    finally:
        server.stop(0)
    reference = coco_results(runs[0][1]["lines"], class_names)
    # the floor: how much the server's own answer moves between two frames that differ by sensor noise only
    still = [t for t, kind in kinds.items() if kind == "still"]
    after = set(still)  # image id = frame + 1: the answer for frame t - 1 has id t and moves to frame t's, t + 1
    earlier = [dict(r, image_id=r["image_id"] + 1) for r in reference if r["image_id"] in after]
    floor = fidelity(reference, earlier, still, size, class_names)
    off_bytes = sum(line["sent_bytes"] for line in runs[0][1]["lines"])
    every = list(range(args.frames))
    rows = []
    for threshold, run in runs:
        lines = run["lines"]
        results = coco_results(lines, class_names)
        reused = [line for line in lines if line["reused"]]
        total = sum(line["sent_bytes"] for line in lines)
        ages = [line["frame"] - line["reused_from"] for line in reused]
        rows.append(
            {
                "threshold": threshold,
                "frames": len(lines),
                "sent": sum(line["sent_bytes"] > 0 for line in lines),
                "reused": len(reused),
                "reused_by_kind": {kind: sum(kinds.get(line["frame"]) == kind for line in reused) for kind in KINDS},
                "skipped": sum(line["skipped"] for line in lines),
                "failed": sum("error" in line for line in lines),
                "bytes_total": total,
                "bytes_per_frame": total / len(lines),
                "saved": 1.0 - total / off_bytes if off_bytes else 0.0,
                "fidelity_all": fidelity(reference, results, every, size, class_names),
                "fidelity_reused": fidelity(reference, results, [line["frame"] for line in reused], size, class_names)
                if reused
                else None,
                "reuse_age": {"mean": float(np.mean(ages)), "max": int(max(ages))} if ages else None,
                "wall_s": run["wall_s"],
                "summary": run["summary"],
            }
        )
    failed = [r for r in rows if r["failed"]]
    if failed:
        print(f"skip_static: warning: failed frames in {len(failed)} run(s)", file=sys.stderr)
    shown = shown_args(argv if argv is not None else sys.argv[1:])
    report = {
        "command": " ".join(["python -m studies.skip_static", *shown]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(load_start),
        "ckpt": shown_path(ckpt),
        "input": f"min_size {min_size}, max_size {max_size}",
        "frames": args.frames,
        "frame_size": list(size),
        "seed": args.seed,
        "static_ratio": args.static_ratio,
        "empty_frames": len(video.empty_frames),
        "window": args.window,
        "skip_static_max": args.skip_static_max,
        "calibration": cal,
        "noise_floor": floor,
        "runs": rows,
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
