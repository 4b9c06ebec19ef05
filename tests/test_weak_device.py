"""Issue 12: the weak device (CPU quota mechanisms and their refusal), fair offloading at the model's input size,
auto mode on a scripted link schedule, rate schedules and exact trace floors, the bench video's empty runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from splitdet.benchmarks import bench, bench_cli
from splitdet.benchmarks.shaper import RateSchedule, Trace, trace_delivery
from splitdet.common.options import OptionsError
from splitdet.common.wire import encode_detections
from splitdet.mobile_client import cli as client_cli
from splitdet.mobile_client import device_cpu
from splitdet.mobile_client.auto import AutoPolicy, fitted_rtt
from splitdet.mobile_client.link import Reply
from splitdet.mobile_client.offload import encode_image, model_input_size, to_frame_coordinates
from splitdet.mobile_client.pipeline import FrameResult, Pipeline
from splitdet.mobile_client.settings import Options, SetupError
from splitdet.mobile_client.sources import Frame
from splitdet.proto import splitdet_pb2 as pb
from splitdet.synthetic.video import SyntheticVideo

# ---- CPU quota: detection, one-line refusal, the quota itself ----


def _no_mechanism(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(device_cpu, "CGROUP_ROOT", tmp_path / "no-cgroup")
    monkeypatch.setattr(device_cpu.shutil, "which", lambda name: None)


def test_quota_mechanism_detection(tmp_path):
    none = tmp_path / "none"
    with pytest.raises(SetupError) as e:
        device_cpu.detect("auto", none, lambda name: None)
    message = str(e.value)
    assert "\n" not in message and "cgroup1:" in message and "cgroup2:" in message and "cpulimit" in message
    assert device_cpu.detect("auto", none, lambda name: "/usr/bin/cpulimit") == "cpulimit"

    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert device_cpu.detect("auto", v1, lambda name: None) == "cgroup1"
    with pytest.raises(SetupError, match="cgroup2: no cgroup v2 hierarchy"):
        device_cpu.detect("cgroup2", v1, lambda name: "/usr/bin/cpulimit")

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids")
    (v2 / "cgroup.subtree_control").write_text("")
    assert device_cpu.detect("auto", v2, lambda name: None) == "cgroup2"
    (v2 / "cgroup.controllers").write_text("memory pids")
    with pytest.raises(SetupError, match="has no cpu controller"):
        device_cpu.detect("cgroup2", v2, lambda name: None)
    with pytest.raises(SetupError, match="unknown CPU quota mechanism"):
        device_cpu.detect("docker", v2, lambda name: None)


def test_quota_files_written(tmp_path):
    (tmp_path / "cpu").mkdir()
    quota = device_cpu.DeviceQuota("cgroup1", 0.25, root=tmp_path, name="dev")
    group = tmp_path / "cpu" / "dev"
    assert (group / "cpu.cfs_period_us").read_text() == str(device_cpu.PERIOD_US)
    assert (group / "cpu.cfs_quota_us").read_text() == str(device_cpu.PERIOD_US // 4)
    quota.add(1234)
    assert (group / "cgroup.procs").read_text() == "1234"
    assert "cfs_quota_us 2500 per 10000 us" in quota.description

    (tmp_path / "cgroup.subtree_control").write_text("memory")
    device_cpu.DeviceQuota("cgroup2", 0.1, root=tmp_path, name="dev2")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "dev2" / "cpu.max").read_text() == f"1000 {device_cpu.PERIOD_US}"


def test_device_cpu_values_are_checked():
    assert device_cpu.parse_cores("1,0.5,0.25,0.1", cpus=2) == [1.0, 0.5, 0.25, 0.1]
    for bad in ("0", "3", "a,b", ""):
        with pytest.raises(SetupError):
            device_cpu.parse_cores(bad, cpus=2)


def test_split_bench_refuses_device_cpu_without_a_mechanism(monkeypatch, tmp_path, capsys):
    _no_mechanism(monkeypatch, tmp_path)
    assert bench_cli.main(["--device-cpu", "0.25", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("split-bench: error: cannot hold the device to a CPU quota (")
    assert not (tmp_path / "out").exists()


def test_mobile_client_refuses_device_cpu_without_a_mechanism(monkeypatch, tmp_path, capsys):
    _no_mechanism(monkeypatch, tmp_path)
    assert client_cli.main(["--mode", "local", "--synthetic", "2", "--device-cpu", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mobile-client: error: cannot hold the device to a CPU quota")


@pytest.mark.skipif(
    os.geteuid() != 0 or device_cpu._cgroup1(device_cpu.CGROUP_ROOT) is not None, reason="needs root and cgroup v1"
)
def test_cgroup1_quota_holds_a_busy_process_to_its_share():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with device_cpu.DeviceQuota("cgroup1", 0.2) as quota:
            quota.add(busy.pid)
            group = quota.group
            start = _cpu_seconds(busy.pid)
            time.sleep(1.0)
            used = _cpu_seconds(busy.pid) - start
        assert used < 0.3  # 0.2 core for 1 s (the machine may be busy: less is fine)
        assert not group.exists()
    finally:
        busy.kill()
        busy.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- fair offloading ----


@pytest.mark.parametrize("min_size,max_size", [(160, 160), (800, 1333), (320, 512)])
@pytest.mark.parametrize("shape", [(240, 320), (160, 160), (480, 640), (161, 999), (1000, 90), (720, 1280)])
def test_offload_resize_matches_the_model_transform(shape, min_size, max_size):
    transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    images, _ = transform([torch.rand(3, *shape)])
    assert model_input_size(*shape, min_size, max_size) == tuple(images.image_sizes[0])


def test_offload_encodings_decode_at_the_model_size():
    rgb = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    size = model_input_size(240, 320, 160, 160)
    assert size == (120, 160)
    for fmt in ("jpeg", "webp"):
        data = encode_image(rgb, fmt, 90, size)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == fmt.upper() and im.size == (160, 120)
    assert len(encode_image(rgb, "jpeg", 95, size)) < len(encode_image(rgb, "jpeg", 95))


def test_offload_detections_come_back_in_frame_coordinates():
    image = np.zeros((240, 320, 3), np.uint8)
    options = Options(mode="offload", offload_size=(160, 160), jpeg_quality=90)
    pipeline = Pipeline(options, ["__background__", "disc"])
    work = pipeline.prepare(Frame(0, "x", image))
    with Image.open(io.BytesIO(work.request.jpeg)) as im:
        assert im.size == (160, 120)
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
        "keypoints": torch.tensor([[[40.0, 30.0, 1.0]]]),
        "keypoints_scores": torch.tensor([[1.0]]),
    }
    response = pb.InferResponse(images=[encode_detections(det)])
    result = pipeline.complete(work, reply=Reply(response, sent_at=1.0, received_at=1.1))
    assert result.detections[0]["box"] == [20.0, 40.0, 100.0, 120.0]  # x2 each way: 160x120 -> 320x240
    assert result.detections[0]["keypoints"] == [[80.0, 60.0, 1.0]]
    assert result.sent_at == 1.0

    source = Pipeline(Options(mode="offload", offload_size=None), ["__background__", "disc"]).prepare(
        Frame(0, "x", image)
    )
    with Image.open(io.BytesIO(source.request.jpeg)) as im:
        assert im.size == (320, 240) and source.sent_size is None


def test_masks_are_resized_to_the_frame():
    from pycocotools import mask as mask_utils

    m = np.zeros((120, 160), np.uint8)
    m[10:20, 30:50] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    det = {
        "boxes": np.array([[30, 10, 50, 20]], np.float32),
        "scores": np.array([0.9], np.float32),
        "labels": np.array([1]),
        "masks": [{"size": [120, 160], "counts": rle["counts"].decode("ascii")}],
    }
    out = to_frame_coordinates(det, (120, 160), (240, 320))
    big = mask_utils.decode({"size": out["masks"][0]["size"], "counts": out["masks"][0]["counts"].encode()})
    assert big.shape == (240, 320) and big.sum() == 4 * m.sum()
    assert to_frame_coordinates(det, (120, 160), (120, 160)) is det


# ---- auto mode on a scripted link schedule ----


def _frame(mode: str, mbps: float, rtt: float = 20.0) -> FrameResult:
    """One frame of a 0.25-core device (head 32 ms, local tail 600 ms) against a full-core server."""
    if mode == "local":
        return FrameResult(0, "x", mode, timing_ms={"head": 32.0, "tail": 600.0, "total": 632.0})
    sent = 4100 if mode == "split" else 9700
    network = rtt + sent * 8e-3 / mbps
    timing = {"head": 32.0, "encode": 2.0} if mode == "split" else {"encode": 4.0}
    timing["network"] = network
    server = 95.0 if mode == "split" else 100.0
    return FrameResult(0, "x", mode, sent_bytes=sent, timing_ms=timing, server_ms=server)


def test_auto_follows_a_scripted_link_schedule():
    """20 Mbit/s (offload is fastest) -> 0.5 Mbit/s (split is) -> 20 Mbit/s: auto switches within 3 frames."""
    logs: list[str] = []
    policy = AutoPolicy(log=logs.append, probe_every=1000)
    schedule = [20.0] * 30 + [0.5] * 30 + [20.0] * 30
    chosen = []
    for i, mbps in enumerate(schedule):
        mode = policy.choose(i)
        chosen.append(mode)
        policy.observe(_frame(mode, mbps))
    assert chosen[:3] == ["split", "offload", "local"]
    assert set(chosen[4:30]) == {"offload"}  # decided right after trying each mode once
    assert "offload" not in chosen[33:60] and set(chosen[33:60]) == {"split"}
    assert set(chosen[63:]) == {"offload"}
    assert [(a, b) for _, a, b in policy.switches] == [("split", "offload"), ("offload", "split"), ("split", "offload")]
    frames = [f for f, _, _ in policy.switches]
    assert frames[0] == 3 and 31 <= frames[1] <= 33 and 61 <= frames[2] <= 63  # within 3 frames of each change
    assert len(logs) == 3 and "offload -> split" in logs[1]


def test_auto_starts_right_on_a_slow_link():
    policy = AutoPolicy(log=lambda _: None, probe_every=1000)
    for i in range(10):
        policy.observe(_frame(mode := policy.choose(i), 0.5))
    assert mode == "split" and policy.switches == []
    assert fitted_rtt([(4100, 20 + 4100 * 8e-3 / 0.5), (9700, 20 + 9700 * 8e-3 / 0.5)]) == pytest.approx(20.0)
    assert fitted_rtt([(4100, 30.0), (4200, 31.0)]) is None


# ---- links: rate schedules and exact trace floors ----


def test_rate_schedule():
    schedule = RateSchedule.parse("20:20,0.5:10,20:5")
    assert schedule.duration_s == 35 and schedule.label == "schedule 20→0.5→20 Mbps"
    assert [schedule.rate_at(t) for t in (0, 19.9, 20, 29.9, 30, 40)] == [20, 20, 0.5, 0.5, 20, 20]
    for bad in ("20", "20:0", "a:b", "-1:5"):
        with pytest.raises(ValueError, match="MBPS:SECONDS"):
            RateSchedule.parse(bad)


def test_trace_floor_walks_the_delivery_opportunities(tmp_path):
    path = tmp_path / "synthetic.up"
    path.write_text("\n".join(["10", "10", "50", "400", "1000"]))  # period 1 s
    trace = Trace.load(path)
    origin = 100.0
    assert trace_delivery(trace, origin, 100.0, 1500) == pytest.approx(100.010)
    assert trace_delivery(trace, origin, 100.0, 3001) == pytest.approx(100.050)  # three opportunities
    assert trace_delivery(trace, origin, 100.02, 100) == pytest.approx(100.050)
    assert trace_delivery(trace, origin, 100.5, 4500) == pytest.approx(101.010)  # 1000 ms, then 1010 ms twice
    spec = bench.LinkSpec(None, None, 20.0, up_trace=trace, down_trace=trace)
    result = FrameResult(0, "x", "split", sent_bytes=3000, timing_ms={"head": 5.0, "encode": 1.0, "total": 200.0},
                         server_ms=10.0, received_bytes=300)  # fmt: skip
    result.sent_at = 100.0
    # up: 2 opportunities from 100.0 -> 100.010; +10 ms one way +10 ms server -> 100.030; down: next opportunity
    # 100.050; +10 ms one way = 60 ms after sending, + 6 ms on the device
    assert bench.physical_floor(result, spec, origin) == pytest.approx(66.0)
    assert bench.physical_floor(result, spec) == pytest.approx(6 + (3000 + 300) * 8e-3 / trace.mean_mbps + 20 + 10)


# ---- the bench video ----


def test_bench_video_has_empty_runs():
    video = SyntheticVideo(64, seed=0, empty_ratio=0.5, run_frames=(4, 8))
    empty = set(video.empty_frames)
    assert 0.3 <= len(empty) / 64 <= 0.7
    runs = np.diff([i for i in range(64) if i not in empty])
    assert (runs > 1).sum() >= 3  # several separate empty stretches
    frames = list(video)
    assert all(not anns for i, (_, anns) in enumerate(frames) if i in empty)
    with pytest.raises(ValueError):
        SyntheticVideo(4, run_frames=(0, 3))


def test_gpu_options_are_checked_before_torch():
    options = bench_cli.parse(["--server-device", "cuda:1", "--server-max-batch", "8"])
    assert options.server_device == "cuda:1" and options.server_max_batch == 8
    for bad, field in (
        (["--server-device", "tpu"], "server_device"),
        (["--server-max-batch", "0"], "server_max_batch"),
    ):
        with pytest.raises(OptionsError) as e:
            bench_cli.parse(bad)
        assert e.value.field == field


def test_schedule_floor_uses_the_rate_at_the_send_time():
    spec = bench.LinkSpec(None, None, 20.0, schedule=RateSchedule.parse("20:10,0.5:10"))
    result = FrameResult(0, "x", "split", sent_bytes=5000, timing_ms={"head": 5.0, "total": 200.0}, server_ms=10.0)
    result.sent_at = 115.0
    assert bench.physical_floor(result, spec, origin=100.0) == pytest.approx(5 + 5000 * 8e-3 / 0.5 + 20 + 10)
    result.sent_at = 101.0
    assert bench.physical_floor(result, spec, origin=100.0) == pytest.approx(5 + 5000 * 8e-3 / 20 + 20 + 10)


def test_accuracy_points_include_webp(tmp_path):
    from splitdet.benchmarks.bench_report import accuracy_points

    path = tmp_path / "offload_eval.json"
    path.write_text(
        '{"checkpoint": "x.pt", "student": false, "runs": [], "jpeg": {"95": 11000.0}, '
        '"jpeg_ap": {"95": {"bbox": {"AP": 0.35}}}, "webp": {"75": 3000.0}, "webp_ap": {"75": {"bbox": {"AP": 0.33}}}}'
    )
    points, _ = accuracy_points([path])
    assert [(p["label"], p["bytes"], p["ap"]) for p in points] == [
        ("offload JPEG q95 (teacher)", 11000.0, 0.35),
        ("offload WebP q75 (teacher)", 3000.0, 0.33),
    ]
