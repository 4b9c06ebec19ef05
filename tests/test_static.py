"""--skip-static: a frame whose bottleneck has not changed is not sent and reports the last sent frame's detections,
marked reused; a frame that changed is sent; at most --skip-static-max frames in a row are reused."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from splitdet.edge_server.server import serve
from splitdet.mobile_client import cli, runner
from splitdet.mobile_client.auto import AutoPolicy
from splitdet.mobile_client.pipeline import FrameResult, HeadResult, Pipeline
from splitdet.mobile_client.report import Report, result_json
from splitdet.mobile_client.settings import Options
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.static import StaticGate, change
from splitdet.mobile_client.torch_head import ClientModel
from studies import skip_static
from tests.conftest import TINY_NAMES

_rng = np.random.default_rng(0)
SCENE = _rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
OTHER = _rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)  # the scene changed completely


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` as a camera sees it again: sensor noise of up to 3 levels (the tiny head: change about 0.01)."""
    noise = np.random.default_rng(seed).integers(-3, 4, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def test_change_is_scale_free():
    a = _rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    b = a + np.float32(0.1) * _rng.normal(size=a.shape).astype(np.float32)
    assert change(a, a) == 0.0
    assert change(a, b) == pytest.approx(change(7 * a, 7 * b), rel=1e-5)
    assert change(a, b) == pytest.approx(np.abs(b - a).mean() / np.abs(a).mean(), rel=1e-5)
    assert change(a, a[..., :4]) == float("inf")  # another frame size is always sent


def test_gate_caps_reuse_and_forgets_a_failed_reference():
    still = np.ones((1, 3, 4, 4), np.float32)
    gate = StaticGate(threshold=0.1, max_reused=2)
    assert [gate.check(i, still) for i in range(5)] == [None, 0, 0, None, 3]
    gate.forget(2)  # not the reference: no effect
    assert gate.check(5, still) == 3
    gate.forget(3)  # the reference failed: the next frame is sent
    assert gate.check(6, still) is None
    assert gate.check(7, 2 * still) is None  # changed by 1.0 >= 0.1


@pytest.fixture(scope="module")
def server(ckpt):
    server = serve(ckpt, host="127.0.0.1", port=0, workers=2)
    yield server
    server.stop(0)


@pytest.mark.parametrize("window", [1, 3])
def test_static_frames_reuse_the_last_answer(server, ckpt, window):
    argv = ["--server", f"127.0.0.1:{server.port}", "--ckpt", str(ckpt), "--synthetic", "1", "--no-filter"]
    argv += ["--score-threshold", "0", "--window", str(window), "--skip-static", "0.05", "--skip-static-max", "2"]
    pipeline, _, _ = runner.build_pipeline(cli.parse(argv))
    images = [SCENE, noisy(SCENE, 1), noisy(SCENE, 2), noisy(SCENE, 3), OTHER, noisy(OTHER, 4)]
    try:
        results = list(pipeline.run(Frame(i, "cam", image) for i, image in enumerate(images)))
    finally:
        pipeline.close()
    assert [r.error for r in results] == [None] * 6
    # 1, 2 static; 3 static but the cap (2) sends it; 4 moved; 5 static again
    assert [r.reused_from for r in results] == [None, 0, 0, None, None, 4]
    assert [r.sent_bytes > 0 for r in results] == [True, False, False, True, True, False]
    assert results[0].detections and results[4].detections != results[0].detections
    assert results[1].detections == results[2].detections == results[0].detections
    assert results[5].detections == results[4].detections
    line = json.loads(json.dumps(result_json(results[1])))
    assert line["reused"] is True and line["reused_from"] == 0 and line["sent_bytes"] == 0
    assert result_json(results[0])["reused"] is False and "reused_from" not in result_json(results[0])
    report = Report(io.StringIO(), "split")
    for result in results:
        report.add(result)
    summary = report.summary()
    assert "reused 3" in summary
    assert f"about {3 * np.mean([r.sent_bytes for r in results if r.sent_bytes]):,.0f} bytes saved" in summary


class _Rejecting:
    """The tiny head with a filter that rejects one image (by identity)."""

    def __init__(self, model: ClientModel, rejected: np.ndarray) -> None:
        self.model, self.rejected = model, rejected

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def run_head(
        self, rgb: np.ndarray, use_filter: bool, timing: dict | None = None, cells: bool = False
    ) -> HeadResult:
        out = self.model.run_head(rgb, use_filter, timing, cells)
        return replace(out, bottleneck=None) if rgb is self.rejected else out


def test_filtered_and_other_mode_frames_are_no_reference(ckpt):
    """No server: :meth:`Pipeline.prepare` alone decides what would be sent."""
    rejected = noisy(SCENE, 1)
    images = [rejected, SCENE, noisy(SCENE, 2), noisy(SCENE, 3), noisy(SCENE, 4)]
    modes = ["split", "split", "split", "offload", "split"]  # auto mode's choices
    options = Options(mode="auto", skip_static=0.05, offload_size=None)
    model = _Rejecting(ClientModel.load(ckpt), rejected)
    pipeline = Pipeline(options, TINY_NAMES, model=model, choose_mode=modes.__getitem__)
    works = [pipeline.prepare(Frame(i, "cam", image)) for i, image in enumerate(images)]
    assert works[0].result.skipped  # the filter's: never a reference
    assert works[1].request is not None  # so frame 1 is sent
    assert works[2].result.reused_from == 1
    assert works[3].mode == "offload" and works[3].request is not None  # offload frames do not use it
    assert works[4].request is not None  # and after one, the next split frame is sent


def test_frames_reusing_a_frame_that_failed_fail_with_it(ckpt):
    """Pipelined: frames 4 and 5 are static, prepared while frame 3 is on a stalled server; frame 3 misses its
    deadline, so they fail too, and frame 6 (static as well) is sent instead of reusing it."""
    server = serve(ckpt, host="127.0.0.1", port=0, workers=2)
    infer, calls = server.engine.infer_bottlenecks, []

    def stall_fourth(frames):
        calls.append(len(frames))
        if len(calls) == 4:
            time.sleep(1.5)
        return infer(frames)

    server.engine.infer_bottlenecks = stall_fourth
    argv = ["--server", f"127.0.0.1:{server.port}", "--ckpt", str(ckpt), "--synthetic", "1", "--no-filter"]
    argv += ["--window", "3", "--timeout-s", "1", "--skip-static", "0.05"]
    pipeline, _, _ = runner.build_pipeline(cli.parse(argv))
    scenes = [_rng.integers(0, 255, SCENE.shape, dtype=np.uint8) for _ in range(3)]  # answered: the window opens
    images = [*scenes, SCENE, noisy(SCENE, 1), noisy(SCENE, 2), noisy(SCENE, 3)]
    try:
        results = list(pipeline.run(Frame(i, "cam", image) for i, image in enumerate(images)))
    finally:
        pipeline.close()
        server.stop(0)
    assert [r.reused_from for r in results] == [None, None, None, None, 3, 3, None]
    assert [r.error is None for r in results[:3]] == [True] * 3
    assert results[3].error.startswith("DEADLINE_EXCEEDED")
    assert results[4].error == results[5].error == "frame 3, whose detections it reuses, failed"


def test_auto_mode_learns_only_the_head_cost_from_a_reused_frame():
    policy = AutoPolicy(log=lambda _: None)
    reused = FrameResult(1, "cam", "split", timing_ms={"head": 4.0, "filter": 1.0, "total": 5.1}, reused_from=0)
    policy.observe(reused)  # it has no encode or network time
    policy.observe(FrameResult(2, "cam", "local", timing_ms={"head": 6.0, "tail": 20.0, "total": 26.1}))
    assert policy.predict() == {"split": None, "offload": None, "local": pytest.approx(5.5 + 20.0)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--skip-static", "-0.1"], "--skip-static: must be a finite number >= 0, got -0.1"),
        (["--skip-static", "nan"], "--skip-static: must be a finite number >= 0, got nan"),
        (["--skip-static", "0.05", "--skip-static-max", "0"], "--skip-static-max: must be >= 1, got 0"),
        (
            ["--skip-static", "0.05", "--mode", "offload"],
            "--skip-static: compares the bottlenecks sent to the server: needs mode split or auto, not offload",
        ),
        (
            ["--skip-static", "0.05", "--images", "photos/*.jpg"],
            "--skip-static: is for video sources (video, camera, synthetic), not images",
        ),
        (["--static-ratio", "1.5"], "--static-ratio: must be in [0, 1], got 1.5"),
        (
            ["--static-ratio", "0.5", "--video", "clip.mp4"],
            "--static-ratio: is for the synthetic video, not a video source",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    if not {"--images", "--video"} & set(argv):
        argv = [*argv, "--synthetic", "5"]
    assert cli.main(["--server", "127.0.0.1:1", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mobile-client: error: {message}"]


def test_benchmark_writes_its_table(ckpt, tmp_path):
    threads = torch.get_num_threads()
    try:
        assert (
            skip_static.main(
                ["--ckpt", str(ckpt), "--frames", "6", "--thresholds", "0.5", "--out", str(tmp_path / "s")]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "s.json").read_text())
    off, on = report["runs"]
    assert off["threshold"] == 0 and off["sent"] == 6 and off["reused"] == 0 and off["saved"] == 0.0
    assert on["sent"] + on["reused"] + on["skipped"] == 6 and on["reused"] > 0
    assert on["saved"] == pytest.approx(1 - on["bytes_total"] / off["bytes_total"])
    text = (tmp_path / "s.md").read_text()
    assert "python -m studies.skip_static --ckpt" in text and "machine:" in text and "| 0.5 |" in text
