"""studies.distill_results: the combined table from split-eval reports."""

from __future__ import annotations

import json

from studies.distill_results import EVALUATIONS, write_summary


def _run(mode, quantization, ap, zstd=None, fidelity=None):
    run = {"mode": mode, "quantization": quantization, "ap": {"bbox": {"AP": ap}}, "bytes": None}
    if zstd is not None:
        run["bytes"] = {"zstd": zstd}
    if fidelity is not None:
        run["fidelity"] = {"bbox": {"AP": fidelity}}
    return run


def test_summary_reports_points_costs_and_bytes(tmp_path):
    teacher = {
        "iou_types": ["bbox"],
        "runs": [_run("whole", None, 0.40)],
        "jpeg": {"95": 10000.0, "75": 4000.0},
        "jpeg_ap": {"95": {"bbox": {"AP": 0.38}}},
    }
    student = {
        "iou_types": ["bbox"],
        "teacher": {"ap": {"bbox": {"AP": 0.40}}},
        "runs": [
            _run("whole", None, 0.39),
            _run("split", "none", 0.39),
            _run("split", "per_tensor", 0.388, zstd=2500.0, fidelity=0.8),
        ],
    }
    ghnd3 = next(e.name for e in EVALUATIONS if e.method == "ghnd" and e.channels == 3 and e.arch == "faster_rcnn")
    reports = {"teacher-synthetic-faster_rcnn-resnet18": teacher, ghnd3: student}
    text = write_summary(reports, tmp_path, "cmd").read_text()
    assert "| faster_rcnn | bbox | 40.0 | 38.0 | - | 10000 | 4000 |" in text
    assert "| faster_rcnn | GHND | 3 | bbox | 40.0 | 39.0 | 39.0 | 38.8 | 0.20 | 80.0 | 2500 | 0.25x |" in text


def test_summary_reports_the_demo_filter(tmp_path):
    split = _run("split", "per_tensor", 0.36, fidelity=0.74)
    split["bytes"] = {"payload": 4600.0}
    split["filter"] = {"empty_frames": 50, "frames_with_objects": 250, "empty_skipped": 0.6, "objects_skipped": 0.02}
    demo = {
        "checkpoint": "demo.pt",
        "filter_threshold": 0.25,
        "teacher": {"ap": {"bbox": {"AP": 0.39}}},
        "runs": [_run("whole", None, 0.376, fidelity=0.765), split],
    }
    (tmp_path / "demo_eval.json").write_text(json.dumps(demo))
    text = write_summary({}, tmp_path, "cmd").read_text()
    assert "| student, split (per_tensor) + filter | 36.0 | 74.0 | 4600 | 60.0% of 50 | 2.0% of 250 |" in text


def test_every_student_is_scored_beside_its_own_listed_teacher():
    teachers = {e.name: e for e in EVALUATIONS if e.method == "teacher"}
    students = [e for e in EVALUATIONS if e.method != "teacher"]
    assert all(e.teacher in teachers and teachers[e.teacher].arch == e.arch for e in students)
    deep = next(e for e in students if e.name == "ghnd-synthetic-keypoint_rcnn-resnet18-b3ch-deep")
    assert deep.teacher == "teacher-synthetic-keypoint_rcnn-resnet18-deep"
    assert deep.config == "configs/ghnd/synthetic-keypoint_rcnn-resnet18-b3ch-deep.yaml"
