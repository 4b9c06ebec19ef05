"""Device client benchmark: the torch client against the torch-free ONNX client (``--runtime onnx``).

    python -m studies.device_client [--frames 40] [--sizes 240x320,480x640] [--quota 1,0.25,0.1] \\
        [--device-venv DIR] [--latency-only] [--out studies/results/device_client.md]

Measures, for the bundled demo checkpoint and its ONNX heads (float32, and int8 calibrated on the demo's training
frames):

* install size: a fresh virtual environment with ``pip install ".[device]"`` against this one (the full install);
* cold start-up: ``mobile-client --help``, and the time from starting ``mobile-client`` to its first frame's JSON
  line against an edge server on loopback;
* head latency per frame on one thread, torch, ONNX Runtime and ONNX Runtime int8 alternating frame by frame in
  one process, unrestricted and under CPU quotas (cgroup v1 CPU bandwidth, ``--quota`` shares of one core) that
  emulate a weak device: a sent frame (stem + filter + encoder, then quantize + zstd) and a frame the neural filter
  skips (stem + filter: the encoder does not run).

``--latency-only`` measures and writes the latency section alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splitdet.mobile_client.device_cpu import DeviceQuota, detect
from splitdet.mobile_client.settings import SetupError
from tests.device_venv import make_device_venv

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = "configs/ghnd/synthetic-demo.yaml"  #: the demo checkpoint's training config: int8 calibration frames
QUOTA_PERIOD_US = 100_000


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _largest(venv: Path, n: int = 6) -> str:
    site = _site_packages(venv)
    sizes = sorted(
        ((_du_mb(p), p.name) for p in site.iterdir() if p.is_dir() and "dist-info" not in p.name), reverse=True
    )
    return ", ".join(f"{name} {mb:.0f}" for mb, name in sizes[:n])


def _env(device: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if not device:
        env["PYTHONPATH"] = str(ROOT)  # the full venv may hold an editable install of another checkout
    return env


def _median_s(argv: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=300)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _first_frame_s(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(seconds until the first JSON line, seconds until the process ended)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    first = time.perf_counter() - t0
    proc.stdout.read()
    if proc.wait(timeout=300) != 0 or not line.startswith("{"):
        raise RuntimeError(f"{argv[:4]}... failed")
    return first, time.perf_counter() - t0


RUNTIMES = {"torch": "torch", "onnx": "ONNX Runtime", "int8": "ONNX Runtime int8"}


def latency(args: argparse.Namespace) -> None:
    """Child process: per-frame device milliseconds of every runtime, alternating; JSON on stdout. A sent frame
    passes the filter (threshold 0), a skipped one fails it (threshold above 1)."""
    import numpy as np
    import torch

    from splitdet.common.wire import encode_frame
    from splitdet.mobile_client.onnx_head import OnnxHead
    from splitdet.mobile_client.torch_head import ClientModel
    from splitdet.synthetic import SceneConfig, render_scene

    torch.set_num_threads(1)
    torch_model = ClientModel.load(args.ckpt)
    models = {
        "torch": torch_model,
        "onnx": OnnxHead.load(args.head, threads=1),
        "int8": OnnxHead.load(args.int8_head, threads=1),
    }
    h, w = (int(v) for v in args.size.split("x"))
    frames = [np.array(render_scene(seed, SceneConfig(height=h, width=w))[0]) for seed in range(args.frames + 2)]
    keys = ("head", "head_cpu", "encode", "skipped")
    out: dict[str, dict[str, list[float]]] = {name: {key: [] for key in keys} for name in models}
    runs = [(name, skip) for name in models for skip in (False, True)]
    if args.order == "alternate":  # frame i by every runtime, sent and skipped, then frame i+1, ...
        order = [(i, name, skip) for i in range(len(frames)) for name, skip in runs]
    else:  # every frame by one runtime, then the next: under a quota none eats another's budget
        order = [(i, name, skip) for name, skip in runs for i in range(len(frames))]
    for i, name, skip in order:
        model = models[name]
        threshold = 1.5 if skip else 0.0
        if name == "torch":
            model.head.filter_threshold = threshold
        else:
            model.filter_threshold = threshold
        c0, t0 = time.process_time(), time.perf_counter()
        res = model.run_head(frames[i], use_filter=True)
        t1, c1 = time.perf_counter(), time.process_time()
        if res.bottleneck is not None:
            encode_frame(res.bottleneck, res.meta, model.codec, model.fingerprint)
        t2 = time.perf_counter()
        if (res.bottleneck is None) != skip:
            raise RuntimeError(f"{name}: frame {i} {'sent' if skip else 'skipped'} against its threshold")
        if i < 2:  # two warm-up frames
            continue
        if skip:
            out[name]["skipped"].append((t1 - t0) * 1e3)
        else:
            out[name]["head"].append((t1 - t0) * 1e3)
            out[name]["head_cpu"].append((c1 - c0) * 1e3)
            out[name]["encode"].append((t2 - t1) * 1e3)
    print(json.dumps(out))


def _run_latency(ckpt: Path, heads: tuple[Path, Path], size: str, frames: int, quota: float | None) -> dict:
    argv = [sys.executable, "-m", "studies.device_client", "_latency", "--ckpt", str(ckpt)]
    argv += ["--head", str(heads[0]), "--int8-head", str(heads[1])]
    argv += ["--size", size, "--frames", str(frames), "--order", "alternate" if quota is None else "blocked"]
    env = {**_env(False), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # The same cgroup v1 quota mobile-client's --device-cpu uses, with a 100 ms period; the child joins it before
    # it imports anything.
    group = DeviceQuota("cgroup1", quota, period_us=QUOTA_PERIOD_US) if quota is not None else None
    try:
        proc = subprocess.run(
            argv,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
            preexec_fn=(lambda: group.add(os.getpid())) if group is not None else None,
        )
    finally:
        if group is not None:
            group.close()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stats(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10) if len(values) >= 2 else values * 9
    return f"{statistics.median(values):.1f} / {statistics.mean(values):.1f} / {q[8]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("_latency", help="(internal) the latency child process")
    for name in ("--ckpt", "--head", "--int8-head", "--size"):
        child.add_argument(name, required=True)
    child.add_argument("--frames", type=int, required=True)
    child.add_argument("--order", choices=("alternate", "blocked"), required=True)
    parser.add_argument("--frames", type=int, default=40, help="frames per latency run (default: %(default)s)")
    parser.add_argument("--sizes", default="240x320,480x640", help="frame sizes HxW (default: %(default)s)")
    parser.add_argument(
        "--quota", default="1,0.25,0.1", help="CPU quotas, shares of one core, comma list (default: %(default)s)"
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="measure the head latency only (default: everything)"
    )
    parser.add_argument(
        "--calibration", type=int, default=64, help="int8 head: calibration frames (default: %(default)s)"
    )
    parser.add_argument("--device-venv", type=Path, help="reuse this device venv (default: build a fresh one)")
    parser.add_argument("--out", type=Path, help="write the markdown here (default: stdout only)")
    args = parser.parse_args(argv)
    if args.command == "_latency":
        latency(args)
        return 0

    from splitdet.common.demo import demo_checkpoint
    from splitdet.common.onnx_export import export_onnx_head
    from splitdet.common.onnx_int8 import calibration_frames

    work = Path(tempfile.mkdtemp(prefix="device-bench-"))
    load_start = os.getloadavg()
    ckpt = demo_checkpoint()
    heads = (work / "head.onnx", work / "head-int8.onnx")
    export_onnx_head(ckpt, heads[0])
    calibration = calibration_frames(args.calibration, ROOT / DEMO_CONFIG)
    export_onnx_head(ckpt, heads[1], calibration=calibration)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    import onnxruntime
    import torch

    command = "python -m studies.device_client " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Device client: torch vs ONNX Runtime",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}; machine: {cpu}, {os.cpu_count()} cores shared with other work "
        f"(load average {load_start[0]:.1f} at the start), Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Model: the bundled demo checkpoint "
        f"({ckpt.name}) and its ONNX heads ({heads[0].stat().st_size / 1e6:.1f} MB float32, "
        f"{heads[1].stat().st_size / 1e6:.1f} MB int8 calibrated on {len(calibration)} frames of {DEMO_CONFIG}'s "
        "train split).",
    ]
    if not args.latency_only:
        lines += install_section(args, work, ckpt, heads[0])
    lines += latency_section(args, ckpt, heads)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def install_section(args: argparse.Namespace, work: Path, ckpt: Path, head: Path) -> list[str]:
    """The device venv against the full one: size, --help, imports, time to the first frame (markdown lines)."""
    t0 = time.perf_counter()
    venv = args.device_venv or work / "venv"
    if args.device_venv is None:
        make_device_venv(venv, work)
    install_s = time.perf_counter() - t0
    full_venv = Path(sys.prefix)
    device_python, full_python = venv / "bin" / "python", full_venv / "bin" / "python"

    sizes = {"device": _du_mb(venv), "full": _du_mb(full_venv)}
    helps = {
        "device": _median_s([str(venv / "bin" / "mobile-client"), "--help"], _env(True), 5),
        "full": _median_s([str(full_python), "-m", "splitdet.mobile_client", "--help"], _env(False), 5),
    }
    imports = {
        "device": _median_s(
            [str(device_python), "-c", "import onnxruntime, splitdet.mobile_client.runner"], _env(True), 3
        ),
        "full": _median_s([str(full_python), "-c", "import torch, splitdet.mobile_client.runner"], _env(False), 3),
    }
    from splitdet.benchmarks.server_process import ServerProcess
    from splitdet.synthetic import SceneConfig, render_scene

    images = work / "images"
    images.mkdir()
    render_scene(0, SceneConfig(height=240, width=320))[0].save(images / "0.png")
    first: dict[str, list[tuple[float, float]]] = {"device": [], "full": []}
    with ServerProcess(["--ckpt", str(ckpt), "--workers", "2"]) as server:
        common = ["--server", server.target, "--images", str(images), "--window", "1"]
        for _ in range(3):
            first["device"].append(
                _first_frame_s(
                    [
                        str(device_python),
                        "-m",
                        "splitdet.mobile_client",
                        "--runtime",
                        "onnx",
                        "--head",
                        str(head),
                        *common,
                    ],
                    _env(True),
                    work,
                )
            )
            first["full"].append(
                _first_frame_s(
                    [str(full_python), "-m", "splitdet.mobile_client", "--ckpt", str(ckpt), *common], _env(False), work
                )
            )
    return [
        "",
        "## Install and start-up",
        "",
        '| | device client (`pip install ".[device]"`, `--runtime onnx`) | today\'s client (full install, torch) |',
        "| --- | --- | --- |",
        f"| virtual environment on disk | {sizes['device']:,.0f} MB | {sizes['full']:,.0f} MB |",
        f"| largest packages (MB) | {_largest(venv)} | {_largest(full_venv)} |",
        f"| `mobile-client --help` (median of 5) | {helps['device']:.2f} s | {helps['full']:.2f} s |",
        f"| importing the runtime + `splitdet.mobile_client.runner` (median of 3) | {imports['device']:.2f} s "
        f"| {imports['full']:.2f} s |",
        "| start to first frame's JSON line, one 240x320 image, split mode, server on loopback (median of 3) "
        f"| {statistics.median(f for f, _ in first['device']):.2f} s "
        f"| {statistics.median(f for f, _ in first['full']):.2f} s |",
        f"| whole run (median of 3) | {statistics.median(t for _, t in first['device']):.2f} s "
        f"| {statistics.median(t for _, t in first['full']):.2f} s |",
        "",
        f"The device venv was built in {install_s:.0f} s (pip cache warm)." if args.device_venv is None else "",
        "The full environment includes the dev tools (pytest, ruff, hypothesis, ...) besides torch.",
    ]


def latency_section(args: argparse.Namespace, ckpt: Path, heads: tuple[Path, Path]) -> list[str]:
    """Per-frame device ms of torch, ONNX Runtime and ONNX Runtime int8, sent and skipped (markdown lines)."""
    try:
        quota_ok = detect("cgroup1") == "cgroup1"
    except SetupError:
        quota_ok = False
    quotas = [float(q) for q in args.quota.split(",") if q.strip()]
    runs = []
    for size in args.sizes.split(","):
        for quota in [None, *quotas] if quota_ok else [None]:
            runs.append((size, quota, _run_latency(ckpt, heads, size, args.frames, quota)))
    lines = [
        "",
        "## Head latency per frame, one thread (median / mean / p90 ms)",
        "",
        "Sent = preprocess + stem + neural filter + encoder (the filter passes every frame: threshold 0); skipped = "
        "preprocess + stem + neural filter (the filter rejects every frame: threshold above 1), the encoder not run; "
        "encode = quantize + zstd (the same `splitdet.common.wire` code for all). One process runs the three heads "
        "on the "
        f"same synthetic frames, {args.frames} frames each after 2 warm-up frames: on one core they alternate frame "
        "by frame; under a quota each runs its frames in one block (alternating, the slower one would use up the "
        "period's budget and stall the others). A quota is cgroup v1 CPU bandwidth over a 100000 us period (0.25: "
        "25000 us), a stand-in for a weak device's core; frames there run back to back, so the mean is CPU time / "
        "quota and single frames that fit in the period's budget finish at full speed. The demo checkpoint's "
        "transform resizes every frame to its input size (min_size = max_size = 160: 120x160 for these 3:4 frames). "
        "Speed-up = torch mean / ONNX Runtime mean (wall clock, sent frames). The CPU time columns (the process's "
        "CPU time per sent frame) do not count the time spent waiting for a core, which on this shared machine can "
        "be most of it.",
        "",
        "| frame | CPU | head | sent | skipped | speed-up | sent CPU time | encode |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, quota, r in runs:
        torch_mean = statistics.mean(r["torch"]["head"])
        for name, label in RUNTIMES.items():
            m = r[name]
            lines.append(
                f"| {size} | {'one core' if quota is None else f'quota {quota:g} core'} | {label} "
                f"| {_stats(m['head'])} | {_stats(m['skipped'])} | {torch_mean / statistics.mean(m['head']):.2f}x "
                f"| {_stats(m['head_cpu'])} | {_stats(m['encode'])} |"
            )
    if not quota_ok:
        lines += ["", "No CPU quota run: it needs root and the cgroup v1 cpu controller."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
