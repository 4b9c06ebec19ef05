"""edge-server: in-process servers on loopback (port 0) with a tiny Faster R-CNN student, plus one CLI subprocess."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from splitdet.common import demo
from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.options import OptionsError
from splitdet.common.split import split
from splitdet.common.wire import decode_detections, encode_detections, encode_frame
from splitdet.edge_server import cli, healthcheck
from splitdet.edge_server.batching import Batcher, Closed, Expired, QueueFull
from splitdet.edge_server.engine import BatchKey, ImageError, decode_image
from splitdet.edge_server.options import ServerOptions
from splitdet.edge_server.server import ServerError, serve
from splitdet.mobile_client import cli as mobile_cli
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from tests.conftest import TINY_NAMES, self_signed_cert, tiny_student

REPO = Path(__file__).resolve().parents[1]
NAMES = TINY_NAMES
EXACT = CodecSettings(quantization="none", compression="raw")
Q8 = CodecSettings(quantization="per_tensor", compression="zstd")


class Client:
    """The client side of a checkpoint: its head and tail run locally, and frames for the server."""

    def __init__(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.model = ckpt.build_model()
        self.head, self.tail = split(self.model)
        self.fingerprint = ckpt.side_fingerprint(head=self.head)

    def frame(self, images: list[torch.Tensor], settings: CodecSettings = EXACT, frame_id: int = 0):
        """(wire frame, local detections of the same bottleneck)."""
        with torch.inference_mode():
            out = self.head(images, use_filter=False)
            frame = encode_frame(out.bottleneck.numpy(), out.meta, settings, self.fingerprint, frame_id)
            return frame, self.tail(out.bottleneck, out.meta)


@pytest.fixture(scope="module")
def client(ckpt) -> Client:
    return Client(ckpt)


@pytest.fixture(scope="module")
def server(ckpt):
    running = serve(ckpt, port=0, workers=4, max_message_mb=1)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield splitdet_pb2_grpc.SplitDetectionStub(channel)


def rand_images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def assert_same(response_images, expected: list[dict], atol: float = 1e-5) -> None:
    assert len(response_images) == len(expected)
    for msg, want in zip(response_images, expected, strict=True):
        got = decode_detections(msg)
        assert len(want["boxes"]) > 0
        np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), atol=atol, rtol=0)
        np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=atol, rtol=0)
        np.testing.assert_array_equal(got["labels"], want["labels"].numpy())


def status_of(call, *args, timeout: float = 10, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=timeout, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    return info.value.code(), info.value.details()


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port held by a socket that does not listen: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def assert_still_serving(stub, client: Client) -> None:
    frame, expected = client.frame(rand_images((64, 80), seed=9), frame_id=99)
    response = stub.Infer(frame, timeout=10)
    assert response.frame_id == 99
    assert_same(response.images, expected)


# ---- data path ----


def test_infer_equals_local_tail(stub, client):
    frame, expected = client.frame(rand_images((70, 90), (80, 60)), EXACT, frame_id=7)
    response = stub.Infer(frame, timeout=10)
    assert response.frame_id == 7
    assert_same(response.images, expected)
    t = response.timings
    assert t.tail_ms > 0 and t.decode_ms > 0 and t.encode_ms > 0 and t.queue_ms >= 0


def test_infer_8bit_within_tolerance(stub, client):
    frame, expected = client.frame(rand_images((70, 90)), Q8)
    (msg,) = stub.Infer(frame, timeout=10).images
    got, want = decode_detections(msg), expected[0]
    top = want["scores"].argsort(descending=True)[:20]
    hits = 0
    for i in top.tolist():
        close = np.abs(got["boxes"] - want["boxes"][i].numpy()).max(axis=1) <= 3.0
        close &= np.abs(got["scores"] - float(want["scores"][i])) <= 0.02
        hits += bool((close & (got["labels"] == int(want["labels"][i]))).any())
    assert hits >= 0.8 * len(top)


def test_batched_equals_unbatched(ckpt, client):
    sizes = [(70, 90), (64, 64)]  # two batch shapes: the batcher must group by shape
    cases = [client.frame(rand_images(sizes[i % 2], seed=i), frame_id=i) for i in range(8)]
    running = serve(ckpt, port=0, workers=8, max_batch=4, max_batch_delay_ms=300)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda case: stub.Infer(case[0], timeout=30), cases))
    finally:
        running.stop(1)
    for (frame, expected), response in zip(cases, responses, strict=True):
        assert response.frame_id == frame.frame_id
        assert_same(response.images, expected, atol=1e-4)
    assert running.batcher.items == 8 and running.batcher.batches < 8


def test_mask_rcnn_masks(tmp_path):
    path = tmp_path / "mask.pt"
    save_checkpoint(tiny_student("mask_rcnn"), path, NAMES)
    local = Client(path)
    frame, expected = local.frame(rand_images((70, 90)))
    running = serve(path, port=0, workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            response = splitdet_pb2_grpc.SplitDetectionStub(channel).Infer(frame, timeout=10)
    finally:
        running.stop(0)
    assert_same(response.images, expected)
    (got,) = [decode_detections(msg) for msg in response.images]
    assert got["masks"] == decode_detections(encode_detections(expected[0]))["masks"]


def test_infer_image_equals_whole_model(stub, client):
    array = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        expected = client.model([image])
    response = stub.InferImage(pb.ImageFrame(frame_id=3, jpeg=encoded(array, "PNG")), timeout=10)
    assert response.frame_id == 3
    assert_same(response.images, expected)
    response = stub.InferImage(pb.ImageFrame(frame_id=4, jpeg=encoded(array, "JPEG")), timeout=10)
    assert response.frame_id == 4 and len(response.images) == 1 and response.images[0].count > 0


def test_streams_keep_order_and_ids(stub, client):
    cases = [client.frame(rand_images((64, 80), seed=i), frame_id=100 + i) for i in range(5)]
    responses = list(stub.InferStream(iter([f for f, _ in cases]), timeout=30))
    assert [r.frame_id for r in responses] == [100, 101, 102, 103, 104]
    for (_, expected), response in zip(cases, responses, strict=True):
        assert_same(response.images, expected)
    array = np.zeros((48, 64, 3), dtype=np.uint8)
    frames = [pb.ImageFrame(frame_id=i, jpeg=encoded(array, "PNG")) for i in (5, 3, 9)]
    assert [r.frame_id for r in stub.InferImageStream(iter(frames), timeout=30)] == [5, 3, 9]


# ---- errors ----


def _mutate(frame: pb.BottleneckFrame, change) -> pb.BottleneckFrame:
    bad = pb.BottleneckFrame()
    bad.CopyFrom(frame)
    change(bad)
    return bad


MALFORMED = {
    "format_version": (lambda f: setattr(f, "format_version", 9), "format_version"),
    "channels": (lambda f: f.shape.__setitem__(1, 4), "channels"),
    "truncated": (lambda f: setattr(f, "payload", f.payload[:-5]), "bytes"),
    "garbled_zstd": (lambda f: setattr(f, "payload", b"\x28\xb5\x2f\xfdjunk" * 3), "zstd"),
    "no_batch_shape": (lambda f: f.ClearField("batch_shape"), "batch_shape"),
    "nan": (lambda f: setattr(f, "payload", np.full(len(f.payload) // 4, np.nan, "<f4").tobytes()), "NaN"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_frame_invalid_argument(stub, client, kind):
    change, words = MALFORMED[kind]
    settings = Q8 if kind == "garbled_zstd" else EXACT
    frame, _ = client.frame(rand_images((64, 80)), settings)
    code, details = status_of(stub.Infer, _mutate(frame, change))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details
    assert_still_serving(stub, client)


def test_fingerprint_required_and_checked(stub, client, server):
    frame, _ = client.frame(rand_images((64, 80)))
    code, details = status_of(stub.Infer, _mutate(frame, lambda f: setattr(f, "fingerprint", "0123456789abcdef")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == (
        f"frame fingerprint 0123456789abcdef does not match this server's checkpoint {server.engine.fingerprint}"
    )
    code, details = status_of(stub.Infer, _mutate(frame, lambda f: f.ClearField("fingerprint")))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "frame carries no fingerprint")
    assert_still_serving(stub, client)


def test_bad_images_invalid_argument(stub, client):
    for data in (b"", b"\xff\xd8\xff\xe0 not really a jpeg", encoded(np.zeros((8, 8, 3), np.uint8), "BMP")):
        code, details = status_of(stub.InferImage, pb.ImageFrame(jpeg=data))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert_still_serving(stub, client)


def test_image_pixel_limit():
    png = encoded(np.zeros((20, 30, 3), np.uint8), "PNG")
    assert decode_image(png).shape == (3, 20, 30)
    with pytest.raises(ImageError, match="30x20 pixels exceeds the limit of 500"):
        decode_image(png, max_pixels=500)


def test_oversized_message_resource_exhausted(stub, client):
    frame, _ = client.frame(rand_images((64, 80)))
    big = _mutate(frame, lambda f: setattr(f, "payload", bytes(2 * 1024 * 1024)))
    code, _ = status_of(stub.Infer, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(stub, client)


def test_bad_frame_ends_stream_after_valid_ones(stub, client):
    good = [client.frame(rand_images((64, 80), seed=i), frame_id=i)[0] for i in range(2)]
    bad = _mutate(good[0], lambda f: setattr(f, "format_version", 2))
    responses = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub.InferStream(iter([*good, bad, good[0]]), timeout=30):
            responses.append(response.frame_id)
    assert responses == [0, 1]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(stub, client)


def test_unexpected_error_is_internal(stub, client, server, monkeypatch):
    def boom(frames):
        raise RuntimeError("kaputt")

    with monkeypatch.context() as patch:
        patch.setattr(server.engine, "infer_bottlenecks", boom)
        code, details = status_of(stub.Infer, client.frame(rand_images((64, 80)))[0])
    assert code == grpc.StatusCode.INTERNAL and "kaputt" in details
    assert_still_serving(stub, client)


def test_token_required_except_health(ckpt, client):
    with pytest.raises(OptionsError, match="token needs TLS"):  # a token in plaintext needs an explicit opt-in
        serve(ckpt, port=0, workers=2, token="s3cret")
    running = serve(ckpt, ServerOptions(port=0, workers=2, token="s3cret", allow_insecure_token=True))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            frame, expected = client.frame(rand_images((64, 80)))
            assert status_of(stub.Infer, frame) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
            wrong = [("authorization", "Bearer guess")]
            assert status_of(stub.InferStream, iter([frame]), metadata=wrong)[0] == grpc.StatusCode.UNAUTHENTICATED
            response = stub.Infer(frame, timeout=10, metadata=[("authorization", "Bearer s3cret")])
            assert_same(response.images, expected)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert running.stats.snapshot().errors_by_code["UNAUTHENTICATED"] == 2
    finally:
        running.stop(0)


# ---- service info, health, stats ----


def test_model_info(stub, server):
    info = stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.fingerprint == server.engine.fingerprint
    assert (info.arch, info.backbone, info.bottleneck_channels) == ("faster_rcnn", "resnet18", 3)
    assert list(info.class_names) == NAMES and info.device == "cpu"
    assert info.bottleneck_shape_rule == "C x (H/4+4) x (W/4+4) of the padded batch"
    assert set(info.quantizations) == {pb.NONE, pb.PER_TENSOR, pb.PER_CHANNEL, pb.HALF}
    assert set(info.compressions) == {pb.RAW, pb.ZSTD}
    assert info.default_quantization == pb.PER_TENSOR and info.format_version == 1
    assert (info.min_size, info.max_size, info.max_batch) == (64, 96, 1)
    assert info.max_message_bytes == 1024 * 1024 and info.server_version


def test_health_serving(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "splitdet.v1.SplitDetection"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert healthcheck.main([f"127.0.0.1:{server.port}"]) == 0


def test_healthcheck_fails_without_server(capsys):
    with closed_port() as port:
        assert healthcheck.main([f"127.0.0.1:{port}", "--timeout-s", "1"]) == 1
    assert capsys.readouterr().err.startswith(f"127.0.0.1:{port}: ")


def test_stats_count_frames_bytes_errors(stub, client, caplog):
    before = stub.GetStats(pb.StatsRequest(), timeout=10)
    frames = [client.frame(rand_images((64, 80), seed=i), frame_id=i)[0] for i in range(2)]
    bad = _mutate(frames[0], lambda f: setattr(f, "format_version", 5))
    with caplog.at_level(logging.DEBUG, logger="edge_server"):
        replies = [stub.Infer(f, timeout=10) for f in frames]
        status_of(stub.Infer, bad)
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_server"]
    expected_line = rf"method=Infer frame_id=1 images=1 bytes_in={frames[1].ByteSize()} status=OK ms=[\d.]+"
    assert re.fullmatch(expected_line, lines[1]), lines
    assert "status=INVALID_ARGUMENT" in lines[2]
    after = stub.GetStats(pb.StatsRequest(), timeout=10)
    assert after.frames - before.frames == 2 and after.images - before.images == 2
    assert after.bytes_in - before.bytes_in == sum(f.ByteSize() for f in [*frames, bad])
    assert after.bytes_out - before.bytes_out == sum(r.ByteSize() for r in replies)
    assert after.errors - before.errors == 1
    assert after.errors_by_code["INVALID_ARGUMENT"] - before.errors_by_code["INVALID_ARGUMENT"] == 1
    stages = {s.stage: s for s in after.stages}
    assert set(stages) == {"queue", "decode", "tail", "encode", "total"}
    assert stages["tail"].count == after.frames and 0 < stages["tail"].p50_ms <= stages["tail"].p95_ms
    assert after.in_flight == 0 and after.uptime_s > before.uptime_s


# ---- batcher ----


def test_batcher_groups_by_key_and_keeps_order():
    calls = []

    def run(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{i}" for i in items]

    batcher = Batcher(run, max_batch=3, max_delay_s=0.2)
    futures = [batcher.submit("ab"[i % 2], i) for i in range(6)]
    assert [f.result(5).value for f in futures] == [f"{'ab'[i % 2]}:{i}" for i in range(6)]
    batcher.close()
    assert calls == [("a", [0, 2, 4]), ("b", [1, 3, 5])]
    assert {f.result().batch_size for f in futures} == {3}


def test_batcher_drops_expired_bounds_queue_and_isolates_errors():
    gate = threading.Event()

    def run(key, items):
        gate.wait(5)
        if "bad" in items:
            raise ValueError("bad item")
        return items

    batcher = Batcher(run, max_batch=2, max_delay_s=0, max_queue=3)
    first = batcher.submit("k", "first")
    time.sleep(0.1)  # the worker holds "first" at the gate; the queue is empty again
    dead = batcher.submit("k", "dead", alive=lambda: False)
    bad = batcher.submit("k", "bad")
    good = batcher.submit("k", "good")
    with pytest.raises(QueueFull):
        batcher.submit("k", "one too many")
    gate.set()
    assert first.result(5).value == "first"
    with pytest.raises(Expired):
        dead.result(5)
    with pytest.raises(ValueError, match="bad item"):
        bad.result(5)
    assert good.result(5).value == "good"
    batcher.close()
    with pytest.raises(Closed):
        batcher.submit("k", "late")


def test_batch_key_separates_shapes(client):
    a = client.head(rand_images((70, 90)), use_filter=False)
    b = client.head(rand_images((64, 64)), use_filter=False)
    assert BatchKey.for_bottleneck(a.bottleneck, a.meta) != BatchKey.for_bottleneck(b.bottleneck, b.meta)
    assert BatchKey.for_image(torch.zeros(3, 4, 5)) != BatchKey.for_image(torch.zeros(3, 5, 4))


def test_stop_finishes_in_flight_frames(ckpt, client):
    running = serve(ckpt, port=0, workers=2, max_batch=4, max_batch_delay_ms=400)
    frame, expected = client.frame(rand_images((64, 80)))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
        stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(stub.Infer, frame, timeout=10)
            time.sleep(0.15)  # the frame waits in the batcher for more frames
            running.stop(grace=5)
            assert_same(pending.result().images, expected)


def test_expired_frame_never_reaches_the_model(ckpt, client):
    running = serve(ckpt, port=0, workers=2, max_batch=4, max_batch_delay_ms=500)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10)
            frame, _ = client.frame(rand_images((64, 80)))
            assert status_of(stub.Infer, frame, timeout=0.1)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            deadline = time.monotonic() + 10
            while not running.stats.snapshot().errors_by_code["DEADLINE_EXCEEDED"] and time.monotonic() < deadline:
                time.sleep(0.05)
        assert running.stats.snapshot().errors_by_code["DEADLINE_EXCEEDED"] == 1
        assert running.batcher.items == 0
    finally:
        running.stop(0)


# ---- TLS ----


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (cryptography is not installed)")
def test_tls(ckpt, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    running = serve(ckpt, port=0, workers=2, tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            info = splitdet_pb2_grpc.SplitDetectionStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10)
            assert info.fingerprint == running.engine.fingerprint
        with grpc.insecure_channel(f"localhost:{running.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            assert status_of(stub.GetModelInfo, pb.ModelInfoRequest())[0] == grpc.StatusCode.UNAVAILABLE
        assert healthcheck.main([f"localhost:{running.port}", "--tls-ca", str(cert)]) == 0
    finally:
        running.stop(0)
    with pytest.raises(ServerError, match="bad TLS certificate"):
        serve(ckpt, port=0, tls_cert=key, tls_key=key)


# ---- CLI, demo checkpoint, deployment files ----


def test_cli_serves_until_sigterm(ckpt):
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitdet.edge_server", "--ckpt", str(ckpt), "--port", "0", "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "no 'listening on' line within 60 s"
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            assert stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10).arch == "faster_rcnn"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _cli_error(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-server: error: "), err
    return err[0]


def test_cli_errors_exit_2_with_one_line(ckpt, tmp_path, capsys, server):
    assert "checkpoint not found" in _cli_error(capsys, "--ckpt", tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    assert "cannot read" in _cli_error(capsys, "--ckpt", corrupt)
    assert "TLS file not found" in _cli_error(
        capsys, "--ckpt", ckpt, "--tls-cert", tmp_path / "c.pem", "--tls-key", tmp_path / "k.pem"
    )
    assert "--tls-key" in _cli_error(capsys, "--ckpt", ckpt, "--tls-cert", tmp_path / "c.pem")
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert "--token-file: needs TLS" in _cli_error(capsys, "--ckpt", ckpt, "--token-file", empty)
    assert "is empty" in _cli_error(capsys, "--ckpt", ckpt, "--token-file", empty, "--allow-insecure-token")
    assert "port is in use" in _cli_error(capsys, "--ckpt", ckpt, "--port", server.port)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _cli_error(capsys, "--ckpt", ckpt, "--device", "cuda")


def test_demo_checkpoint(monkeypatch, tmp_path):
    assert demo.DEMO_CHECKPOINT == REPO / "common" / "assets" / "demo-ghnd-faster_rcnn-resnet18-b3ch.pt"
    missing = tmp_path / "demo.pt"
    monkeypatch.setattr(demo, "DEMO_CHECKPOINT", missing)
    command = "SPLITDET_ASSETS to the folder holding it, or make it with `python -m splitdet.distill.make_demo`"
    with pytest.raises(FileNotFoundError, match=re.escape(command)):
        demo.demo_checkpoint()
    missing.write_bytes(b"x")
    assert demo.demo_checkpoint() == missing


def test_compose_files():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    server, client = services["edge-server"], services["mobile-client"]
    assert server["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "splitdet.edge_server.healthcheck",
        "127.0.0.1:50051",
    ]
    assert client["entrypoint"] == ["mobile-client"]
    assert client["command"] == ["--server", "dns:///edge-server:50051", "--synthetic", "200", "--mode", "split"]
    assert client["depends_on"]["edge-server"]["condition"] == "service_healthy"
    assert server["image"] == client["image"]
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
    (device,) = gpu["services"]["edge-server"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["edge-server"]' in dockerfile


# ---- hostile clients: tokens, TLS, checkpoints ----


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_token_refuse_every_method(ckpt, client, tmp_path, capsys):
    """No token or a wrong one: UNAUTHENTICATED on every method, over TLS. A plaintext client: UNAVAILABLE, and
    the mobile-client CLI without --tls-ca exits 2 with one line."""
    cert, key = self_signed_cert(tmp_path)
    frame, expected = client.frame(rand_images((64, 80)))
    image = pb.ImageFrame(jpeg=encoded(np.zeros((48, 64, 3), np.uint8), "PNG"))
    requests = {  # method -> a fresh request (streams take an iterator)
        "GetModelInfo": lambda: pb.ModelInfoRequest(),
        "GetStats": lambda: pb.StatsRequest(),
        "Infer": lambda: frame,
        "InferStream": lambda: iter([frame]),
        "InferImage": lambda: image,
        "InferImageStream": lambda: iter([image]),
    }
    wrong = ("Bearer guess", "s3cret", "bearer s3cret", "Bearer s3cret ", "Bearer s3cre")
    refusals = [((), "missing bearer token")] + [((("authorization", w),), "wrong bearer token") for w in wrong]
    running = serve(ckpt, port=0, workers=2, tls_cert=cert, tls_key=key, token="s3cret")
    try:
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            for metadata, message in refusals:
                for name, request in requests.items():
                    got = status_of(getattr(stub, name), request(), metadata=metadata)
                    assert got == (grpc.StatusCode.UNAUTHENTICATED, message), (name, metadata)
            response = stub.Infer(frame, timeout=10, metadata=[("authorization", "Bearer s3cret")])
            assert_same(response.images, expected)
        assert running.stats.snapshot().errors_by_code["UNAUTHENTICATED"] == len(refusals) * len(requests)
        with grpc.insecure_channel(f"localhost:{running.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            code, details = status_of(stub.GetModelInfo, pb.ModelInfoRequest())
            assert code == grpc.StatusCode.UNAVAILABLE and details
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        argv = ["--server", f"localhost:{running.port}", "--ckpt", ckpt, "--synthetic", 1, "--token-file", token]
        argv = [str(a) for a in [*argv, "--timeout-s", 3, "--attempts", 1]]
        assert mobile_cli.main(argv) == 2  # the token would go in plaintext: refused before connecting
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("mobile-client: error: --token-file: needs TLS (tls_ca)")
        assert mobile_cli.main([*argv, "--allow-insecure-token"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"mobile-client: error: handshake with the edge server at localhost:{running.port}")
        assert "failed: UNAVAILABLE" in line
    finally:
        running.stop(0)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_EDGE_SERVER",))


def test_cli_refuses_checkpoint_with_pickled_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "splitdet-checkpoint", "state_dict": {}, "x": _Exploit()}, tmp_path / "evil.pt")
    assert "carries pickled code" in _cli_error(capsys, "--ckpt", tmp_path / "evil.pt", "--port", 0)
    assert not (tmp_path / "PWNED_BY_EDGE_SERVER").exists()
