"""Faults and load: a server killed mid-stream, clients that vanish, a stalled link, a server at capacity, SIGTERM
with frames in flight, and a short run of the load benchmark. Servers are tiny-model ``edge-server`` child
processes (``--torch-threads 1``) or in-process servers; clients are the mobile-client pipeline or raw gRPC calls."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitdet.benchmarks.server_process import ServerProcess
from splitdet.edge_server.server import serve
from splitdet.mobile_client import cli, runner
from splitdet.mobile_client.pipeline import FrameResult, Pipeline
from splitdet.mobile_client.settings import Options
from splitdet.mobile_client.sources import Frame
from splitdet.mobile_client.torch_head import ClientModel
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from studies import load
from tests.conftest import TINY_NAMES, wait_until

NAMES = TINY_NAMES
IMAGE = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
TINY_SERVER = ["--workers", "2", "--torch-threads", "1", "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def frame(ckpt) -> pb.BottleneckFrame:
    """A bottleneck frame made by the mobile client's own head and codec."""
    pipeline = Pipeline(Options(mode="split"), NAMES, model=ClientModel.load(ckpt))
    return pipeline.prepare(Frame(5, "camera", IMAGE)).request


class Proxy:
    """A loopback TCP proxy to ``port`` whose link can stall: bytes in both directions are held, nothing is closed."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            self._flowing.wait()
            try:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # what was read just before a stall is held too
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()


def client_pipeline(target: str, ckpt: Path, timeout_s: float, window: int) -> Pipeline:
    argv = ["--server", target, "--ckpt", str(ckpt), "--synthetic", "1", "--no-filter", "--score-threshold", "0"]
    pipeline, _, _ = runner.build_pipeline(cli.parse([*argv, "--timeout-s", str(timeout_s), "--window", str(window)]))
    return pipeline


WAIT = "wait"


def run_steps(pipeline: Pipeline, steps: list) -> list[FrameResult]:
    """Run the pipeline on frames fed by ``steps``: a number sends that many frames, :data:`WAIT` waits until every
    frame sent so far has its result, a callable runs (after the frames before it were handed to the link)."""
    results: list[FrameResult] = []

    def frames() -> Iterator[Frame]:
        index = 0
        for step in steps:
            if step == WAIT:
                assert wait_until(lambda sent=index: len(results) == sent)
            elif callable(step):
                step()
            else:
                for _ in range(step):
                    yield Frame(index, "camera", IMAGE)
                    index += 1

    try:
        results.extend(pipeline.run(frames()))
    finally:
        pipeline.close()
    return results


def error_code(result: FrameResult) -> str | None:
    return None if result.error is None else result.error.split(":")[0]


# ---- server killed and restarted mid-stream ----


def test_server_killed_mid_stream_every_frame_accounted_for(ckpt):
    """SIGKILL with frames on the wire: they are reported failed, the client reconnects and resumes."""
    servers = [ServerProcess(["--ckpt", str(ckpt), *TINY_SERVER])]
    port = servers[0].port
    pipeline = client_pipeline(f"127.0.0.1:{port}", ckpt, timeout_s=3, window=4)

    def freeze() -> None:  # frames sent from now on reach a server that never answers them
        servers[0].proc.send_signal(signal.SIGSTOP)

    def kill() -> None:
        time.sleep(0.3)  # the last frame leaves the client
        servers[0].kill()

    def restart() -> None:
        servers.append(ServerProcess(["--ckpt", str(ckpt), *TINY_SERVER, "--port", str(port)]))

    try:
        results = run_steps(pipeline, [3, WAIT, freeze, 3, kill, WAIT, 3, WAIT, restart, 4])
    finally:
        for server in servers:
            server.kill()
    assert [r.index for r in results] == list(range(13))  # every frame once, in order
    assert [error_code(r) for r in results[:3]] == [None] * 3
    assert all(error_code(r) in ("DEADLINE_EXCEEDED", "UNAVAILABLE") for r in results[3:9]), results[3:9]
    assert [error_code(r) for r in results[9:]] == [None] * 4
    assert all(r.detections and r.sent_bytes > 0 for r in results[9:])


# ---- clients that vanish ----

CLIENT = """
import sys, time, grpc
frame = open(sys.argv[2], "rb").read()
def requests():
    yield frame
    print("sent", flush=True)
    time.sleep(3600)
