"""The background filter (``mobile-client --background-filter``) on one fixed camera: empty frames skipped against
frames with objects lost, its threshold chosen on a calibration clip, checked end to end on a held-out clip.

    python -m studies.filter_background [--config configs/filter/synthetic-camera.yaml] [--ckpt CKPT] \\
        [--rate 0.5] [--max-skipped 30] [--window 4] [--out studies/results/filter_background]

The clips are the config's ``calibration`` and ``val`` splits of its synthetic camera video (frames 200..1199 and
0..199 of the bench's fixed camera). A frame *holds an object* when one of its objects is of interest
(:mod:`splitdet.common.interest`); a frame with objects that is skipped is *lost*, counted out of all of them and out of
those the server finds (it answers them with an object of interest; skipping a frame the server answers empty loses
nothing the user would have seen).

1. Every frame once through the client's head (:class:`splitdet.mobile_client.torch_head.ClientModel`, its stem cells
and its
   bottleneck) and through what the edge server runs on it (``encode_frame`` -> ``decode_frame`` -> tail): the
   server's answer is *empty* when no detection scoring >= 0.5 is of interest, as
   :class:`splitdet.mobile_client.pipeline .Pipeline` decides it.
2. :class:`splitdet.mobile_client.background.BackgroundFilter` itself replays each clip frame by frame for a grid of
   thresholds (each answer arrives before the next frame, as with ``--window 1``, a live camera's one frame in
   flight). The client's threshold skips the most calibration frames while losing at most 1 % of the frames whose
   objects the server finds; the thresholds for at most 1 % of all frames with objects, with the server's answers and
   with the ground truth as the answers (the bound for a server that never errs), are reported beside it.
3. End to end: an edge server in this process and the client's own pipeline (link, background filter) on the val
   clip at the client's threshold, with ``--window 1`` and ``--window`` frames in flight, against the same client
   sending every frame: empty frames skipped, frames with objects lost, bytes and server time saved, and the bbox AP
   of both runs against the ground truth (:func:`splitdet.distill.evaluate.coco_eval`; detections scoring >= 0.5, as the
   client reports them).

Writes ``OUT.md``, ``OUT.json`` and ``OUT.png`` (skipped against lost over the threshold, both clips).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from splitdet.benchmarks.paths import shown_args, shown_path, write_report

RESULTS = Path("studies/results")
SCORE = 0.5  #: the client's default --score-threshold: what counts as a detection in an answer
MAX_LOST = 0.01  #: the goal: at most this share of the frames with objects skipped
GRID = np.geomspace(1e-3, 10.0, 121)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from splitdet.mobile_client.background import DEFAULT_MAX_SKIPPED, DEFAULT_RATE

    p = argparse.ArgumentParser(prog="python -m studies.filter_background", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/filter/synthetic-camera.yaml", help="default: %(default)s")
    p.add_argument("--ckpt", help="checkpoint of both sides (default: the bundled demo checkpoint)")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="--background-rate (default: %(default)s)")
    p.add_argument(
        "--max-skipped", type=int, default=DEFAULT_MAX_SKIPPED, help="--background-max-skipped (default: %(default)s)"
    )
    p.add_argument("--window", type=int, default=4, help="client --window of the end-to-end run (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS / "filter_background", help="default: %(default)s")
    return p.parse_args(argv)


def frames_of(config, split: str):
    """A clip's dataset, its RGB frames, and whether each frame holds an object of interest."""
    from splitdet.distill.dataset_config import build_dataset
    from splitdet.distill.datasets import has_object_of_interest
    from splitdet.distill.evaluate import object_labels

    dataset, _ = build_dataset(config.dataset, split)
    labels = object_labels("faster_rcnn", list(dataset.class_names))
    rgbs, positive = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        rgbs.append((image * 255).round().byte().permute(1, 2, 0).numpy())
        positive.append(has_object_of_interest(target, tuple(image.shape[-2:]), labels))
    return dataset, rgbs, np.array(positive)


