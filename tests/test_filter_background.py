"""--background-filter: a frame that looks like the empty background the server's answers taught is skipped and
reports no detections; a frame with something new is sent; answers with objects teach nothing; a background that
absorbed objects is dropped; at most --background-max-skipped frames in a row are skipped."""

from __future__ import annotations

import numpy as np
import pytest

from splitdet.edge_server.server import serve
from splitdet.mobile_client import cli, runner
from splitdet.mobile_client.background import BackgroundFilter, background_score, stem_cells
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.torch_head import ClientModel
from studies.filter_background import choose, replay

_rng = np.random.default_rng(0)
SCENE = _rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-3, 4, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def with_object(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[16:48, 24:56] = (250, 20, 20)
    return out


def test_stem_cells_average_every_cell_the_last_ones_partial():
    stem = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    cells = stem_cells(stem, cell=4)
    assert cells.shape == (2, 2, 2)
    assert cells[1, 0, 0] == pytest.approx(stem[1, :4, :4].mean())
    assert cells[0, 1, 1] == pytest.approx(stem[0, 4:, 4:].mean())  # a 2 x 1 leftover cell
    assert background_score(cells, cells) == 0.0
    assert background_score(cells, cells[:, :1]) == float("inf")  # another frame size is never background


def test_the_filter_learns_only_from_empty_answers_and_skipped_frames():
    quiet, busy = np.zeros((4, 3, 3), np.float32), np.zeros((4, 3, 3), np.float32)
    busy[:, 1, 1] = 1.0
    gate = BackgroundFilter(threshold=0.1, rate=0.5, max_skipped=2)
    assert not gate.check(0, quiet)  # no background yet: sent
    gate.answer(0, empty=True)
    assert gate.check(1, quiet + 0.01) and gate.check(2, quiet)  # looks like the background: skipped
    assert not gate.check(3, quiet)  # the third in a row is sent anyway
    assert not gate.check(4, busy)  # something new: sent
    gate.answer(4, empty=False)  # objects: not learnt
    assert gate.score(busy) == pytest.approx(1.0, rel=0.05)
    gate.forget(3)  # failed: not learnt either
    assert not gate.check(5, busy)
    gate.answer(5, empty=True)  # the server says this is empty after all: it joins the background
    assert gate.score(busy) == pytest.approx(0.25, rel=0.05)


def test_a_background_that_absorbed_objects_is_dropped():
    gate = BackgroundFilter(threshold=0.1, rate=1.0, max_skipped=1)
    frame = np.zeros((4, 2, 2), np.float32)
    assert not gate.check(0, frame)
    gate.answer(0, empty=True)
    assert gate.check(1, frame)
    assert not gate.check(2, frame)  # sent only because of max_skipped, and it holds objects:
    gate.answer(2, empty=False)
    assert gate.background is None  # the background cannot be trusted: every frame is sent until an empty answer
    assert not gate.check(3, frame)


@pytest.mark.parametrize(
    "kwargs", [dict(threshold=0.0), dict(threshold=0.1, rate=0.0), dict(threshold=0.1, max_skipped=0)]
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError, match="need threshold"):
        BackgroundFilter(**kwargs)


def test_replay_and_threshold_choice():
    empty_cells = [np.full((2, 2, 2), 0.001 * i, np.float32) for i in range(10)]
    cells = [*empty_cells[:5], np.ones((2, 2, 2), np.float32), *empty_cells[5:]]
    positive = np.array([False] * 5 + [True] + [False] * 5)
    answers = list(~positive)
    skipped = replay(cells, answers, threshold=0.5, rate=0.5, max_skipped=30)
    assert skipped.tolist() == [False, True, True, True, True, False, True, True, True, True, True]
    points = [
        {"threshold": 0.1, "empty_skipped": 0.5, "lost": 0.0, "found_lost": 0.0},
        {"threshold": 2.0, "empty_skipped": 1.0, "lost": 0.5, "found_lost": 0.0},
    ]
    assert choose(points, "lost")["threshold"] == 0.1  # the most skipped at <= 1 % lost
    assert choose(points, "found_lost")["threshold"] == 2.0


@pytest.fixture(scope="module")
def server(ckpt):
    server = serve(ckpt, host="127.0.0.1", port=0, workers=2)
    yield server
    server.stop(0)


def _threshold(ckpt) -> float:
    """Between the tiny head's score for sensor noise and for an object on the scene."""
    model = ClientModel.load(ckpt)
    base = model.run_head(SCENE, False, cells=True).stem_cells
    noise = background_score(model.run_head(noisy(SCENE, 9), False, cells=True).stem_cells, base)
    obj = background_score(model.run_head(with_object(SCENE), False, cells=True).stem_cells, base)
    assert obj > 10 * noise
    return float(np.sqrt(noise * obj))


def _scene_then_changed_scene(argv: list[str]) -> list:
    """The client of ``argv`` (+ ``--background-rate 1``) on the scene, its noisy copies, the scene with an
    object and that one's noisy copies: the nine frames' results, none failed."""
    pipeline, _, _ = runner.build_pipeline(cli.parse([*argv, "--background-rate", "1"]))
    changed = with_object(SCENE)
    images = [SCENE, SCENE, noisy(SCENE, 1), noisy(SCENE, 2), changed, *(noisy(changed, i) for i in range(4))]
    try:
        results = list(pipeline.run(Frame(i, "cam", image) for i, image in enumerate(images)))
    finally:
        pipeline.close()
    assert [r.error for r in results] == [None] * len(images)
    return results


@pytest.mark.parametrize("window", [1, 3])
def test_background_frames_are_skipped_end_to_end(server, ckpt, window):
    """Every answer is empty at --score-threshold 1: the scene is learnt from frame 0 and its noisy copies are
    skipped; the changed scene (an object in it) is sent, answered empty too, and becomes the background (rate 1)."""
    argv = ["--server", f"127.0.0.1:{server.port}", "--ckpt", str(ckpt), "--synthetic", "1", "--no-filter"]
    argv += ["--score-threshold", "1", "--window", str(window), "--background-filter", str(_threshold(ckpt))]
    results = _scene_then_changed_scene(argv)
    sent = [r.sent_bytes > 0 for r in results]
    if window == 1:
        assert sent == [True, False, False, False, True, False, False, False, False]
    else:  # pipelined: a frame may be prepared before the answers of the frames just before it arrive
        assert sent[0] and sent[4] and not sent[-1]
    assert all(r.skipped and r.detections == [] for r, s in zip(results, sent, strict=True) if not s)
    assert "filter" in results[-1].timing_ms


def test_background_filter_on_the_onnx_head_end_to_end(server, ckpt, tmp_path):
    """mobile-client --runtime onnx --background-filter T: the ONNX head's stem cells skip the same frames."""
    from splitdet.common import model_cli

    head = tmp_path / "head.onnx"
    assert model_cli.main(["export", str(ckpt), "--out", str(head), "--format", "onnx"]) == 0
    argv = ["--server", f"127.0.0.1:{server.port}", "--runtime", "onnx", "--head", str(head), "--synthetic", "1"]
    argv += ["--no-filter", "--score-threshold", "1", "--window", "1", "--background-filter", str(_threshold(ckpt))]
    results = _scene_then_changed_scene(argv)
    assert [r.sent_bytes > 0 for r in results] == [True, False, False, False, True, False, False, False, False]


def test_answers_with_objects_teach_nothing(server, ckpt):
    """The tiny model answers every frame with large boxes at --score-threshold 0: no frame is ever skipped."""
    argv = ["--server", f"127.0.0.1:{server.port}", "--ckpt", str(ckpt), "--synthetic", "1", "--no-filter"]
    argv += ["--score-threshold", "0", "--window", "1", "--background-filter", "1000"]
    pipeline, _, _ = runner.build_pipeline(cli.parse(argv))
    try:
        results = list(pipeline.run(Frame(i, "cam", SCENE) for i in range(4)))
    finally:
        pipeline.close()
    assert all(r.detections for r in results)
    assert [r.skipped for r in results] == [False] * 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--background-filter", "-1"], "--background-filter: must be a finite number >= 0, got -1.0"),
        (["--background-filter", "nan"], "--background-filter: must be a finite number >= 0, got nan"),
        (["--background-filter", "0.1", "--background-rate", "0"], "--background-rate: must be in (0, 1], got 0"),
        (
            ["--background-filter", "0.1", "--background-max-skipped", "0"],
            "--background-max-skipped: must be >= 1, got 0",
        ),
        (["--background-filter", "0.1", "--mode", "offload"], "needs mode split or auto, not offload"),
        (["--background-filter", "0.1", "--images", "x/*.jpg"], "--background-filter: is for a fixed camera's frames"),
    ],
)
def test_bad_background_options_exit_2(extra, message, capsys):
    source = [] if "--images" in extra else ["--synthetic", "3"]
    assert cli.main(["--server", "127.0.0.1:1", *source, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_frames_the_static_gate_reuses_leave_nothing_pending(ckpt):
    """With --skip-static too, a frame the background filter let through but the static gate reused is never sent:
    no answer will come for it, so the filter does not keep it (a camera runs for days)."""
    from splitdet.mobile_client.pipeline import Pipeline
    from splitdet.mobile_client.settings import Options
    from tests.conftest import TINY_NAMES

    options = Options(mode="split", skip_static=0.05, background_filter=1e-9)
    pipeline = Pipeline(options, TINY_NAMES, model=ClientModel.load(ckpt))
    works = [pipeline.prepare(Frame(i, "cam", image)) for i, image in enumerate([SCENE, noisy(SCENE, 1), SCENE])]
    assert works[0].request is not None and works[1].result.reused_from == 0 and works[2].result.reused_from == 0
    assert list(pipeline.background._pending) == [0]


def test_the_stem_cells_are_timed_only_when_asked_for(ckpt):
    model, timing = ClientModel.load(ckpt), {}
    assert model.run_head(SCENE, False, timing).stem_cells is None and "filter" not in timing
    assert model.run_head(SCENE, False, timing, cells=True).stem_cells is not None and "filter" in timing