with grpc.insecure_channel(sys.argv[1]) as channel:
    for _ in channel.stream_stream("/splitdet.v1.SplitDetection/InferStream")(requests()):
        pass
"""


def test_killed_client_frees_its_stream_and_frame(ckpt, frame, tmp_path):
    """A client process killed with a frame queued on the server: the frame never runs, the worker is freed."""
    server = serve(ckpt, port=0, workers=2, max_batch=2, max_batch_delay_ms=1500)
    (tmp_path / "frame.bin").write_bytes(frame.SerializeToString())
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{server.port}", str(tmp_path / "frame.bin")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "sent\n"
        assert wait_until(lambda: server.stats.snapshot().in_flight == 1)
        assert server.stats.snapshot().streams == 1
        child.kill()
        child.wait()
        assert wait_until(lambda: server.stats.snapshot().streams == 0, timeout_s=10)
        assert wait_until(lambda: server.stats.snapshot().in_flight == 0, timeout_s=10)
        assert server.batcher.items == 0  # the dead client's frame expired in the queue
        assert server.stats.snapshot().errors_by_code["CANCELLED"] == 1
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
            with ThreadPoolExecutor(2) as pool:  # both workers are free again
                replies = list(pool.map(lambda _: list(stub.InferStream(iter([frame]), timeout=10)), range(2)))
        assert [len(r) for r in replies] == [1, 1]
    finally:
        child.kill()
        server.stop(0)


def test_vanished_client_is_dropped_by_keepalive(ckpt, frame):
    """A client whose link goes silent without closing (no FIN): the server's keepalive ends its stream."""
    server = serve(ckpt, port=0, workers=2, keepalive_s=1)
    proxy = Proxy(server.port)
    release = threading.Event()

    def requests():
        yield frame
        release.wait(30)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            call = splitdet_pb2_grpc.SplitDetectionStub(channel).InferStream(requests())
            assert next(call).frame_id == frame.frame_id
            assert server.stats.snapshot().streams == 1
            proxy.stall()
            start = time.monotonic()
            assert wait_until(lambda: server.stats.snapshot().streams == 0, timeout_s=15)
            assert time.monotonic() - start < 8  # one keepalive interval plus one ping timeout, and slack
            release.set()
            call.cancel()
    finally:
        proxy.close()
        server.stop(0)


# ---- a link that stalls ----


@pytest.mark.parametrize("window", [1, 4])
def test_link_stall_fails_frames_by_deadline_then_moves_on(ckpt, window):
    server = serve(ckpt, port=0, workers=2)
    proxy = Proxy(server.port)
    pipeline = client_pipeline(f"127.0.0.1:{proxy.port}", ckpt, timeout_s=1.5, window=window)
    try:
        results = run_steps(pipeline, [2, WAIT, proxy.stall, 2, WAIT, proxy.resume, 3])
    finally:
        proxy.close()
        server.stop(0)
    assert [r.index for r in results] == list(range(7))
    assert [r.error for r in results[2:4]] == ["DEADLINE_EXCEEDED: no reply within 1.5 s"] * 2
    assert all(r.error is None and r.detections for r in results[:2] + results[4:])


# ---- a server at capacity ----


