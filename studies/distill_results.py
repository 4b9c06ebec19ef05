"""Evaluate every synthetic-set checkpoint the configs train and write one results table.

    python -m studies.distill_results [--runs runs] [--out studies/results] [--only NAME ...] [--force]

For each entry of :data:`EVALUATIONS` whose checkpoint exists, runs ``split-eval`` (writing
``OUT/eval-NAME.json`` and ``.md``; existing JSON files are reused unless ``--force``), then combines them into
``OUT/synthetic_distillation.md``: teacher AP, student AP whole and split (no quantization / 8-bit), fidelity
against the teacher, bytes per frame, JPEG bytes and offload AP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from splitdet.benchmarks.paths import shown_args
from splitdet.distill import eval_cli


@dataclass(frozen=True)
class Evaluation:
    """One ``split-eval`` run: a checkpoint (a run directory under ``--runs``) scored on a config's val set."""

    name: str
    run: str
    config: str
    arch: str
    method: str
    channels: int | None
    jpeg: bool = False
    note: str = ""  #: what sets this run apart from the others of its method, for the table
    teacher: str | None = None  #: a student's teacher (its run directory), scored beside it

    def argv(self, runs: Path, out: Path) -> list[str]:
        args = ["--ckpt", str(runs / self.run / "final.pt"), "--config", self.config]
        if self.teacher is not None:
            args += ["--teacher", str(runs / self.teacher / "final.pt")]
            args += ["--quantization", "none,per_tensor", "--no-filter"]
        if self.jpeg:
            args += ["--jpeg", "95,75"]
        return [*args, "--json", str(out / f"eval-{self.name}.json"), "--md", str(out / f"eval-{self.name}.md")]


def _teacher(arch: str, variant: str = "", note: str = "") -> Evaluation:
    run = f"teacher-synthetic-{arch}-resnet18{variant}"
    return Evaluation(
        run, run, f"configs/teacher/{run.removeprefix('teacher-')}.yaml", arch, "teacher", None, True, note
    )


def _student(
    method: str, arch: str, channels: int, config: str | None = None, variant: str = "", note: str = ""
) -> Evaluation:
    """A student run of ``configs/METHOD/synthetic-ARCH-resnet18-bCch[VARIANT].yaml``, scored beside the teacher
    run of the same variant."""
    run = f"{method}-synthetic-{arch}-resnet18-b{channels}ch{variant}"
    config = config or f"configs/{method}/{run.removeprefix(method + '-')}.yaml"
    teacher = f"teacher-synthetic-{arch}-resnet18{variant}"
    return Evaluation(run, run, config, arch, method, channels, note=note, teacher=teacher)


DEEP_KEYPOINT_HEAD = "8-layer keypoint head, layer2..4 trainable"

EVALUATIONS: tuple[Evaluation, ...] = (
    _teacher("faster_rcnn"),
    _teacher("mask_rcnn"),
    _teacher("keypoint_rcnn"),
    _teacher("keypoint_rcnn", "-deep", DEEP_KEYPOINT_HEAD),
    _student("hnd", "faster_rcnn", 3),
    _student("ghnd", "faster_rcnn", 3, "configs/ghnd/synthetic-demo.yaml"),
    Evaluation(
        "ghnd-long-synthetic-faster_rcnn-resnet18-b3ch",
        "ghnd-long-synthetic-faster_rcnn-resnet18-b3ch",
        "configs/ghnd/synthetic-faster_rcnn-resnet18-b3ch-long.yaml",
        "faster_rcnn",
        "ghnd",
        3,
        note="4,000 images x 8 epochs",
        teacher="teacher-synthetic-faster_rcnn-resnet18",
    ),
    _student("hnd", "faster_rcnn", 6),
    _student("ghnd", "faster_rcnn", 6),
    _student("hnd", "faster_rcnn", 12),
    _student("ghnd", "faster_rcnn", 12),
    _student("ghnd", "mask_rcnn", 3),
    _student("ghnd", "keypoint_rcnn", 3),
    _student("ghnd", "keypoint_rcnn", 3, variant="-deep", note=f"teacher: {DEEP_KEYPOINT_HEAD}"),
)


