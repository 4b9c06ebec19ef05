"""mobile-client and split-demo against an in-process edge server on loopback (tiny models, port 0)."""

from __future__ import annotations

import json
import shutil
import time
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from splitdet.common.checkpoint import save_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.drawing import color_for
from splitdet.common.options import OptionsError
from splitdet.edge_server.server import serve
from splitdet.mobile_client import cli, demo, runner, sources, visualize
from splitdet.mobile_client.auto import AutoPolicy, link_estimate
from splitdet.mobile_client.link import LinkConfig, StreamLink, channel_options
from splitdet.mobile_client.pipeline import FrameResult
from splitdet.mobile_client.settings import Options, RunOptions
from splitdet.mobile_client.sources import Frame, Source
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from tests.conftest import self_signed_cert, tiny_student

NAMES = ["__background__", "disc", "ring", "star"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny Faster R-CNN students with a neural filter: 8-bit and unquantized codec defaults, and another model."""
    d = tmp_path_factory.mktemp("ckpt")
    model = tiny_student("faster_rcnn", with_filter=True)
    paths = {"q8": d / "tiny.pt", "none": d / "tiny-none.pt", "other": d / "other.pt"}
    save_checkpoint(model, paths["q8"], NAMES)
    save_checkpoint(model, paths["none"], NAMES, codec=CodecSettings(quantization="none"))
    save_checkpoint(tiny_student("faster_rcnn", seed=1), paths["other"], NAMES)
    return paths


@contextmanager
def running(ckpt: Path, **options):
    server = serve(ckpt, host="127.0.0.1", port=0, workers=2, **options)
    try:
        yield server
    finally:
        server.stop(0)


def run_client(capsys, *argv) -> tuple[int, list[dict], str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def matched(expected: list[dict], actual: list[dict], box_tol: float, score_tol: float) -> float:
    """Share of ``expected`` detections with a same-label ``actual`` one within the tolerances."""
    hits = 0
    for e in expected:
        hits += any(
            a["label"] == e["label"]
            and abs(a["score"] - e["score"]) <= score_tol
            and max(abs(x - y) for x, y in zip(a["box"], e["box"], strict=True)) <= box_tol
            for a in actual
        )
    return hits / max(len(expected), 1)


def test_split_matches_local(ckpts, capsys):
    frames = ["--synthetic", 3, "--ckpt", ckpts["none"], "--score-threshold", 0, "--no-filter"]
    code, local, _ = run_client(capsys, "--mode", "local", *frames)
    assert code == 0
    with running(ckpts["none"]) as server:
        address = f"127.0.0.1:{server.port}"
        code, exact, err = run_client(capsys, "--server", address, "--window", 3, *frames)
        assert code == 0, err
        code, q8, err = run_client(capsys, "--server", address, "--window", 1, "--quantization", "per_tensor", *frames)
        assert code == 0, err
    assert all(line["detections"] for line in local)
    # Unquantized bottleneck: the server's tail sees exactly what the local tail sees.
    assert [line["detections"] for line in exact] == [line["detections"] for line in local]
    for want, got in zip(local, q8, strict=True):
        assert matched(want["detections"], got["detections"], box_tol=3.0, score_tol=0.02) >= 0.9
    assert np.mean([line["sent_bytes"] for line in q8]) < np.mean([line["sent_bytes"] for line in exact]) / 2
    assert {"head", "filter", "encode", "network", "server_decode", "tail", "total"} >= set(exact[0]["timing_ms"])
    assert {"head", "encode", "network", "server_decode", "tail", "total"} <= set(exact[0]["timing_ms"])
    assert "p95 ms" in err and "frames 3" in err


def test_offload_mode_over_dns_target(ckpts, capsys):
    with running(ckpts["q8"]) as server:
        code, lines, err = run_client(
            capsys, "--server", f"dns:///127.0.0.1:{server.port}", "--mode", "offload", "--synthetic", 2,
            "--jpeg-quality", 80, "--score-threshold", 0,
        )  # fmt: skip
    assert code == 0, err
    assert [line["mode"] for line in lines] == ["offload", "offload"]
    assert all(line["sent_bytes"] > 1000 and not line["skipped"] for line in lines)
    assert {d["label"] for line in lines for d in line["detections"]} <= set(NAMES)
    assert {"encode", "network", "tail", "total"} <= set(lines[0]["timing_ms"])
    assert "head" not in lines[0]["timing_ms"]


def test_pipelined_stream_keeps_frame_order(ckpts, capsys):
    with running(ckpts["q8"]) as server:
        code, lines, err = run_client(
            capsys, "--server", f"127.0.0.1:{server.port}", "--ckpt", ckpts["q8"], "--no-filter", "--synthetic", 8,
            "--window", 4,
        )  # fmt: skip
    assert code == 0, err
    assert [line["frame"] for line in lines] == list(range(8))
    assert [line["source"] for line in lines] == [f"synthetic:0#{i}" for i in range(8)]
    assert all(line["sent_bytes"] > 0 and "error" not in line for line in lines)


class _Reversing(splitdet_pb2_grpc.SplitDetectionServicer):
    """Answers each group of three stream requests in reverse order."""

    def InferStream(self, requests, context):
        group = []
        for request in requests:
            group.append(request.frame_id)
            if len(group) == 3:
                yield from (pb.InferResponse(frame_id=i) for i in reversed(group))
                group = []


def test_stream_matches_responses_by_frame_id():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    splitdet_pb2_grpc.add_SplitDetectionServicer_to_server(_Reversing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    link = StreamLink(splitdet_pb2_grpc.SplitDetectionStub(channel).InferStream, LinkConfig(f"127.0.0.1:{port}"))
    try:
        pending = [link.submit(i, pb.BottleneckFrame(frame_id=i)) for i in range(6)]
        assert [f.result(timeout=10).response.frame_id for f in pending] == list(range(6))
    finally:
        link.close()
        channel.close()
        server.stop(0)


def test_filtered_frames_are_never_sent(ckpts, capsys):
    with running(ckpts["q8"]) as server:
        code, lines, err = run_client(
            capsys, "--server", f"127.0.0.1:{server.port}", "--ckpt", ckpts["q8"], "--synthetic", 3, "--filter",
            "--filter-threshold", 1.0,
        )  # fmt: skip
    assert code == 0, err
    assert all(line["skipped"] and line["sent_bytes"] == 0 and line["detections"] == [] for line in lines)
    assert all("filter" in line["timing_ms"] and "network" not in line["timing_ms"] for line in lines)
    assert "skipped 3" in err


@pytest.mark.parametrize("window", [1, 2])
def test_server_restart_fails_frames_then_resumes(ckpts, window):
    server = serve(ckpts["q8"], host="127.0.0.1", port=0, workers=2)
    port = server.port
    argv = ["--server", f"127.0.0.1:{port}", "--ckpt", str(ckpts["q8"]), "--synthetic", "1", "--no-filter"]
    argv += ["--timeout-s", "1.5", "--window", str(window)]
    pipeline, _, _ = runner.build_pipeline(cli.parse(argv))
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    results: list[FrameResult] = []

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(results) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def frames():
        nonlocal server
        yield from (Frame(i, "up", image) for i in range(3))
        wait_for(3)
        server.stop(0)
        yield from (Frame(i, "down", image) for i in range(3, 6))
        wait_for(6)
        server = serve(ckpts["q8"], host="127.0.0.1", port=port, workers=2)
        yield from (Frame(i, "back", image) for i in range(6, 9))

    try:
        results.extend(pipeline.run(frames()))
    finally:
        pipeline.close()
        server.stop(0)
    assert [r.index for r in results] == list(range(9))
    assert [r.error is None for r in results] == [True] * 3 + [False] * 3 + [True] * 3
    assert all(r.sent_bytes == 0 and r.error == "DEADLINE_EXCEEDED: no reply within 1.5 s" for r in results[3:6])


def test_token_is_sent_as_bearer(ckpts, tmp_path, capsys):
    """Over plaintext only with --allow-insecure-token on both sides (tests/test_stream.py covers TLS)."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    with running(ckpts["q8"], token="s3cret", allow_insecure_token=True) as server:
        base = [
            "--server",
            f"127.0.0.1:{server.port}",
            "--ckpt",
            ckpts["q8"],
            "--synthetic",
            1,
            "--allow-insecure-token",
        ]
        code, lines, err = run_client(capsys, *base, "--token-file", good)
        assert code == 0, err
        assert len(lines) == 1 and "error" not in lines[0]
        code, lines, err = run_client(capsys, *base, "--token-file", bad)
        assert code == 2 and lines == []
        assert len(err.strip().splitlines()) == 1 and "UNAUTHENTICATED" in err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_ca(ckpts, tmp_path, capsys):
    cert, key = self_signed_cert(tmp_path)
    with running(ckpts["q8"], tls_cert=cert, tls_key=key) as server:
        base = ["--ckpt", ckpts["q8"], "--synthetic", 1, "--timeout-s", 3, "--attempts", 1]
        code, lines, err = run_client(capsys, "--server", f"localhost:{server.port}", "--tls-ca", cert, *base)
        assert code == 0, err
        assert len(lines) == 1 and "error" not in lines[0]
        code, _, err = run_client(capsys, "--server", f"localhost:{server.port}", *base)
        assert code == 2 and "handshake" in err


def test_wrong_fingerprint_refused(ckpts, capsys):
    with running(ckpts["other"]) as server:
        code, lines, err = run_client(
            capsys, "--server", f"127.0.0.1:{server.port}", "--ckpt", ckpts["q8"], "--synthetic", 2
        )
    assert code == 2 and lines == []
    assert len(err.strip().splitlines()) == 1 and "fingerprint" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "127.0.0.1:1", "--camera", "99"], "cannot open camera 99"),
        (["--synthetic", "2"], "--server: a HOST[:PORT] target is required in split mode"),
        (
            ["--mode", "local", "--synthetic", "2", "--filter-threshold", "1.5"],
            "--filter-threshold: must be in [0, 1], got 1.5",
        ),
        (["--server", "x", "--synthetic", "2", "--window", "0"], "--window: must be >= 1, got 0"),
        (["--mode", "local", "--images", "/nonexistent/*.png"], "no images match /nonexistent/*.png"),
    ],
)
def test_setup_errors_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mobile-client: error: {message}"]


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")