def test_server_at_capacity_refuses_and_memory_stays_flat(ckpt, frame):
    """40 concurrent calls against 4 frames in progress at most: the rest are refused at once with a retry hint,
    round after round, and the server's memory does not grow with the load."""
    args = ["--ckpt", str(ckpt), *TINY_SERVER, "--max-queued-frames", "4", "--max-batch", "4"]
    args += ["--max-batch-delay-ms", "300"]
    request = frame.SerializeToString()
    rounds: list[tuple[Counter, float]] = []
    with ServerProcess(args) as server, grpc.insecure_channel(server.target) as channel:
        infer = channel.unary_unary("/splitdet.v1.SplitDetection/Infer")

        def one(_: int) -> tuple[str, str, float, dict]:
            start = time.monotonic()
            try:
                infer(request, timeout=30)
                return "OK", "", time.monotonic() - start, {}
            except grpc.RpcError as e:
                return e.code().name, e.details(), time.monotonic() - start, dict(e.trailing_metadata() or ())

        one(0)
        with ThreadPoolExecutor(40) as pool:
            for _ in range(3):
                outcomes = list(pool.map(one, range(40)))
                rounds.append((Counter(code for code, _, _, _ in outcomes), server.memory_mb()[0]))
                refused = [(details, s, md) for code, details, s, md in outcomes if code == "RESOURCE_EXHAUSTED"]
                assert all("frames are in progress" in details and s < 2.0 for details, s, _ in refused), refused
                assert all(int(md["grpc-retry-pushback-ms"]) > 0 for _, _, md in refused), refused
        stats = pb.Stats.FromString(channel.unary_unary("/splitdet.v1.SplitDetection/GetStats")(b"", timeout=10))
    for codes, _ in rounds:
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes["OK"] >= 4, codes
    assert stats.frames == 1 + sum(codes["OK"] for codes, _ in rounds) and stats.in_flight == 0
    assert rounds[-1][1] - rounds[0][1] < 30, rounds


# ---- SIGTERM with frames in flight ----


def test_sigterm_drains_then_finishes_in_flight_frames_within_grace(ckpt, frame):
    """SIGTERM: health says NOT_SERVING and new streams are refused (UNAVAILABLE) at once, a stream waiting for a
    frame ends at once, the frames in progress are answered, then the process exits."""
    args = ["--ckpt", str(ckpt), *TINY_SERVER, "--workers", "4", "--max-batch", "4", "--max-batch-delay-ms", "1500"]
    never = threading.Event()
    with ServerProcess([*args, "--grace-s", "4"]) as server, grpc.insecure_channel(server.target) as channel:
        stub = splitdet_pb2_grpc.SplitDetectionStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def stats() -> pb.Stats:
            return stub.GetStats(pb.StatsRequest(), timeout=10)

        idle = stub.InferStream(iter(never.wait, True))  # a stream that sends no frame
        assert wait_until(lambda: stats().streams == 1)
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(stub.Infer, frame, timeout=30) for _ in range(2)]
            assert wait_until(lambda: stats().in_flight == 2)  # both wait in the batcher for more frames
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == not_serving)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.InferStream(iter([frame]), timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
            with pytest.raises(grpc.RpcError) as ended:
                next(idle)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not all(p.done() for p in pending)  # all this happened while the frames were still in progress
            assert all(p.result().frame_id == frame.frame_id for p in pending)
            assert time.monotonic() - start < 4
        assert server.proc.wait(timeout=30) == 0
        assert time.monotonic() - start < 4 + 3  # the grace period, and the interpreter's exit
        never.set()


# ---- the load benchmark ----


def test_load_script_short_run(ckpt, tmp_path):
    argv = ["--clients", "2", "--minutes", "0.1", "--ckpt", str(ckpt), "--sample-s", "1"]
    assert load.main([*argv, "--out", str(tmp_path / "load")]) == 0
    text = (tmp_path / "load.md").read_text()
    for words in ("2 clients", "p50", "p95", "p99", "errors: none", "RSS"):
        assert words in text, text
    rows = (tmp_path / "load.csv").read_text().splitlines()
    assert rows[0] == "t_s,rss_mb,answered,failed,fps" and len(rows) >= 5
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
