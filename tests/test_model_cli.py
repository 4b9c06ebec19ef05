"""The ``split-model`` command line."""

from __future__ import annotations

import subprocess
import sys

from splitdet.common.model_cli import main


def test_init_and_info_resnet50_prints_the_bottleneck_shape(tmp_path, capsys):
    path = tmp_path / "r50.pt"
    assert main(["init", "--arch", "faster_rcnn", "--backbone", "resnet50", "--channels", "3", "--out", str(path)]) == 0
    assert main(["info", str(path), "--input-size", "800x1088"]) == 0
    out = capsys.readouterr().out
    assert "3x204x276" in out and "168912 bytes 8-bit" in out
    assert "head MACs" in out and "tail MACs" in out and "fingerprint" in out


def test_init_keypoint_student_with_filter(tmp_path, capsys):
    path = tmp_path / "k.pt"
    assert (
        main(
            [
                "init",
                "--arch",
                "keypoint_rcnn",
                "--backbone",
                "resnet18",
                "--channels",
                "6",
                "--num-classes",
                "2",
                "--num-keypoints",
                "5",
                "--with-filter",
                "--half",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "keypoint_rcnn resnet18" in out and "5 keypoints" in out and "filter yes" in out


def test_bad_input_exits_2_with_one_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello")
    for args in (
        ["info", str(tmp_path / "missing.pt")],
        ["info", str(garbage)],
        ["import-seed", str(garbage), "--out", str(tmp_path / "o.pt")],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "splitdet.common.model_cli", *args], capture_output=True, text=True
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("split-model: error:")


def test_bad_arguments_exit_2(tmp_path, capsys):
    for args in (
        ["init", "--arch", "yolo", "--channels", "3", "--out", "x"],
        ["info", "x.pt", "--input-size", "big"],
    ):
        try:
            main(args)
        except SystemExit as e:
            assert e.code == 2
    assert main(["init", "--arch", "faster_rcnn", "--channels", "99", "--out", str(tmp_path / "x.pt")]) == 2
    assert "channels must be in 1..64" in capsys.readouterr().err


def test_export_half_drops_training_state(tmp_path, capsys):
    from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
    from tests.conftest import tiny_student

    src = tmp_path / "src.pt"
    save_checkpoint(tiny_student(), src, ["__background__", "a", "b", "c"], training={"optimizer": {"lr": 1.0}})
    assert main(["export", str(src), "--out", str(tmp_path / "out.pt"), "--half"]) == 0
    out = load_checkpoint(tmp_path / "out.pt")
    assert "optimizer" not in out.training and out.class_names[1] == "a"
    assert (tmp_path / "out.pt").stat().st_size < 0.6 * src.stat().st_size
    assert "float16" in capsys.readouterr().out
