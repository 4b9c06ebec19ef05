"""split-bench end to end on a tiny model (a real edge-server process behind the userspace shaper), and its parts."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from splitdet.benchmarks import bench, bench_cli
from splitdet.benchmarks.bench_options import BenchOptions
from splitdet.benchmarks.bench_report import COLUMNS, accuracy_points
from splitdet.benchmarks.netem import NetemError, NetemLink, netem_args
from splitdet.common.checkpoint import save_checkpoint
from splitdet.common.options import OptionsError
from splitdet.mobile_client.pipeline import FrameResult
from tests.conftest import tiny_student

NAMES = ["__background__", "disc", "ring", "star"]
PLOTS = ("latency_vs_rate", "bytes_per_frame", "stage_breakdown", "throughput_vs_rate", "ap_vs_bytes", "crossover")
REMOTE_MODES = ("offload", "split", "split+filter", "auto")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(tiny_student("faster_rcnn", with_filter=True), path, NAMES)
    return path


def _eval_json(path: Path, checkpoint: Path, with_jpeg_ap: bool) -> Path:
    ap = {"bbox": {"AP": 0.3, "AP50": 0.5}}
    data = {
        "checkpoint": str(checkpoint),
        "arch": "faster_rcnn",
        "runs": [
            {"mode": "whole", "quantization": None, "ap": {"bbox": {"AP": 0.38}}, "bytes": None},
            {"mode": "split", "quantization": "none", "ap": ap, "bytes": {"payload": 20000.0}},
            {"mode": "split", "quantization": "per_tensor", "ap": ap, "bytes": {"payload": 4600.0, "zstd": 4600.0}},
        ],
        "jpeg": {"95": 11390.0, "75": 4432.0},
    }
    if with_jpeg_ap:
        data["jpeg_ap"] = {"95": {"bbox": {"AP": 0.37}}, "75": {"bbox": {"AP": 0.33}}}
        data["bottleneck_channels"] = 6
    path.write_text(json.dumps(data))
    return path


def test_split_bench_writes_rows_tables_and_plots(ckpt, tmp_path, capsys):
    evals = [_eval_json(tmp_path / "a_eval.json", ckpt, True), _eval_json(tmp_path / "b_eval.json", ckpt, False)]
    trace = tmp_path / "lte.up"
    trace.write_text("\n".join(str(t) for t in range(2, 201, 2)))  # 1500 bytes every 2 ms: 6 Mbit/s
    out = tmp_path / "out"
    argv = ["--ckpt", ckpt, "--rates", "1,10", "--trace", trace, "--synthetic", 3, "--frames", 2, "--warmup", 1]
    code = bench_cli.main([*argv, "--emulator", "userspace", "--eval-json", *evals, "--out", out])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert all((out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in PLOTS)

    with open(out / "bench.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    # local x 2 windows + 4 remote modes x (2 fixed links x 2 windows + the trace, window 1 only), 2 frames each
    assert len(rows) == 2 * 2 + 4 * (2 * 2 + 1) * 2
    links = {"1 Mbps", "10 Mbps", "trace lte.up/lte.up"}
    assert {(r["mode"], r["link"]) for r in rows} == {("local", "none")} | {
        (mode, link) for mode in REMOTE_MODES for link in links
    }
    assert {float(r["rate_mbps"]) for r in rows if r["link"].startswith("trace")} == {6.0}
    assert all(r["error"] == "" and float(r["total_ms"]) > 0 for r in rows)
    sequential = [r for r in rows if r["window"] == "1" and r["chosen"] != "local" and r["skipped"] == "False"]
    assert sequential
    for r in sequential:
        assert int(r["wire_up_bytes"]) > int(r["sent_bytes"]) > 0 and int(r["wire_down_bytes"]) > 0
        assert float(r["overhead_ms"]) == pytest.approx(float(r["total_ms"]) - float(r["floor_ms"]), abs=0.01)
        assert float(r["overhead_ms"]) >= 0  # never below the physical floor, trace or not
        if not r["link"].startswith("trace"):
            transfer = int(r["sent_bytes"]) * 8e-3 / float(r["rate_mbps"])
            assert float(r["floor_ms"]) >= 20 + transfer  # RTT + uplink transfer at least
    trace_starts = sorted(float(r["sent_at_s"]) for r in sequential if r["link"].startswith("trace"))
    assert trace_starts  # the frames of a trace run are spread over the trace's period (0.2 s here)
    assert {r["window"] for r in rows} == {"1", "4"}

    report = json.loads((out / "bench.json").read_text())
    assert report["emulator"]["name"] == "userspace" and report["machine"]["cpus"] >= 1
    assert len(report["summary"]) == 13 and len(report["rows"]) == len(rows)
    for s in report["summary"]:
        assert s["p50_ms"] > 0 and s["floor_p50_ms"] > 0 and s["fps_window1"] > 0
        assert s["trace"] or s["fps_window4"] > 0
        assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert len(report["map"]) == 3 and all(
        c["best"] in ("local", "offload", "split", "split+filter") for c in report["map"]
    )
    assert all("auto_ok" in c and isinstance(c["split_beats_offload"], bool) for c in report["map"])
    assert (out / "cells.csv").read_text().startswith("device_cpu,mode,link")
    offload = [s for s in report["summary"] if s["mode"] == "offload"]
    split = [s for s in report["summary"] if s["mode"] == "split"]
    assert min(s["bytes_per_frame"] for s in offload) > max(s["bytes_per_frame"] for s in split)
    labels = {(Path(p["source"]).name, p["label"]) for p in report["accuracy"]}
    assert labels == {
        ("a_eval.json", "local (6 ch + filter)"), ("a_eval.json", "split 6 ch + filter"),
        ("a_eval.json", "offload JPEG q95 (6 ch + filter)"), ("a_eval.json", "offload JPEG q75 (6 ch + filter)"),
        ("b_eval.json", "local (3 ch + filter)"), ("b_eval.json", "split 3 ch + filter"),
    }  # fmt: skip
    twice, _ = accuracy_points([evals[1], evals[1]])
    assert [p["label"] for p in twice][:2] == ["local (3 ch + filter) [b_eval]", "split 3 ch + filter [b_eval]"]
    assert any("b_eval.json has no jpeg_ap" in note for note in report["accuracy_notes"])

    md = (out / "bench.md").read_text()
    assert md == stdout
    assert "Command: `split-bench --ckpt" in md and "Emulator: userspace" in md and "torch" in md
    assert "| full | split | 1 Mbps |" in md and "floor p50" in md and "## Targets" in md and "![ap_vs_bytes.png]" in md
    assert "## Crossover map" in md and "## Offload encodings of these frames" in md and "auto's p50 is within" in md
    assert "[22/22]" in stderr


def test_physical_floor():
    spec = bench.LinkSpec(up_mbps=2.0, down_mbps=8.0, rtt_ms=20.0)
    timing = {"head": 5.0, "filter": 1.0, "encode": 2.0, "network": 60.0, "total": 100.0}
    result = FrameResult(0, "x", "split", sent_bytes=10_000, timing_ms=timing, server_ms=10.0, received_bytes=1000)
    # device 8 + 10 kB at 2 Mbit/s (40 ms) + RTT 20 + server 10 + 1 kB at 8 Mbit/s (1 ms)
    assert bench.physical_floor(result, spec) == pytest.approx(79.0)
    skipped = FrameResult(0, "x", "split", skipped=True, timing_ms={"head": 5.0, "filter": 1.0, "total": 6.5})
    assert bench.physical_floor(skipped, spec) == pytest.approx(6.0)
    local = FrameResult(0, "x", "local", timing_ms={"head": 5.0, "tail": 30.0, "total": 36.0})
    assert bench.physical_floor(local, None) == pytest.approx(35.0)
    assert bench.physical_floor(local, spec) == pytest.approx(35.0)  # auto ran it locally: the link is not used
    assert bench.physical_floor(FrameResult(0, "x", "split", error="UNAVAILABLE: down"), spec) is None


def test_accuracy_points_of_a_teacher_and_unreadable_files(tmp_path):
    teacher = tmp_path / "teacher_eval.json"
    teacher.write_text(
        json.dumps(
            {
                "checkpoint": "runs/teacher/final.pt",
                "student": False,
                "runs": [{"mode": "whole", "quantization": None, "ap": {"bbox": {"AP": 0.39}}, "bytes": None}],
                "jpeg": {"95": 11390.0},
                "jpeg_ap": {"95": {"bbox": {"AP": 0.37}}},
            }
        )
    )
    mask = tmp_path / "mask_eval.json"
    mask.write_text(json.dumps({"arch": "mask_rcnn", "runs": [{"mode": "whole", "ap": {"bbox": {"AP": 0.42}}}]}))
    points, notes = accuracy_points([teacher, mask, tmp_path / "missing.json"], arch="faster_rcnn")
    assert [(p["kind"], p["label"], p["bytes"], p["ap"]) for p in points] == [
        ("local", "local (teacher)", 0, 0.39),
        ("offload", "offload JPEG q95 (teacher)", 11390.0, 0.37),
    ]
    assert len(notes) == 1 and "missing.json: not read" in notes[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rates", "1,x"], "--rates: must be a comma list of numbers"),
        (["--modes", "split,teleport"], "--modes: must list distinct modes"),
        (["--loss", "1.5"], "--loss: must be in [0, 1), got 1.5"),
        (["--window", "1"], "--window: must be >= 2"),
        (["--emulator", "netem"], "netem needs root"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "unavailable", lambda: "netem needs root (network namespaces and tc)")
    code = bench_cli.main(["--ckpt", ckpt, "--frames", 1, "--out", tmp_path / "out", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("split-bench: error: ") and message in err[0]


def test_split_filter_needs_a_filter(tmp_path, capsys):
    path = tmp_path / "nofilter.pt"
    save_checkpoint(tiny_student("faster_rcnn"), path, NAMES)
    code = bench_cli.main(["--ckpt", path, "--modes", "split+filter", "--frames", 1, "--out", tmp_path / "out"])
    assert code == 2 and "has no filter" in capsys.readouterr().err
    assert bench_cli.main(["--ckpt", path, "--background-filter", "-1", "--out", tmp_path / "out"]) == 2
    assert "--background-filter: must be a finite number >= 0" in capsys.readouterr().err


def test_split_filter_runs_the_background_filter(tmp_path, capsys):
    """Without a neural filter, --background-filter gives split+filter a filter to run: the mobile client's own."""
    path = tmp_path / "nofilter.pt"
    save_checkpoint(tiny_student("faster_rcnn"), path, NAMES)
    argv = ["--ckpt", path, "--modes", "split+filter", "--rates", "10", "--synthetic", 4, "--frames", 4]
    argv += ["--warmup", 0, "--no-stream", "--emulator", "userspace", "--background-filter", "1e9"]
    assert bench_cli.main([*argv, "--out", tmp_path / "out"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["settings"]["background_filter"] == 1e9 and not report["settings"]["neural_filter"]
    assert "the background filter (threshold 1e+09) skipped" in (tmp_path / "out" / "bench.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_server_that_cannot_start_exits_2(ckpt, tmp_path, capsys):
    argv = ["--ckpt", ckpt, "--modes", "split", "--frames", 1, "--emulator", "userspace", "--server-device", "cuda"]
    assert bench_cli.main([*argv, "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("split-bench: error: edge-server did not start (exit status 2): edge-server: error:")


def test_netem_options():
    assert netem_args(None, 10, 0, 0) == ["netem", "delay", "10ms"]
    assert netem_args(0.5, 10, 2, 0.01) == ["netem", "delay", "10ms", "2ms", "rate", "500kbit", "loss", "1%"]


def test_netem_works_or_fails_in_one_line_leaving_nothing_behind():
    link = NetemLink()
    try:
        with link:
            assert link.wrap(["true"])[:4] == ["ip", "netns", "exec", link.namespace]
            assert all(n >= 0 for n in link.counters())
    except NetemError as e:
        assert len(str(e).splitlines()) == 1
    if shutil.which("ip"):
        assert link.namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", link.client_if], capture_output=True).returncode != 0


def test_report_names_largest_overhead_in_ms_and_in_percent_and_the_real_input_size(tmp_path):
    from splitdet.benchmarks.bench_report import describe_input, targets

    def run(link: str, rate: float, ms: float, pct: float) -> dict:
        return {
            "device_cpu": None, "mode": "split", "link": link, "rate_mbps": rate, "trace": False,
            "bytes_per_sent_frame": None, "p50_ms": 100.0, "overhead_p50_ms": ms, "overhead_pct": pct,
            "encode_p50_ms": 0.4, "server_decode_p50_ms": 0.5, "below_floor": 0,
        }  # fmt: skip

    report = {
        "summary": [run("0.5 Mbps", 0.5, 4.8, 2.4), run("1 Mbps", 1.0, 4.5, 2.7)],
        "settings": {"input_size": describe_input(240, 320, 160, 160)},
    }
    lines = targets(report)
    overhead = next(line for line in lines if "runtime overhead" in line)
    assert "largest 4.8 ms (2.4 %) for split at 0.5 Mbps" in overhead
    assert "largest share of the floor 2.7 % (4.5 ms) for split at 1 Mbps" in overhead
    assert "frames measured below their floor: 0" in overhead
    codec = next(line for line in lines if "quantize+zstd" in line)
    assert "input size (120x160, padded to 128x160, from 240x320 frames at min/max size 160/160)" in codec
    assert "800x1333" not in codec


def test_crossover_cells_and_their_targets():
    from splitdet.benchmarks.bench_report import crossover, targets

    def s(device, mode, link, rate, p50, **extra) -> dict:
        return {
            "device_cpu": device, "mode": mode, "link": link, "rate_mbps": rate, "trace": False, "schedule": False,
            "p50_ms": p50, "p95_ms": p50 + 5, "fps_window1": 1000 / p50, "floor_p50_ms": p50 - 5,
            "chosen": {"split": 16} if mode == "auto" else None, "bytes_per_frame": 9000 if mode == "offload" else 4000,
            "bytes_per_sent_frame": 9000 if mode == "offload" else 4000, "head_p50_ms": 30.0, "filter_p50_ms": None,
            "encode_p50_ms": 2.0, "network_p50_ms": 50.0, "tail_p50_ms": 95.0, "overhead_p50_ms": 3.0,
            "overhead_pct": 1.0, "server_decode_p50_ms": 0.5, "below_floor": 0, "skipped": 0, "frames": 16,
            **extra,
        }  # fmt: skip

    summaries = [
        s(0.25, "local", "none", None, 640.0),
        s(0.25, "offload", "1 Mbps", 1.0, 200.0),
        s(0.25, "split", "1 Mbps", 1.0, 180.0),
        s(0.25, "auto", "1 Mbps", 1.0, 190.0),
        s(0.25, "offload", "5 Mbps", 5.0, 140.0),
        s(0.25, "split", "5 Mbps", 5.0, 155.0),
        s(0.25, "auto", "5 Mbps", 5.0, 170.0),
    ]
    cells = crossover(summaries)
    assert [(c["link"], c["best"], c["split_beats_offload"], c["split_beats_local"]) for c in cells] == [
        ("1 Mbps", "split", True, True),
        ("5 Mbps", "offload", False, True),
    ]
    assert cells[0]["margin"] == pytest.approx(200 / 180, abs=1e-3) and cells[0]["auto_ok"]
    assert not cells[1]["auto_ok"] and cells[1]["auto_vs_best_ms"] == 30.0  # 14 ms over 10 % of 140
    lines = targets({"summary": summaries, "map": cells, "settings": {"input_size": None}})
    text = "\n".join(lines)
    assert "beats offload in 1 of 2 cells" in text and "beats local in 2 of 2 cells" in text
    assert "0.25 core, 5 Mbps: split 155.0 ms vs offload 140.0 ms: split's head + encode" in text
    assert "auto's p50 is within 10 % or 10 ms of the best fixed mode in 1 of 2 cells" in text


def test_report_paths_are_relative_to_the_repository(tmp_path, monkeypatch):
    from splitdet.benchmarks.paths import shown_args, shown_path

    REPO = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(REPO)
    assert shown_path(REPO / "common" / "assets" / "demo.pt") == "common/assets/demo.pt"
    assert shown_path("runs/x/final.pt") == "runs/x/final.pt"
    assert shown_path(Path("/elsewhere/on/some/machine/student.pt")) == "student.pt"
    assert shown_args(["--ckpt", str(REPO / "a.pt"), "--workers", "2"]) == ["--ckpt", "a.pt", "--workers", "2"]
    for committed in [*(REPO / "benchmarks" / "results").rglob("*"), *(REPO / "studies" / "results").rglob("*")]:
        if committed.suffix in (".md", ".json", ".csv"):
            text = committed.read_text()
            assert not any(root in text for root in ("/work/", "/root/", "/tmp/", "/home/")), committed


def test_onnx_runtime_runs_the_exported_head_and_auto_never_goes_local(ckpt, tmp_path, capsys):
    """split-bench --runtime onnx --head FILE: the emulated device runs the torch-free client's head; local stays
    torch; auto chooses between split and offload."""
    from splitdet.common import model_cli

    head = tmp_path / "head.onnx"
    assert model_cli.main(["export", str(ckpt), "--out", str(head), "--format", "onnx"]) == 0
    capsys.readouterr()
    argv = ["--ckpt", ckpt, "--runtime", "onnx", "--head", head, "--modes", "local,split+filter,auto", "--rates", "10"]
    argv += ["--synthetic", 4, "--frames", 4, "--warmup", 0, "--no-stream", "--emulator", "userspace"]
    assert bench_cli.main([*argv, "--out", tmp_path / "out"]) == 0
    stderr = capsys.readouterr().err
    assert "ONNX Runtime (float32 weights) head" in stderr
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["settings"]["runtime"].startswith("onnx (") and "float32 weights" in report["settings"]["runtime"]
    rows = report["rows"]
    assert {r["mode"] for r in rows} == {"local", "split+filter", "auto"} and all(r["error"] is None for r in rows)
    assert {r["chosen"] for r in rows if r["mode"] == "auto"} <= {"split", "offload"}
    assert "Head runtime: onnx" in (tmp_path / "out" / "bench.md").read_text()


def test_two_onnx_heads_give_one_benchmark_each(ckpt, tmp_path, capsys):
    """split-bench --runtime onnx --head A B (a float32 and an int8 head, say): one report per head."""
    from splitdet.common import model_cli

    heads = [tmp_path / "fp.onnx", tmp_path / "other.onnx"]
    assert model_cli.main(["export", str(ckpt), "--out", str(heads[0]), "--format", "onnx"]) == 0
    shutil.copy(heads[0], heads[1])
    argv = ["--ckpt", ckpt, "--runtime", "onnx", "--head", *heads, "--modes", "split", "--rates", "10"]
    argv += ["--synthetic", 2, "--frames", 2, "--warmup", 0, "--no-stream", "--emulator", "userspace"]
    assert bench_cli.main([*argv, "--out", tmp_path / "out"]) == 0, capsys.readouterr().err
    for head in heads:
        report = json.loads((tmp_path / "out" / head.stem / "bench.json").read_text())
        assert head.name in report["settings"]["runtime"] and len(report["rows"]) == 2
    assert bench_cli.main([*argv[:5], heads[0], heads[0], *argv[7:], "--out", tmp_path / "out"]) == 2
    assert "distinct names" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runtime", "onnx"], "--head: runtime onnx needs a head file"),
        (["--head", "h.onnx"], "--head: is for runtime onnx"),
        (["--runtime", "onnx", "--head", "missing.onnx"], "ONNX head not found"),
    ],
)
def test_onnx_runtime_usage_errors(argv, message, ckpt, tmp_path, capsys):
    assert bench_cli.main(["--ckpt", ckpt, "--frames", 1, "--out", tmp_path / "out", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_could_split_win_weighs_saved_bytes_at_the_rate_against_device_time():
    from splitdet.benchmarks.bench_report import could_split_win

    cell = {"rate_mbps": 1.0}
    # 5,000 B saved at 1 Mbps = 40 ms of link time
    assert could_split_win(cell, device_ms=30.0, offload_device_ms=2.0, saved_bytes=5000).startswith("split could win")
    verdict = could_split_win(cell, device_ms=60.0, offload_device_ms=2.0, saved_bytes=5000)
    assert verdict.startswith("no split could win") and "40.0 ms" in verdict and "58.0 ms" in verdict
    assert "no fixed rate" in could_split_win({"rate_mbps": None}, 1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"window": 1}, "window", "must be >= 2 (window 1 is the latency run), got 1"),
        ({"loss": 1.0}, "loss", "must be in [0, 1), got 1"),
        ({"rates": "1,x"}, "rates", "must be a comma list of numbers, got '1,x'"),
        ({"modes": "split,split"}, "modes", "must list distinct modes"),
        ({"schedule": "20:20", "trace": ("up",)}, "schedule", "and trace are separate runs"),
        ({"runtime": "onnx"}, "head", "runtime onnx needs a head file"),
    ],
)
def test_bench_options_refuse_bad_values(kwargs, field, message):
    with pytest.raises(OptionsError) as e:
        BenchOptions(**kwargs)
    assert isinstance(e.value, ValueError) and e.value.field == field and message in e.value.message
    assert bench_cli.parse(["--rates", "1,2", "--head", "a.onnx", "--runtime", "onnx"]) == BenchOptions(
        rates="1,2", head=("a.onnx",), runtime="onnx"
    )
