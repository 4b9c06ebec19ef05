"""Many replicas, one fleet: the mobile client balances over a group target (``ipv4:A,B,C``), moves the frames of
a replica that dies or drains to another one, each frame answered exactly once, and refuses a replica that runs
another model. Replicas are tiny-model ``edge-server`` child processes on loopback."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from splitdet.benchmarks.server_process import ServerProcess
from splitdet.common.checkpoint import save_checkpoint
from splitdet.common.endpoint import with_default_port
from splitdet.edge_server import healthcheck
from splitdet.mobile_client.link import ROUND_ROBIN, channel_options
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from tests.conftest import TINY_NAMES, tiny_student, wait_until
from tests.test_faults import TINY_SERVER, WAIT, client_pipeline, error_code, run_steps


@pytest.mark.parametrize(
    ("target", "balanced"),
    [("dns:///edge.splitdet:50051", True), ("ipv4:127.0.0.1:1,127.0.0.1:2", True), ("127.0.0.1:50051", False)],
)
def test_group_targets_are_balanced_round_robin(target, balanced):
    assert with_default_port(target) == target
    assert (dict(channel_options(target, 16)).get("grpc.service_config") == ROUND_ROBIN) == balanced


def stats(server: ServerProcess) -> pb.Stats:
    with grpc.insecure_channel(server.target) as channel:
        return splitdet_pb2_grpc.SplitDetectionStub(channel).GetStats(pb.StatsRequest(), timeout=10)


def group(servers: list[ServerProcess]) -> str:
    return "ipv4:" + ",".join(s.target for s in servers)


def holder(servers: list[ServerProcess]) -> ServerProcess:
    """The replica that holds the client's stream."""
    found = [s for s in servers if stats(s).streams == 1]
    assert len(found) == 1, [stats(s).streams for s in servers]
    return found[0]


def test_replica_killed_mid_stream_frames_answered_once_by_the_others(ckpt):
    servers = [ServerProcess(["--ckpt", str(ckpt), *TINY_SERVER]) for _ in range(3)]
    victim: list[ServerProcess] = []

    def freeze() -> None:  # frames sent from now on reach a replica that never answers them
        victim.append(holder(servers))
        victim[0].proc.send_signal(signal.SIGSTOP)

    def kill() -> None:
        time.sleep(0.3)  # the frames leave the client
        victim[0].kill()

    try:
        pipeline = client_pipeline(group(servers), ckpt, timeout_s=10, window=4)
        results = run_steps(pipeline, [4, WAIT, freeze, 3, kill, WAIT, 5])
        survivors = [s for s in servers if s is not victim[0]]
        answered = sum(stats(s).frames for s in survivors)
    finally:
        for server in servers:
            server.kill()
    assert [r.index for r in results] == list(range(12))  # every frame once, in order
    assert [error_code(r) for r in results] == [None] * 12, [r.error for r in results]
    assert all(r.detections is not None for r in results)
    assert answered >= 3 + 5  # the frozen replica's frames and the later ones were answered by the others


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("other") / "other.pt"
    save_checkpoint(tiny_student("faster_rcnn", seed=1), path, TINY_NAMES)
    return path


@pytest.mark.parametrize("window", [1, 4])
def test_replica_with_another_model_is_refused(ckpt, other_ckpt, window):
    servers = [ServerProcess(["--ckpt", str(path), *TINY_SERVER]) for path in (other_ckpt, ckpt, other_ckpt)]
    try:
        pipeline = client_pipeline(group(servers), ckpt, timeout_s=10, window=window)
        results = run_steps(pipeline, [6])
        frames = [stats(s).frames for s in servers]
    finally:
        for server in servers:
            server.kill()
    assert [r.index for r in results] == list(range(6))
    assert [error_code(r) for r in results] == [None] * 6, [r.error for r in results]
    assert frames == [0, 6, 0]  # only the replica with the client's model answered


def test_sigterm_drains_a_replica_and_its_frames_move(ckpt):
    servers = [ServerProcess(["--ckpt", str(ckpt), *TINY_SERVER, "--grace-s", "5"]) for _ in range(2)]
    drained: list[ServerProcess] = []
    statuses: list[str] = []

    def terminate() -> None:
        drained.append(holder(servers))
        drained[0].proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _status(drained[0].target) != "SERVING", timeout_s=5)
        statuses.append(_status(drained[0].target))

    try:
        pipeline = client_pipeline(group(servers), ckpt, timeout_s=10, window=4)
        results = run_steps(pipeline, [4, WAIT, terminate, 6])
        start = time.monotonic()
        assert drained[0].proc.wait(timeout=30) == 0
        exited_s = time.monotonic() - start
    finally:
        for server in servers:
            server.kill()
    assert statuses in (["NOT_SERVING"], ["UNAVAILABLE"])  # NOT_SERVING at once, until the process is gone
    assert exited_s < 5  # the idle stream ended at once: no wait for the grace period
    assert [r.index for r in results] == list(range(10))
    assert [error_code(r) for r in results] == [None] * 10, [r.error for r in results]


def _status(target: str) -> str:
    try:
        return healthcheck.check(target, timeout_s=2)
    except grpc.RpcError as e:
        return e.code().name