def _ap(run: dict | None, iou: str, key: str = "ap") -> float | None:
    if run is None or iou not in (run.get(key) or {}):
        return None
    return run[key][iou]["AP"]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pts(v: float | None, digits: int = 1) -> str:
    """An AP (0..1) in COCO points (0..100)."""
    return "-" if v is None else f"{100 * v:.{digits}f}"


def summary_table(reports: dict[str, dict]) -> list[str]:
    """One row per (student, iou type): AP whole / split / split 8-bit, fidelity, bytes, next to the teacher."""
    cols = [
        "model",
        "method",
        "C",
        "metric",
        "teacher AP",
        "whole AP",
        "split AP",
        "split 8-bit AP",
        "8-bit cost",
        "fidelity AP (8-bit)",
        "8-bit+zstd B/frame",
        "vs JPEG q95",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for ev in EVALUATIONS:
        report = reports.get(ev.name)
        if report is None or ev.teacher is None:
            continue
        teacher = reports.get(ev.teacher, {})
        runs = {(r["mode"], r["quantization"]): r for r in report["runs"]}
        whole, none, q8 = runs.get(("whole", None)), runs.get(("split", "none")), runs.get(("split", "per_tensor"))
        jpeg95 = (teacher.get("jpeg") or {}).get("95")
        zstd = (q8 or {}).get("bytes", {}).get("zstd")
        for iou in report["iou_types"]:
            t_ap = report.get("teacher", {}).get("ap", {}).get(iou, {}).get("AP")
            a_none, a_q8 = _ap(none, iou), _ap(q8, iou)
            cost = None if a_none is None or a_q8 is None else a_none - a_q8
            lines.append(
                "| "
                + " | ".join(
                    [
                        ev.arch,
                        ev.method.upper() + (f" ({ev.note})" if ev.note else ""),
                        str(ev.channels),
                        iou,
                        _pts(t_ap),
                        _pts(_ap(whole, iou)),
                        _pts(a_none),
                        _pts(a_q8),
                        _pts(cost, 2),
                        _pts(_ap(q8, iou, "fidelity")),
                        _fmt(zstd, 0),
                        "-" if not (zstd and jpeg95) else f"{zstd / jpeg95:.2f}x",
                    ]
                )
                + " |"
            )
    return lines


def teacher_table(reports: dict[str, dict]) -> list[str]:
    """Teachers: AP on the original frames and on JPEG q95/q75 (offloading), with the JPEG bytes."""
    lines = [
        "| teacher | metric | AP | AP (JPEG q95) | AP (JPEG q75) | JPEG q95 B | JPEG q75 B |",
        "|---|---|---|---|---|---|---|",
    ]
    for ev in EVALUATIONS:
        report = reports.get(ev.name)
        if report is None or ev.method != "teacher":
            continue
        whole = report["runs"][0]
        jpeg, jpeg_ap = report.get("jpeg", {}), report.get("jpeg_ap", {})
        for iou in report["iou_types"]:
            lines.append(
                f"| {ev.arch}{f' ({ev.note})' if ev.note else ''} | {iou} | {_pts(whole['ap'][iou]['AP'])} | "
                f"{_pts(jpeg_ap.get('95', {}).get(iou, {}).get('AP'))} | "
                f"{_pts(jpeg_ap.get('75', {}).get(iou, {}).get('AP'))} | "
                f"{_fmt(jpeg.get('95'), 0)} | {_fmt(jpeg.get('75'), 0)} |"
            )
    return lines


def demo_lines(report: dict) -> list[str]:
    """The bundled demo checkpoint (``demo_eval.json``): its AP whole and split with the neural filter on."""
    whole = next(r for r in report["runs"] if r["mode"] == "whole")
    lines = [
        "## Bundled demo checkpoint and its neural filter",
        "",
        f"`{report['checkpoint']}` scored by `split-eval` (command in `demo_eval.md`). Split rows run the neural",
        f"filter at its threshold {report['filter_threshold']:.3f} (chosen for 99 % recall on the filter's own",
        "validation set); frames it skips count as missed detections.",
        "",
        "| run | bbox AP | fidelity AP | payload B per sent frame | empty skipped | with objects skipped |",
        "|---|---|---|---|---|---|",
        f"| teacher | {_pts(report['teacher']['ap']['bbox']['AP'])} | - | - | - | - |",
        f"| student, whole | {_pts(whole['ap']['bbox']['AP'])} | {_pts(whole['fidelity']['bbox']['AP'])} | - | - | - |",
    ]
    for run in report["runs"]:
        if run["mode"] == "split":
            f = run["filter"]
            lines.append(
                f"| student, split ({run['quantization']}) + filter | {_pts(run['ap']['bbox']['AP'])} | "
                f"{_pts(run['fidelity']['bbox']['AP'])} | {_fmt(run['bytes']['payload'], 0)} | "
                f"{f['empty_skipped']:.1%} of {f['empty_frames']} | {f['objects_skipped']:.1%} of "
                f"{f['frames_with_objects']} |"
            )
    return [*lines, ""]


def write_summary(reports: dict[str, dict], out: Path, command: str) -> Path:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}, torch {torch.__version__}"
    text = [
        "# Distillation on the synthetic set",
        "",
        f"Command: `{command}` ({machine}). Each row's own `split-eval` command is in `eval-NAME.md` beside this",
        "file. Validation set: 300 synthetic images at 160x160 (seed 2; Keypoint R-CNN: its own scenes, persons in",
        "60 % of objects, 72-158 px tall, all facing the camera; see its configs).",
        '"split" runs go head -> wire frame (codec) -> tail without a network and without the neural filter;',
        '"8-bit cost" is split AP without quantization minus split AP with 8-bit per-tensor quantization.',
        "Fidelity AP scores the student against its teacher's detections (score > 0.5) as ground truth.",
        "AP is COCO AP@[.5:.95] in points (0-100).",
        "",
        "## Teachers",
        "",
        *teacher_table(reports),
        "",
        "## Students",
        "",
        *summary_table(reports),
        "",
    ]
    demo = out / "demo_eval.json"
    if demo.is_file():
        text += demo_lines(json.loads(demo.read_text()))
    path = out / "synthetic_distillation.md"
    path.write_text("\n".join(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.distill_results", description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="directory holding the run directories")
    parser.add_argument("--out", type=Path, default=Path("studies/results"))
    parser.add_argument("--only", nargs="*", help="evaluate only these names (the rest is read from OUT)")
    parser.add_argument("--force", action="store_true", help="re-run evaluations whose JSON already exists")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict] = {}
    for ev in EVALUATIONS:
        path = args.out / f"eval-{ev.name}.json"
        wanted = args.only is None or ev.name in args.only
        if wanted and (args.force or not path.is_file()):
            if not (args.runs / ev.run / "final.pt").is_file():
                print(f"skipping {ev.name}: {args.runs / ev.run / 'final.pt'} not found", file=sys.stderr)
                continue
            print(f"evaluating {ev.name}", file=sys.stderr)
            argv_eval = ev.argv(args.runs, args.out)
            if eval_cli.main(argv_eval):
                return 1
            md = args.out / f"eval-{ev.name}.md"
            md.write_text(f"Command: `split-eval {shlex.join(argv_eval)}`\n\n" + md.read_text())
        if path.is_file():
            reports[ev.name] = json.loads(path.read_text())
    shown = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m studies.distill_results", *shown_args(shown)])
    print(f"wrote {write_summary(reports, args.out, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
