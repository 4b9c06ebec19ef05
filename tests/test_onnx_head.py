"""The ONNX head: the transform's size rules, the export, equivalence with the torch head, a client without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from splitdet.benchmarks.server_process import ServerProcess
from splitdet.common import model_cli, onnx_export
from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.codec import quantize
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.onnx_export import WindowMeanPool2d
from splitdet.common.shapes import padded_size, resized_size
from splitdet.common.wire import encode_frame
from splitdet.mobile_client import sources
from splitdet.mobile_client.background import BackgroundFilter, background_score
from splitdet.mobile_client.cli import parse
from splitdet.mobile_client.onnx_head import OnnxHead
from splitdet.mobile_client.pipeline import Pipeline
from splitdet.mobile_client.settings import Options, SetupError
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.torch_head import ClientModel
from splitdet.synthetic import SceneConfig, render_scene
from tests.conftest import TINY_NAMES, tiny_student

ROOT = Path(__file__).resolve().parent.parent
#: (height, width) of the synthetic test frames: landscape, portrait, up- and downscaled, odd sizes
FRAME_SIZES = [(64, 80), (120, 160), (97, 131), (200, 150), (45, 300), (333, 517)]


def frames() -> list[np.ndarray]:
    return [np.array(render_scene(seed, SceneConfig(height=h, width=w))[0]) for seed, (h, w) in enumerate(FRAME_SIZES)]


@pytest.fixture(scope="module")
def filter_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "filter.pt"
    save_checkpoint(tiny_student("faster_rcnn", with_filter=True), path, TINY_NAMES)
    return path


@pytest.fixture(scope="module")
def head_file(filter_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "head.onnx"
    assert model_cli.main(["export", str(filter_ckpt), "--out", str(out), "--format", "onnx"]) == 0
    return out


def test_resized_and_padded_sizes_are_the_transforms_rules():
    rng = np.random.default_rng(0)
    for min_size, max_size in [(64, 96), (120, 160), (800, 1333)]:
        transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
        sizes = [(int(h), int(w)) for h, w in rng.integers(8, 700, size=(40, 2))] + [(600, 800), (599, 1000)]
        for h, w in sizes:
            batch, _ = transform([torch.zeros(3, h, w)])
            assert resized_size(h, w, min_size, max_size) == tuple(batch.image_sizes[0]), (h, w)
            assert padded_size(batch.image_sizes[0], 32) == tuple(batch.tensors.shape[-2:])


@pytest.mark.parametrize("side", [5, 16, 30, 40, 64, 100, 129])
def test_window_mean_pool_is_adaptive_avg_pool(side):
    x = torch.randn(2, 4, side, side + 7)
    for size in [(64, 64), (8, 8), (3, 5)]:
        torch.testing.assert_close(WindowMeanPool2d(size)(x), torch.nn.AdaptiveAvgPool2d(size)(x), atol=1e-5, rtol=1e-5)


def test_metadata_and_fingerprint(filter_ckpt, head_file):
    head = OnnxHead.load(head_file)
    ckpt = load_checkpoint(filter_ckpt)
    assert head.fingerprint == ClientModel.load(filter_ckpt).fingerprint == ckpt.fingerprint
    assert head.class_names == TINY_NAMES and head.codec == ckpt.codec and head.has_filter
    assert (head.min_size, head.max_size, head.size_divisible, head.channels) == (64, 96, 32, 3)
    assert head.filter_threshold == ckpt.filter_threshold
    assert OnnxHead.load(head_file, filter_threshold=0.3).filter_threshold == 0.3


@pytest.mark.parametrize("quantization", ["per_tensor", "per_channel"])
def test_onnx_bottleneck_equals_torch_within_quantization(filter_ckpt, head_file, quantization):
    torch_head, onnx_head = ClientModel.load(filter_ckpt), OnnxHead.load(head_file)
    settings = CodecSettings(quantization=quantization)
    same_payload, flipped, elements = 0, 0, 0
    for rgb in frames():
        ours, theirs = onnx_head.run_head(rgb, use_filter=False), torch_head.run_head(rgb, use_filter=False)
        assert ours.meta == theirs.meta
        assert ours.bottleneck.shape == theirs.bottleneck.shape and ours.bottleneck.dtype == np.float32
        a, b = (
            encode_frame(ours.bottleneck, ours.meta, settings),
            encode_frame(theirs.bottleneck, theirs.meta, settings),
        )
        step = np.array(b.scale).reshape((1, -1, 1, 1) if quantization == "per_channel" else (1, 1, 1, 1))
        assert (np.abs(ours.bottleneck - theirs.bottleneck) <= step).all()
        same_payload += a.payload == b.payload
        qa, qb = (quantize(x, quantization).values.astype(int) for x in (ours.bottleneck, theirs.bottleneck))
        assert np.abs(qa - qb).max() <= 1  # a value next to a rounding boundary lands on the neighbouring level
        flipped, elements = flipped + int((qa != qb).sum()), elements + qa.size
    assert same_payload > len(FRAME_SIZES) // 2, f"8-bit payloads identical on {same_payload} of {len(FRAME_SIZES)}"
    assert flipped / elements < 1e-3, f"{flipped} of {elements} 8-bit values differ"


def test_filter_decides_alike(filter_ckpt, head_file):
    torch_head, onnx_head = ClientModel.load(filter_ckpt), OnnxHead.load(head_file)
    rgbs = frames()
    probs = [torch_head.run_head(rgb, use_filter=True).object_prob for rgb in rgbs]
    ours = [onnx_head.run_head(rgb, use_filter=True).object_prob for rgb in rgbs]
    np.testing.assert_allclose(ours, probs, atol=1e-5)
    threshold = sorted(probs)[len(probs) // 2]  # half the frames pass
    torch_head.head.filter_threshold = onnx_head.filter_threshold = threshold
    skipped = [torch_head.run_head(rgb, use_filter=True).bottleneck is None for rgb in rgbs]
    assert [onnx_head.run_head(rgb, use_filter=True).bottleneck is None for rgb in rgbs] == skipped
    assert 0 < sum(skipped) < len(skipped)


def test_onnx_head_skips_static_frames_alike(filter_ckpt, head_file):
    """--skip-static needs only the numpy bottleneck: both heads send and reuse the same frames."""
    scene = frames()[1]
    noisy = np.clip(scene.astype(int) + np.random.default_rng(0).integers(-3, 4, scene.shape), 0, 255)
    images = [scene, noisy.astype(np.uint8), frames()[2], frames()[2]]
    decisions = []
    for model in (ClientModel.load(filter_ckpt), OnnxHead.load(head_file)):
        pipeline = Pipeline(Options(mode="split", skip_static=0.05), TINY_NAMES, model=model)
        works = [pipeline.prepare(Frame(i, "cam", image)) for i, image in enumerate(images)]
        decisions.append([None if w.result is None else w.result.reused_from for w in works])
    assert decisions == [[None, 0, None, 2]] * 2


class CountingSession:
    """An ONNX Runtime session that records the stage of every call."""

    def __init__(self, session) -> None:
        self.session = session
        self.stages: list[int] = []

    def run(self, names, feeds):
        self.stages.append(int(feeds["stage"]))
        return self.session.run(names, feeds)


def test_a_rejected_frame_never_runs_the_encoder(filter_ckpt, head_file):
    head = OnnxHead.load(head_file)
    head.session = CountingSession(head.session)
    rgb = frames()[1]
    head.filter_threshold = 1.5  # nothing passes
    timing: dict[str, float] = {}
    assert head.run_head(rgb, use_filter=True, timing=timing).bottleneck is None
    assert head.session.stages == [0, 1] and set(timing) == {"head", "filter"}
    head.session.stages.clear()
    head.filter_threshold = 0.0  # everything passes
    sent = head.run_head(rgb, use_filter=True)
    assert head.session.stages == [0, 1, 2]
    np.testing.assert_allclose(
        sent.bottleneck, ClientModel.load(filter_ckpt).run_head(rgb, False).bottleneck, atol=1e-5
    )
    head.session.stages.clear()
    head.run_head(rgb, use_filter=False)
    assert head.session.stages == [0, 2]  # no filter asked: no filter run


def test_skipped_frames_report_filter_time_and_no_encoder(head_file):
    """The run summary's stages: a skipped frame has paid for the stem ("head") and the filter, not the encoder."""
    head = OnnxHead.load(head_file, filter_threshold=1.5)
    head.session = CountingSession(head.session)
    pipeline = Pipeline(Options(mode="split", use_filter=True), TINY_NAMES, model=head)
    work = pipeline.prepare(Frame(0, "cam", frames()[0]))
    assert work.result.skipped and work.result.timing_ms["filter"] > 0 and work.result.timing_ms["head"] > 0
    assert "encode" not in work.result.timing_ms and 2 not in head.session.stages