def server_answers(model, rgbs: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
    """Per frame: the client's stem cells and whether the server's answer to it is empty."""
    import torch

    from splitdet.common.interest import box_of_interest
    from splitdet.common.wire import FrameLimits, decode_frame, encode_frame
    from splitdet.mobile_client.pipeline import detections_json

    limits = FrameLimits(entropy=model.entropy_tables)
    cells, empty = [], []
    for rgb in rgbs:
        out = model.run_head(rgb, use_filter=False, cells=True)
        frame = encode_frame(out.bottleneck, out.meta, model.codec, entropy_tables=model.entropy_tables)
        with torch.inference_mode():
            x, meta = decode_frame(frame, limits)
            det = model.tail(x, meta)[0]
        det = {k: v.numpy() for k, v in det.items()}
        found = detections_json(det, model.class_names, SCORE)
        cells.append(out.stem_cells)
        empty.append(not any(box_of_interest(d["box"], rgb.shape[:2]) for d in found))
    return cells, empty


def replay(cells: list[np.ndarray], empty: list[bool], threshold: float, rate: float, max_skipped: int) -> np.ndarray:
    """Which frames :class:`BackgroundFilter` skips when each sent frame's answer (``empty``) arrives at once."""
    from splitdet.mobile_client.background import BackgroundFilter

    gate = BackgroundFilter(threshold, rate, max_skipped)
    skipped = []
    for i, (c, e) in enumerate(zip(cells, empty, strict=True)):
        skip = gate.check(i, c)
        if not skip:
            gate.answer(i, e)
        skipped.append(skip)
    return np.array(skipped)


def rates(skipped: np.ndarray, positive: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """Shares of the empty frames skipped, of the frames with objects lost, and of the frames with objects the server
    finds (``found``) lost."""

    def share(mask: np.ndarray) -> float:
        return float(skipped[mask].mean()) if mask.any() else 0.0

    return {
        "empty_skipped": share(~positive),
        "lost": share(positive),
        "found_lost": share(found),
        "skipped": float(skipped.mean()),
    }


def curve(cells: list[np.ndarray], answers: list[bool], clip: dict, args) -> list[dict]:
    """Skip rates of :func:`replay` at every threshold of :data:`GRID`."""
    return [
        {"threshold": float(t), **rates(replay(cells, answers, t, args.rate, args.max_skipped), *clip["truth"])}
        for t in GRID
    ]


def choose(points: list[dict], key: str = "found_lost") -> dict:
    """The point that skips the most empty frames with at most :data:`MAX_LOST` lost by ``key``."""
    ok = [p for p in points if p[key] <= MAX_LOST]
    return max(ok, key=lambda p: (p["empty_skipped"], -p["threshold"])) if ok else points[0]


def at(points: list[dict], threshold: float) -> dict:
    return next(p for p in points if p["threshold"] == threshold)


def end_to_end(ckpt: Path, model, rgbs: list[np.ndarray], threshold: float, window: int, args) -> list[dict]:
    """The client's pipeline against an in-process edge server over ``rgbs`` with ``window`` frames in flight;
    threshold 0 sends every frame."""
    from splitdet.edge_server.server import serve
    from splitdet.mobile_client import handshake
    from splitdet.mobile_client.link import LinkConfig
    from splitdet.mobile_client.pipeline import Pipeline
    from splitdet.mobile_client.settings import Options
    from splitdet.mobile_client.sources import Frame

    server = serve(ckpt, host="127.0.0.1", port=0, workers=1)
    try:
        target = LinkConfig(target=f"127.0.0.1:{server.port}")
        link, _ = handshake.connect(target, fingerprint=model.fingerprint, quantization=model.codec.quantization)
        options = Options(
            codec=model.codec,
            window=window,
            background_filter=threshold,
            background_rate=args.rate,
            background_max_skipped=args.max_skipped,
        )
        pipeline = Pipeline(options, model.class_names, model=model, link=link)
        try:
            frames = (Frame(i, f"val#{i}", rgb) for i, rgb in enumerate(rgbs))
            return [
                {
                    "skipped": r.skipped,
                    "sent_bytes": r.sent_bytes,
                    "server_ms": r.server_ms or 0.0,
                    "error": r.error,
                    "detections": r.detections,
                }
                for r in pipeline.run(frames)
            ]
        finally:
            pipeline.close()
    finally:
        server.stop(0)


def ground_truth_ap(dataset, run: list[dict], class_names: list[str]) -> float:
    """bbox AP@[.5:.95] of a run's detections (a skipped frame: none) against the clip's ground truth."""
    from splitdet.distill.evaluate import coco_eval

    results = []
    for image_id, frame in zip(dataset.ids, run, strict=True):
        for d in frame["detections"]:
            x0, y0, x1, y1 = d["box"]
            category = dataset.label_to_cat_id[class_names.index(d["label"])]
            results.append({"image_id": image_id, "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": d["score"]})  # fmt: skip
    return coco_eval(dataset.coco, results, "bbox", list(dataset.label_to_cat_id.values()))["AP"]


def summary(run: list[dict], reference: list[dict], clip: dict, class_names: list[str]) -> dict:
    """An end-to-end run against the every-frame one: skip rates, bytes and server time saved, AP of both."""
    skipped = np.array([r["skipped"] for r in run])
    return {
        **rates(skipped, *clip["truth"]),
        "failed": sum(r["error"] is not None for r in run),
        "bytes_saved": 1.0 - sum(r["sent_bytes"] for r in run) / sum(r["sent_bytes"] for r in reference),
        "server_ms_saved": 1.0 - sum(r["server_ms"] for r in run) / sum(r["server_ms"] for r in reference),
        "ap": ground_truth_ap(clip["dataset"], run, class_names),
        "ap_every_frame": ground_truth_ap(clip["dataset"], reference, class_names),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from splitdet.common.demo import demo_checkpoint
    from splitdet.distill.config import load_config
    from splitdet.mobile_client.torch_head import ClientModel

    started = time.perf_counter()
    config = load_config(args.config)
    ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
    model = ClientModel.load(ckpt)
    clips = {}
    for split in ("calibration", "val"):
        dataset, rgbs, positive = frames_of(config, split)
        cells, answers = server_answers(model, rgbs)
        empty = np.array(answers)
        clip = {"dataset": dataset, "rgbs": rgbs, "truth": (positive, positive & ~empty)}
        clip["server_answers"] = curve(cells, answers, clip, args)
        clip["ground_truth_answers"] = curve(cells, list(~positive), clip, args)
        clip["counts"] = {
            "frames": len(rgbs),
            "with_objects": int(positive.sum()),
            "with_objects_the_server_finds": int((positive & ~empty).sum()),
            "empty_answered_with_objects": int((~positive & ~empty).sum()),
        }
        clips[split] = clip
        print(f"filter_background: {split}: {len(rgbs)} frames scored", file=sys.stderr, flush=True)
    cal, val = clips["calibration"], clips["val"]
    criteria = {}
    choices = (("found_lost", "server_answers"), ("lost", "server_answers"), ("lost", "ground_truth_answers"))
    for key, answers in choices:
        point = choose(cal[answers], key)
        criteria[f"{answers}/{key}"] = {"calibration": point, "val": at(val[answers], point["threshold"])}
    threshold = criteria["server_answers/found_lost"]["calibration"]["threshold"]
    reference = end_to_end(ckpt, model, val["rgbs"], 0.0, 1, args)
    runs = {}
    for window in sorted({1, args.window}):
        run = end_to_end(ckpt, model, val["rgbs"], threshold, window, args)
        runs[window] = summary(run, reference, val, model.class_names)
    report = {
        "command": " ".join(["python -m studies.filter_background", *shown_args(list(argv or sys.argv[1:]))]),
        "machine": f"{platform.machine()}, 1 torch thread, CPU",
        "ckpt": shown_path(ckpt),
        "config": str(args.config),
        "rate": args.rate,
        "max_skipped": args.max_skipped,
        "clips": {s: c["counts"] for s, c in clips.items()},
        "threshold": threshold,
        "criteria": criteria,
        "end_to_end_val": {str(w): r for w, r in runs.items()},
        "curves": {s: {k: c[k] for k in ("server_answers", "ground_truth_answers")} for s, c in clips.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_report(args.out, report, markdown(report))
    plot(report, Path(f"{args.out}.png"))
    return 0


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


CRITERIA = {
    "server_answers/found_lost": "server's answers; threshold: at most 1 % of the frames whose objects the server "
    "finds lost",
    "server_answers/lost": "server's answers; threshold: at most 1 % of the frames with objects lost",
    "ground_truth_answers/lost": "ground truth as the answers (bound); threshold: at most 1 % of the frames with "
    "objects lost",
}


def markdown(r: dict) -> str:
    def row(name: str, clip: str, p: dict) -> str:
        return (
            f"| {name} | {clip} | {_pct(p['empty_skipped'])} | {_pct(p['lost'])} | {_pct(p['found_lost'])} | "
            f"{_pct(p['skipped'])} |"
        )

    counts = "; ".join(
        f"{s}: {c['frames']} frames, {c['with_objects']} with objects ({c['with_objects_the_server_finds']} of them "
        f"answered with an object of interest), {c['empty_answered_with_objects']} of the "
        f"{c['frames'] - c['with_objects']} empty frames answered with one"
        for s, c in r["clips"].items()
    )
    lines = [
        "# Background filter on one fixed camera",
        "",
        f"Command: `{r['command']}` ({r['machine']}, {r['wall_s']:.0f} s). Checkpoint `{r['ckpt']}` on both sides, "
        f"clips of `{r['config']}` ({counts}). Background rate {r['rate']}, at most {r['max_skipped']} frames "
        "skipped in a row. *Lost*: frames with objects of interest that were skipped, out of all of them and out of "
        "those the server answers with an object of interest (a frame the server answers empty loses nothing by "
        "being skipped). Thresholds are chosen on calibration, over a grid of 121; the client runs at "
        f"**{r['threshold']:.4g}**, chosen by the first criterion.",
        "",
        "| run | clip | empty frames skipped | frames with objects lost | of those the server finds, lost | "
        "all frames skipped |",
        "|---|---|---|---|---|---|",
    ]
    for key, c in r["criteria"].items():
        name = f"replay, {CRITERIA[key]} ({c['calibration']['threshold']:.4g})"
        lines += [row(name, "calibration", c["calibration"]), row(name, "val", c["val"])]
    for window, e in r["end_to_end_val"].items():
        live = " (a camera: one frame in flight)" if window == "1" else ""
        lines.append(row(f"end to end, `--window {window}`{live}", "val", e))
    lines += ["", "End to end on val, against the same client sending every frame (`--window 1`):", ""]
    for window, e in r["end_to_end_val"].items():
        lines.append(
            f"- `--window {window}`: {_pct(e['bytes_saved'])} of the bytes and {_pct(e['server_ms_saved'])} of the "
            f"server time saved; bbox AP against the ground truth {100 * e['ap']:.1f}, every frame sent "
            f"{100 * e['ap_every_frame']:.1f} (a skipped frame reports no detection); {e['failed']} failed frames."
        )
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for split, style in (("calibration", "-"), ("val", "--")):
        for answers, colour in (("server_answers", "C0"), ("ground_truth_answers", "C2")):
            pts = r["curves"][split][answers]
            ax.plot([100 * p["lost"] for p in pts], [100 * p["empty_skipped"] for p in pts], style, color=colour,
                    label=f"{split}, {answers.replace('_', ' ')}")  # fmt: skip
    e = r["end_to_end_val"]["1"]
    ax.plot([100 * e["lost"]], [100 * e["empty_skipped"]], "o", color="C3", label="val end to end, chosen threshold")
    ax.axvline(100 * MAX_LOST, color="grey", lw=0.8)
    ax.axhline(90, color="grey", lw=0.8)
    ax.set_xlim(0, 10)
    ax.set_xlabel("frames with objects lost (%)")
    ax.set_ylabel("empty frames skipped (%)")
    ax.set_title("Background filter over the threshold (fixed camera)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