def test_images_from_directory_and_glob_and_video(ckpts, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _write_images(folder, ["b.png", "a.png", "c.jpg"])
    base = ["--mode", "local", "--ckpt", ckpts["q8"], "--no-filter"]
    code, lines, _ = run_client(capsys, *base, "--images", folder)
    assert code == 0
    assert [Path(line["source"]).name for line in lines] == ["a.png", "b.png", "c.jpg"]
    code, lines, _ = run_client(capsys, *base, "--images", folder / "*.png", "--max-frames", 1)
    assert code == 0
    assert [Path(line["source"]).name for line in lines] == ["a.png"]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
    for value in (0, 120, 240):
        writer.write(np.full((64, 80, 3), value, dtype=np.uint8))
    writer.release()
    code, lines, _ = run_client(capsys, *base, "--video", video)
    assert code == 0
    assert [line["source"] for line in lines] == [f"{video}#{i}" for i in range(3)]


def test_every_frame_failed_exits_1(ckpts, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("x.png", "y.png"):
        (folder / name).write_bytes(b"not a png")
    code, lines, err = run_client(capsys, "--mode", "local", "--ckpt", ckpts["q8"], "--images", folder)
    assert code == 1
    assert [line["frame"] for line in lines] == [0, 1]
    assert all("cannot read image" in line["error"] for line in lines)
    assert "failed 2" in err


def test_ctrl_c_stops_cleanly_with_summary(ckpts, monkeypatch, tmp_path, capsys):
    image = np.zeros((64, 80, 3), dtype=np.uint8)

    def interrupted(num_frames: int, seed: int = 0, static_ratio: float = 0.0) -> Source:
        def frames():
            yield from (Frame(i, "cam", image) for i in range(2))
            raise KeyboardInterrupt

        return Source(frames(), num_frames)

    monkeypatch.setattr(sources, "synthetic", interrupted)
    out = tmp_path / "out.jsonl"
    code, _, err = run_client(capsys, "--mode", "local", "--ckpt", ckpts["q8"], "--synthetic", 5, "--jsonl", out)
    assert code == 130
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == [0, 1]
    assert "interrupted" in err and "frames 2" in err


@pytest.mark.parametrize("arch", ["mask_rcnn", "keypoint_rcnn"])
def test_masks_and_keypoints_in_output_and_pictures(arch, tmp_path, capsys):
    ckpt = tmp_path / f"{arch}.pt"
    keypoints = [f"kp{i}" for i in range(5)] if arch == "keypoint_rcnn" else None
    save_checkpoint(tiny_student(arch), ckpt, NAMES, keypoint_names=keypoints)
    folder = tmp_path / "imgs"
    _write_images(folder, ["a.png"])
    vis = tmp_path / "vis"
    code, lines, err = run_client(
        capsys, "--mode", "local", "--ckpt", ckpt, "--images", folder, "--score-threshold", 0, "--save-vis", vis
    )
    assert code == 0, err
    first = lines[0]["detections"][0]
    if arch == "mask_rcnn":
        assert first["mask_rle"]["size"] == [64, 80] and isinstance(first["mask_rle"]["counts"], str)
    else:
        assert np.array(first["keypoints"]).shape == (5, 3)
    assert Image.open(vis / "frame_000000.jpg").size == (80, 64)


def test_visualize_draws_skeleton():
    image = np.zeros((60, 60, 3), dtype=np.uint8)
    det = {
        "box": [5, 5, 50, 50],
        "label": "person",
        "score": 0.9,
        "keypoints": [[10, 10, 1], [40, 40, 1]] + [[0, 0, 0]] * 12,
    }
    result = FrameResult(0, "x", "split", detections=[det], image=image)
    drawn = visualize.annotate(result, visualize.skeleton_for(visualize.SYNTHETIC_KEYPOINTS))
    assert drawn[25, 25].any()  # on the limb from keypoint 1 to 2
    assert not image.any()


def test_visualize_labels_are_readable_and_drawn_once():
    image = np.full((576, 768, 3), 200, dtype=np.uint8)  # a 768-px photo, light gray
    dets = [{"box": [100, 200, 400, 500], "label": "person", "score": 0.91}]
    drawn = visualize.annotate(FrameResult(0, "x", "split", detections=dets, image=image), [])
    band = np.flatnonzero((drawn[:, 0] == 0).all(axis=1))  # the status line's black band at the top
    below = drawn[band.max() + 1 :]
    top = 200 - (band.max() + 1)
    fill = np.all(below == color_for("person"), axis=2)
    fill[:, :105] = fill[:, 395:] = False  # leave out the box outline
    fill[: top + 5] = fill[top + 295 :] = False
    ys, xs = np.nonzero(fill)
    label_box = (ys.min(), ys.max(), xs.min(), xs.max())
    assert label_box[1] - label_box[0] + 1 >= 14  # a filled label box tall enough to read
    assert label_box[1] < top + 40  # at the top of the box
    text = np.all(below < 60, axis=2)  # the label's dark text
    ty, tx = np.nonzero(text)
    assert len(ty) > 50
    m = 2  # anti-aliased glyph edges
    inside = (ty >= label_box[0] - m) & (ty <= label_box[1] + m) & (tx >= label_box[2] - m) & (tx <= label_box[3] + m)
    assert inside.all()  # no second, offset copy of the text anywhere else


def test_link_estimate():
    rtt, bytes_per_ms = link_estimate([(1000, 2.0), (1000, 2.2), (101_000, 12.0)])
    assert rtt == 2.0
    assert bytes_per_ms == pytest.approx(103_000 / 10.2)
    assert link_estimate([]) is None


def _result(mode: str, **timing) -> FrameResult:
    sent = int(timing.pop("bytes", 0))
    server = timing.pop("server", None)
    return FrameResult(0, "x", mode, sent_bytes=sent, timing_ms=timing, server_ms=server)


def test_auto_policy_tries_every_mode_then_switches_with_hysteresis():
    logs: list[str] = []
    policy = AutoPolicy(every=2, probe_every=1000, hysteresis=0.2, use_filter=False, log=logs.append)
    assert [policy.choose(i) for i in range(3)] == ["split", "offload", "local"]
    policy.observe(_result("split", head=5, encode=1, network=3, bytes=2000, server=10))
    policy.observe(_result("offload", encode=2, network=50, bytes=100_000, server=30))
    policy.observe(_result("local", head=5, tail=200))
    predicted = policy.predict()
    assert predicted["split"] < predicted["offload"] < predicted["local"]
    assert {policy.choose(i) for i in range(3, 7)} == {"split"} and logs == []
    for _ in range(8):  # the local tail becomes much cheaper than going over the link
        policy.observe(_result("local", head=5, tail=2))
    assert [policy.choose(i) for i in range(7, 9)][-1] == "local"
    assert len(logs) == 1 and "split -> local" in logs[0] and "rtt" in logs[0]
    for _ in range(16):  # local becomes a little slower than split, but not by the hysteresis margin
        policy.observe(_result("local", head=5, tail=16))
    assert policy.predict()["split"] < policy.predict()["local"]
    assert {policy.choose(i) for i in range(9, 13)} == {"local"} and len(logs) == 1
    policy.observe(FrameResult(9, "x", "split", error="UNAVAILABLE: down"))
    assert policy.predict()["split"] == float("inf")


def test_auto_policy_probes_other_modes():
    policy = AutoPolicy(every=100, probe_every=4, log=lambda _: None)
    chosen = [policy.choose(i) for i in range(3 + 12)][3:]
    assert chosen.count("split") == 9 and chosen.count("offload") + chosen.count("local") == 3


def test_auto_policy_without_a_tail_chooses_between_split_and_offload():
    """The ONNX client has no tail: auto tries, decides and probes among split and offload only."""
    logs: list[str] = []
    policy = AutoPolicy(every=1, probe_every=3, log=logs.append, choices=("split", "offload"))
    assert [policy.choose(i) for i in range(2)] == ["split", "offload"]
    policy.observe(_result("split", head=5, encode=1, network=30, bytes=20_000, server=10))
    policy.observe(_result("offload", encode=2, network=5, bytes=2_000, server=3))
    assert policy.predict()["local"] is None
    assert {policy.choose(i) for i in range(2, 20)} == {"offload", "split"} and "split -> offload" in logs[0]
    with pytest.raises(ValueError, match="auto chooses split"):
        AutoPolicy(choices=("offload", "local"))


def test_auto_mode_end_to_end(ckpts, tmp_path, capsys):
    out = tmp_path / "auto.jsonl"
    with running(ckpts["q8"]) as server:
        code, _, err = run_client(
            capsys, "--server", f"127.0.0.1:{server.port}", "--ckpt", ckpts["q8"], "--mode", "auto", "--no-filter",
            "--synthetic", 5, "--auto-every", 2, "--jsonl", out,
        )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["mode"] for line in lines[:3]] == ["split", "offload", "local"]
    assert "frames by mode" in err


def test_channel_balances_dns_targets():
    assert any(
        "round_robin" in str(v) for k, v in channel_options("dns:///edge:50051", 16) if k == "grpc.service_config"
    )
    assert all(k != "grpc.service_config" for k, _ in channel_options("edge:50051", 16))


def test_split_demo_runs_and_summarizes(ckpts, tmp_path, capsys):
    vis = tmp_path / "vis"
    code = demo.main(["--ckpt", str(ckpts["q8"]), "--frames", "6", "--save-vis", str(vis)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [json.loads(line)["frame"] for line in out.splitlines()] == list(range(6))
    assert "summary: mode split, 6 frames" in err and err.rstrip().splitlines()[-1].lstrip().startswith("total")
    assert len(list(vis.glob("frame_*.jpg"))) == 6


def test_split_demo_without_checkpoint_exits_2(tmp_path, capsys):
    assert demo.main(["--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"split-demo: error: checkpoint not found: {tmp_path / 'missing.pt'}"
    ]


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"window": 0}, "window", "must be >= 1, got 0"),
        ({"mode": "teleport"}, "mode", "got 'teleport'"),
        ({"jpeg_quality": 101}, "jpeg_quality", "must be in 1..100, got 101"),
        ({"score_threshold": 1.5}, "score_threshold", "must be in [0, 1], got 1.5"),
        ({"skip_static": float("nan")}, "skip_static", "must be a finite number >= 0, got nan"),
        ({"skip_static": 0.1, "mode": "offload"}, "skip_static", "needs mode split or auto, not offload"),
        ({"background_rate": 0.0}, "background_rate", "must be in (0, 1], got 0"),
        ({"background_max_skipped": 0}, "background_max_skipped", "must be >= 1, got 0"),
        ({"offload_format": "gif"}, "offload_format", "got 'gif'"),
    ],
)
def test_options_refuse_bad_values(kwargs, field, message):
    with pytest.raises(OptionsError) as e:
        Options(**kwargs)
    assert isinstance(e.value, ValueError) and e.value.field == field and message in e.value.message


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"synthetic": 2}, "server", "required in split mode"),
        ({"synthetic": 2, "server": "x", "window": 0}, "window", "must be >= 1, got 0"),
        ({"images": "x/*.jpg", "server": "x", "skip_static": 0.1}, "skip_static", "not images"),
        ({"synthetic": 2, "server": "x", "tls_cert": "c.pem"}, "tls_key", "needs both tls_cert and tls_key"),
        ({"synthetic": 2, "server": "x", "token_file": "t"}, "token_file", "needs TLS"),
        ({"synthetic": 2, "server": "x", "runtime": "onnx"}, "head", "runtime onnx needs a head file"),
        ({"synthetic": 2, "video": "v.mp4", "server": "x"}, "source", "exactly one"),
    ],
)
def test_run_options_refuse_bad_values(kwargs, field, message):
    with pytest.raises(OptionsError) as e:
        RunOptions(**kwargs)
    assert e.value.field == field and message in e.value.message
    assert RunOptions(synthetic=2, mode="local").source == "synthetic"


def test_the_cli_maps_every_flag_onto_run_options():
    options = cli.parse(["--server", "x", "--video", "v.mp4", "--live", "--window", "2"])
    assert options == RunOptions(server="x", video="v.mp4", live=True, window=2) and options.is_live