def test_background_filter_decides_alike(filter_ckpt, head_file):
    """--background-filter on the ONNX head: the stem cells and the skip decisions are the torch head's."""
    video = [f.image for f in sources.synthetic(16, seed=3, empty_ratio=0.6, run_frames=(2, 4)).frames]
    torch_head, onnx_head = ClientModel.load(filter_ckpt), OnnxHead.load(head_file)
    cells = {name: [m.run_head(rgb, False, cells=True).stem_cells for rgb in video]
             for name, m in (("torch", torch_head), ("onnx", onnx_head))}  # fmt: skip
    for a, b in zip(cells["torch"], cells["onnx"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    threshold = float(np.median([background_score(c, cells["torch"][0]) for c in cells["torch"][1:]]))
    decisions = []
    for model in (torch_head, onnx_head):
        background, skipped = BackgroundFilter(threshold, max_skipped=3), []
        pipeline = Pipeline(Options(mode="split", background_filter=threshold), TINY_NAMES, model=model)
        pipeline.background = background
        for i, rgb in enumerate(video):
            work = pipeline.prepare(Frame(i, "cam", rgb))
            skipped.append(work.result is not None and work.result.skipped)
            if not skipped[-1]:
                background.answer(i, empty=True)
        decisions.append(skipped)
    assert decisions[0] == decisions[1] and 0 < sum(decisions[0]) < len(video)


def test_client_accepts_the_background_filter_on_the_onnx_runtime():
    argv = ["--runtime", "onnx", "--head", "h.onnx", "--server", "x", "--synthetic", "2", "--background-filter", "0.1"]
    parse(argv)


def with_metadata(head: Path, out: Path, key: str, value: str) -> Path:
    """A copy of the head file ``head`` at ``out`` whose metadata ``splitdet.KEY`` says ``value``."""
    model = onnx.load(head)
    for prop in model.metadata_props:
        if prop.key == f"splitdet.{key}":
            prop.value = value
    onnx.save(model, out)
    return out


def test_an_old_format_head_is_refused_in_one_line(tmp_path, head_file):
    with_metadata(head_file, tmp_path / "old.onnx", "version", "1")
    with pytest.raises(SetupError, match=r"format version 1, this client reads version 2: export it again") as e:
        OnnxHead.load(tmp_path / "old.onnx")
    assert len(str(e.value).splitlines()) == 1


def branch_ops(graph, into: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """The operator types of every If branch of ``graph``, by branch name (stem, filter, encoder, ...)."""
    into = {} if into is None else into
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                into[attribute.g.name] = {n.op_type for n in attribute.g.node}
                branch_ops(attribute.g, into)
    return into


def test_int8_head_is_close_to_float(tmp_path, filter_ckpt, head_file):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, rgb in enumerate(frames()[:4]):
        Image.fromarray(rgb).save(calibration / f"{i}.png")
    out = tmp_path / "int8.onnx"
    argv = ["export", str(filter_ckpt), "--out", str(out), "--format", "onnx", "--int8", "--calibration", "4"]
    assert model_cli.main([*argv, "--calibration-images", str(calibration)]) == 0
    int8, fp32 = OnnxHead.load(out), OnnxHead.load(head_file)
    assert int8.weights == "int8" and fp32.weights == "float32" and int8.fingerprint == fp32.fingerprint
    ops = branch_ops(onnx.load(out).graph)
    assert "DequantizeLinear" in ops["encoder"] and not {"DequantizeLinear", "QuantizeLinear"} & ops["stem"]
    for rgb in frames():
        a, b = int8.run_head(rgb, use_filter=False).bottleneck, fp32.run_head(rgb, use_filter=False).bottleneck
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 0.1 * np.abs(b).mean()
        # the stem and the filter stay float32: the filter decides as the float head's
        assert int8.run_head(rgb, use_filter=True).object_prob == fp32.run_head(rgb, use_filter=True).object_prob


def test_int8_usage_errors_are_one_line(tmp_path, filter_ckpt, capsys):
    base = ["export", str(filter_ckpt), "--out", str(tmp_path / "h.onnx")]
    for argv, message in [
        ([*base, "--format", "onnx", "--int8"], "--int8 needs calibration frames"),
        ([*base, "--int8", "--calibration-images", str(tmp_path)], "--int8 applies to --format onnx only"),
        ([*base, "--format", "onnx", "--calibration-images", str(tmp_path)], "go with --int8"),
        ([*base, "--format", "onnx", "--int8", "--calibration-images", str(tmp_path)], "no image files"),
    ]:
        assert model_cli.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line, line


def test_head_without_filter(tmp_path, ckpt):
    out = tmp_path / "nofilter.onnx"
    assert model_cli.main(["export", str(ckpt), "--out", str(out), "--format", "onnx"]) == 0
    head = OnnxHead.load(out)
    assert not head.has_filter and head.run_head(frames()[0], use_filter=False).object_prob is None


def test_export_refuses_a_codec_the_onnx_client_lacks(monkeypatch, tmp_path, capsys, ckpt):
    checkpoint = load_checkpoint(ckpt)
    codec = CodecSettings()
    object.__setattr__(codec, "quantization", "entropy_bottleneck")  # a codec kind this tree does not know yet
    checkpoint.codec = codec
    monkeypatch.setattr(onnx_export, "load_checkpoint", lambda path: checkpoint)
    assert model_cli.main(["export", str(ckpt), "--out", str(tmp_path / "h.onnx"), "--format", "onnx"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the ONNX head supports the 8-bit" in line and "'entropy_bottleneck'" in line
    assert not (tmp_path / "h.onnx").exists()


def test_load_refuses_bad_files_in_one_line(tmp_path, head_file):
    with pytest.raises(SetupError, match="ONNX head not found"):
        OnnxHead.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(SetupError, match=r"cannot load .* as an ONNX head"):
        OnnxHead.load(tmp_path / "junk.onnx")
    with_metadata(head_file, tmp_path / "entropy.onnx", "quantization", "entropy_bottleneck")
    with pytest.raises(SetupError, match=r"supports the 8-bit .* 'entropy_bottleneck'") as e:
        OnnxHead.load(tmp_path / "entropy.onnx")
    assert len(str(e.value).splitlines()) == 1


def _client(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``mobile-client ARGV`` in a fresh interpreter that reports whether torch was ever imported."""
    code = (
        "import sys\nfrom splitdet.mobile_client.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\nsys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runtime", "onnx", "--server", "x", "--synthetic", "1"], "--head: runtime onnx needs a head file"),
        (["--runtime", "onnx", "--head", "h.onnx", "--mode", "local", "--synthetic", "1"], "needs torch"),
        (["--runtime", "onnx", "--head", "h.onnx", "--ckpt", "c.pt", "--server", "x", "--synthetic", "1"], "--ckpt"),
        (["--head", "h.onnx", "--server", "x", "--synthetic", "1"], "--head: is for runtime onnx"),
        (["--runtime", "onnx", "--head", "missing.onnx", "--server", "x", "--synthetic", "1"], "ONNX head not found"),
    ],
)
def test_onnx_usage_errors_are_one_line_without_torch(tmp_path, argv, message):
    proc = _client(argv, tmp_path)
    *lines, imported = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert imported == "NO_TORCH"


def test_onnx_client_against_the_server_never_imports_torch(tmp_path, filter_ckpt, head_file):
    images = tmp_path / "images"
    images.mkdir()
    for i, rgb in enumerate(frames()):
        Image.fromarray(rgb).save(images / f"{i}.png")
    common = ["--images", str(images), "--score-threshold", "0", "--no-filter", "--window", "2"]
    with ServerProcess(["--ckpt", str(filter_ckpt), "--workers", "2", "--torch-threads", "1"]) as server:
        onnx_run = _client(
            ["--runtime", "onnx", "--head", str(head_file), "--server", server.target, *common], tmp_path
        )
        torch_run = _client(["--ckpt", str(filter_ckpt), "--server", server.target, *common], tmp_path)
    assert onnx_run.returncode == 0 and torch_run.returncode == 0, onnx_run.stderr + torch_run.stderr
    assert onnx_run.stderr.strip().splitlines()[-1] == "NO_TORCH"
    ours = [json.loads(line) for line in onnx_run.stdout.splitlines()]
    theirs = [json.loads(line) for line in torch_run.stdout.splitlines()]
    assert len(ours) == len(theirs) == len(FRAME_SIZES)
    assert all(r["error"] is None and r["detections"] for r in ours if "error" in r) or all(
        "error" not in r for r in ours
    )
    same = sum(a["detections"] == b["detections"] for a, b in zip(ours, theirs, strict=True))
    assert same >= len(FRAME_SIZES) - 1, f"detections identical on {same} of {len(FRAME_SIZES)} frames"


def test_entropic_head_codes_frames_that_decode_like_the_torch_head_s(tmp_path):
    """An entropic checkpoint exports with its tables in the metadata; the ONNX head's entropy frames decode on the
    server to the torch head's latent (a value next to a rounding boundary may land on the neighbouring symbol),
    and the ONNX client sends them to a server without importing torch."""
    from splitdet.common.wire import FrameLimits, decode_frame
    from splitdet.proto import splitdet_pb2 as pb
    from tests.test_entropy import entropic_checkpoint, tables

    path, out = tmp_path / "entropic.pt", tmp_path / "entropic.onnx"
    entropic_checkpoint(path, tables()[0])
    assert model_cli.main(["export", str(path), "--out", str(out), "--format", "onnx"]) == 0
    ckpt, onnx_head, torch_head = load_checkpoint(path), OnnxHead.load(out), ClientModel.load(path)
    assert onnx_head.codec.quantization == "entropy" and onnx_head.fingerprint == ckpt.fingerprint
    assert onnx_head.entropy_tables.fingerprint == ckpt.entropy.fingerprint
    for key, value, message in [
        ("entropy_fingerprint", "0" * 64, "not the ones its metadata names"),
        ("entropy_tables", "{}", "entropy tables lack|not readable"),
    ]:
        with_metadata(out, tmp_path / "bad.onnx", key, value)
        with pytest.raises(SetupError, match=message) as e:
            OnnxHead.load(tmp_path / "bad.onnx")
        assert len(str(e.value).splitlines()) == 1
    limits = FrameLimits(channels=3, entropy=ckpt.entropy)
    differ, elements = 0, 0
    for rgb in frames():
        latents = []
        for model in (onnx_head, torch_head):
            result = model.run_head(rgb, use_filter=False)
            tables = model.entropy_tables
            frame = encode_frame(result.bottleneck, result.meta, model.codec, model.fingerprint, 0, tables)
            assert frame.quantization == pb.ENTROPY and frame.compression == pb.RANS_CONSTRICTION
            latents.append(decode_frame(frame, limits)[0].numpy())
        steps = np.abs(latents[0] - latents[1])
        assert steps.max() <= 1
        differ, elements = differ + int((steps > 0).sum()), elements + steps.size
    assert differ / elements < 1e-3, f"{differ} of {elements} symbols differ"

    images = tmp_path / "images"
    images.mkdir()
    for i, rgb in enumerate(frames()[:3]):
        Image.fromarray(rgb).save(images / f"{i}.png")
    with ServerProcess(["--ckpt", str(path), "--workers", "1", "--torch-threads", "1"]) as server:
        argv = ["--runtime", "onnx", "--head", str(out), "--server", server.target, "--images", str(images)]
        run = _client([*argv, "--no-filter"], tmp_path)
    assert run.returncode == 0 and run.stderr.strip().splitlines()[-1] == "NO_TORCH", run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == 3 and all(r.get("error") is None and r["sent_bytes"] > 0 for r in results), results
