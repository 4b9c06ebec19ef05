"""Capacity: open streams cost no thread, the limits on streams and frames refuse at once with a retry hint, and
health, reflection and GetModelInfo answer whatever the load. In-process tiny-model servers; idle streams come from
``studies.fleet`` (grpc.aio, no thread per stream)."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from splitdet.edge_server.server import serve
from splitdet.mobile_client.link import Link, LinkConfig
from splitdet.mobile_client.pipeline import Pipeline
from splitdet.mobile_client.settings import Options
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.torch_head import ClientModel
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from studies.fleet import IdleStreams, health_latencies_ms
from tests.conftest import TINY_NAMES, wait_until

IMAGE = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
FAST_MS = 100  # health, reflection and GetModelInfo answer within this (median of several, on a loaded box)


@pytest.fixture(scope="module")
def frame(ckpt) -> pb.BottleneckFrame:
    pipeline = Pipeline(Options(mode="split"), TINY_NAMES, model=ClientModel.load(ckpt))
    return pipeline.prepare(Frame(5, "camera", IMAGE)).request


def refusal(error: grpc.RpcError) -> tuple[str, str, int]:
    """(code, details, retry hint in ms) of a refused call."""
    hint = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms", "-1")
    return error.code().name, error.details(), int(hint)


def fast_answers_ms(target: str) -> list[float]:
    """Median latency of health Check, GetModelInfo and a reflection listing, 5 of each, on a fresh connection."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        info = splitdet_pb2_grpc.SplitDetectionStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)  # connect first
        calls = {
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status,
            "model info": lambda: info.GetModelInfo(pb.ModelInfoRequest(), timeout=5).fingerprint,
            "reflection": lambda: ProtoReflectionDescriptorDatabase(channel).get_services(),
        }
        medians = []
        for name, call in calls.items():
            times = []
            for _ in range(5):
                start = time.perf_counter()
                assert call(), name
                times.append((time.perf_counter() - start) * 1000)
            medians.append(float(np.median(times)))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    return medians


def test_defaults_hold_256_idle_streams_and_answer_health_fast(ckpt):
    server = serve(ckpt, port=0)  # every limit at its default
    target = f"127.0.0.1:{server.port}"
    try:
        with IdleStreams(target, 256) as idle:
            assert wait_until(lambda: server.stats.snapshot().streams == 256, timeout_s=60), server.stats.snapshot()
            latencies = health_latencies_ms(target, 20)
            assert np.median(latencies) < FAST_MS and max(latencies) < 2000, latencies
            assert all(ms < FAST_MS for ms in fast_answers_ms(target))
            assert not idle.ended()
    finally:
        server.stop(0)


def test_health_serving_with_every_limit_reached(ckpt, frame):
    """Streams at their limit, frames in progress at theirs, the tail busy: new streams and frames are refused at
    once with RESOURCE_EXHAUSTED and a retry hint, and health, reflection and GetModelInfo still answer fast."""
    server = serve(ckpt, port=0, workers=1, max_streams=8, max_queued_frames=2, metrics_port=0)
    release = threading.Event()
    infer = server.engine.infer_bottlenecks

    def busy(frames):  # the tail is busy until released
        release.wait(60)
        return infer(frames)

    server.engine.infer_bottlenecks = busy
    target = f"127.0.0.1:{server.port}"
    try:
        with (
            IdleStreams(target, 8) as idle,
            grpc.insecure_channel(target) as channel,
            ThreadPoolExecutor(2) as pool,
        ):
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            assert wait_until(lambda: server.stats.snapshot().streams == 8)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.InferStream(iter([frame]), timeout=10))
            code, details, hint = refusal(info.value)
            assert (code, "8 open streams" in details, hint > 0) == ("RESOURCE_EXHAUSTED", True, True), details
            pending = [pool.submit(stub.Infer, frame, timeout=60) for _ in range(2)]  # fill the frame limit
            assert wait_until(lambda: server.stats.snapshot().in_flight == 2)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Infer(frame, timeout=10)
            code, details, hint = refusal(info.value)
            assert (code, "frames are in progress" in details, hint > 0) == ("RESOURCE_EXHAUSTED", True, True)
            assert time.monotonic() - start < 2  # at once, not after a wait
            assert all(ms < FAST_MS for ms in fast_answers_ms(target))
            release.set()
            assert [p.result().frame_id for p in pending] == [frame.frame_id] * 2
            assert not idle.ended()
        metrics = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in grpc_metrics(server.metrics_port).splitlines()
            if line.startswith("splitdet_refused_total")
        }
        assert metrics['splitdet_refused_total{limit="streams",method="InferStream"}'] == 1
        assert metrics['splitdet_refused_total{limit="frames",method="Infer"}'] == 1
    finally:
        release.set()
        server.stop(0)


def grpc_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_client_honours_the_retry_hint(ckpt, frame):
    """The link waits out the server's hint instead of hammering, then gets its answer."""
    server = serve(ckpt, port=0, workers=1, max_queued_frames=1)
    release = threading.Event()
    infer = server.engine.infer_bottlenecks

    def busy(frames):
        release.wait(60)
        return infer(frames)

    server.engine.infer_bottlenecks = busy
    link = Link(LinkConfig(f"127.0.0.1:{server.port}", timeout_s=30, attempts=2))
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(link.call, link.stub.Infer, frame, link.deadline())
            assert wait_until(lambda: server.stats.snapshot().in_flight == 1)
            threading.Timer(1.0, release.set).start()
            start = time.monotonic()
            second = link.call(link.stub.Infer, frame, link.deadline())  # refused, waits, retried: more than 2 tries
            assert second.response.frame_id == frame.frame_id and first.result().response.frame_id == frame.frame_id
        refused = server.stats.snapshot().errors_by_code["RESOURCE_EXHAUSTED"]
        assert refused >= 1 and refused <= (time.monotonic() - start) / 0.02 + 1  # at most one try per minimal hint
    finally:
        release.set()
        link.close()
        server.stop(0)
