"""``split-bench``: latency, bytes per frame and throughput of local, offload (JPEG/WebP at the model's input
size), split, split+filter and auto over emulated links and emulated device speeds, next to each frame's physical
floor; which mode wins where (the crossover map); and accuracy against bytes from ``split-eval`` results.

    split-bench --rates 0.5,1,2,5,10,50 --device-cpu 1,0.5,0.25,0.1 --frames 16 --out benchmarks/results/crossover

An ``edge-server`` process serves the checkpoint behind the emulated link (the userspace shaper of
:mod:`splitdet.benchmarks.shaper`, or netem between network namespaces, :mod:`splitdet.benchmarks.netem`). The device is
a child process (:mod:`splitdet.benchmarks.device_worker`) running the real client pipeline
(:mod:`splitdet.mobile_client.pipeline` over
:mod:`splitdet.mobile_client.link`); with ``--device-cpu F,...`` it runs once per F under a CPU quota of F cores
(:mod:`splitdet.mobile_client.device_cpu`: cgroup v1, cgroup v2 or cpulimit) while the server and the shaper keep their
cores. For every device speed, mode and link it makes a latency run, one frame at a time (window 1, unary calls),
and with ``--stream`` a streaming run with ``--window`` frames in flight. Each run starts with ``--warmup`` frames
that are not recorded (auto: at least 3, its tries of each mode). ``local`` uses no link and runs once per device
speed. A ``--schedule`` link changes its rate during one run (the frames cycle until the schedule ends), for
auto's switching.

The physical floor of a frame is what it has to cost on this link given its measured stages: head + filter +
encode on the device, the request's bytes over the uplink, the RTT, the server's time (queue, decode, tail,
encode) and the response's bytes over the downlink (``local``: head + filter + tail). On a fixed rate the bytes
take bytes / rate; on a trace link they take until the trace's delivery opportunities from the frame's send time
have carried them (:func:`splitdet.benchmarks.shaper.trace_delivery`), so no measured time can fall below it. The
runtime overhead is end-to-end minus floor: gRPC and HTTP/2 framing, TCP, threads, Python. Packet loss is not part of
the floor. On a trace link the frames are spread over the trace's whole period (``--trace-window-s``).

Writes to ``--out``: ``bench.csv`` (one row per frame), ``bench.json`` (the rows plus summaries, the map, runs,
accuracy points and the setup), ``cells.csv`` (one row per device speed, mode and link), ``bench.md`` (also printed
on stdout) and the plots. Progress goes to stderr. Exit status: 0, 1 when every frame failed, 2 for usage and
setup errors (one line).
"""

from __future__ import annotations

import glob
import itertools
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from splitdet.benchmarks.bench_options import BENCH_MODES, EVAL_GLOB, BenchOptions
from splitdet.benchmarks.bench_report import (
    REPORT_STAGES,
    accuracy_points,
    bytes_by_mode,
    crossover,
    describe_input,
    markdown,
    summarize,
    write_outputs,
)
from splitdet.benchmarks.device_worker import Device, DeviceError, DeviceSpec, load_frames
from splitdet.benchmarks.netem import NetemError, NetemLink, unavailable
from splitdet.benchmarks.paths import shown_args, shown_path
from splitdet.benchmarks.server_process import ServerProcess, ServerStartError
from splitdet.benchmarks.shaper import LinkShaper, RateSchedule, Trace, trace_delivery
from splitdet.common.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from splitdet.common.demo import demo_checkpoint
from splitdet.mobile_client import handshake
from splitdet.mobile_client.device_cpu import DeviceQuota, detect, parse_cores
from splitdet.mobile_client.link import LinkConfig
from splitdet.mobile_client.offload import encode_image, model_input_size
from splitdet.mobile_client.onnx_head import OnnxHead
from splitdet.mobile_client.pipeline import FrameResult
from splitdet.mobile_client.settings import SetupError
from splitdet.mobile_client.sources import Frame, SourceError

SERVER_START_S = 180.0


def _log(message: str) -> None:
    print(f"split-bench: {message}", file=sys.stderr, flush=True)


# ---- links and emulators ----


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link: rates in Mbit/s (or mahimahi traces), round-trip time, jitter, loss per packet."""

    up_mbps: float | None
    down_mbps: float | None
    rtt_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    up_trace: Trace | None = None
    down_trace: Trace | None = None
    schedule: RateSchedule | None = None

    @property
    def label(self) -> str:
        if self.schedule is not None:
            return self.schedule.label
        if self.up_trace is not None:
            return f"trace {self.up_trace.name}/{self.down_trace.name}"
        down = "" if self.down_mbps == self.up_mbps else f"/{self.down_mbps:g}"
        return f"{self.up_mbps:g}{down} Mbps"

    @property
    def up_rate(self) -> float:
        """Mbit/s: the trace's mean, the schedule's time-weighted mean, or the rate."""
        if self.schedule is not None:
            return _schedule_mean(self.schedule)
        return self.up_trace.mean_mbps if self.up_trace is not None else self.up_mbps

    @property
    def down_rate(self) -> float:
        if self.schedule is not None:
            return _schedule_mean(self.schedule)
        return self.down_trace.mean_mbps if self.down_trace is not None else self.down_mbps


def _schedule_mean(schedule: RateSchedule) -> float:
    steps = schedule.steps
    return sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(steps)) / schedule.duration_s


@dataclass
class EmulatedPath:
    """The client's way to the server over one emulated link, and the bytes that crossed it (up, down)."""

    target: str
    counters: Callable[[], tuple[int, int]]
    origin: float | None = None  #: time.monotonic() when the link's traces or schedule started


class Userspace:
    """The userspace shaper on loopback in front of the server."""

    name = "userspace"
    host = "127.0.0.1"
    description = (
        "userspace TCP shaper (benchmarks/shaper.py) on loopback: token bucket per direction (depth 0, 1448-byte "
        "packets), RTT/2 delay each way, loss as TCP retransmission after max(200 ms, 2 RTT)"
    )

    def wrap(self, cmd: list[str]) -> list[str]:
        return cmd

    @contextmanager
    def link(self, server_port: int, spec: LinkSpec) -> Iterator[EmulatedPath]:
        shaper = LinkShaper(
            (self.host, server_port),
            up_mbps=None if spec.up_trace else spec.up_mbps,
            down_mbps=None if spec.down_trace else spec.down_mbps,
            delay_ms=spec.rtt_ms / 2,
            jitter_ms=spec.jitter_ms,
            loss=spec.loss,
            up_trace=spec.up_trace,
            down_trace=spec.down_trace,
            schedule=spec.schedule,
        )
        with shaper:
            counters = lambda: (shaper.up_bytes, shaper.down_bytes)  # noqa: E731
            yield EmulatedPath(f"{self.host}:{shaper.port}", counters, shaper.origin)


class Netem:
    """netem on a veth pair between the benchmark's namespace and the server's."""

    name = "netem"
    description = (
        "netem (tc) on both ends of a veth pair, edge server in its own network namespace: rate, RTT/2 delay each "
        "way, real packet loss; wire bytes include Ethernet/IP/TCP headers"
    )

    def __init__(self, net: NetemLink) -> None:
        self.net = net
        self.host = net.server_host

    def wrap(self, cmd: list[str]) -> list[str]:
        return self.net.wrap(cmd)

    @contextmanager
    def link(self, server_port: int, spec: LinkSpec) -> Iterator[EmulatedPath]:
        self.net.configure(spec.up_mbps, spec.down_mbps, spec.rtt_ms / 2, spec.jitter_ms, spec.loss)
        yield EmulatedPath(f"{self.host}:{server_port}", self.net.counters)


def open_emulator(choice: str, stack: ExitStack, traces: bool) -> tuple[Userspace | Netem, str | None]:
    """The emulator for ``--emulator`` (auto: netem when it works here) and why netem was not used, if it was not."""
    if choice == "userspace":
        return Userspace(), None
    reason = "trace-driven and scheduled links need the userspace shaper" if traces else unavailable()
    if reason is None:
        try:
            return Netem(stack.enter_context(NetemLink())), None
        except NetemError as e:
            reason = str(e)
    if choice == "netem":
        raise SetupError(reason)
    _log(f"netem not used ({reason}); using the userspace shaper")
    return Userspace(), reason


# ---- one run ----


@dataclass(frozen=True)
class RunSettings:
    warmup: int
    emulator: str
    trace_window_s: float | None
    frames: int


def physical_floor(result: FrameResult, spec: LinkSpec | None, origin: float | None = None) -> float | None:
    """What the frame has to cost given its measured stages: device time, transfers over the link, RTT, server.

    On a trace link with the frame's send time and the trace's ``origin`` known, each transfer ends at the trace's
    delivery opportunity that carries its last byte (:func:`trace_delivery`); otherwise bytes / rate (a trace's
    mean rate, a schedule's rate at the send time)."""
    if result.error is not None:
        return None
    t = result.timing_ms
    device = sum(t.get(stage, 0.0) for stage in ("head", "filter", "encode"))
    if spec is None or result.skipped or result.mode == "local":  # auto may run a frame locally on a link
        return device + t.get("tail", 0.0)
    server = result.server_ms or 0.0
    sent_at = getattr(result, "sent_at", None)
    if spec.up_trace is not None and sent_at is not None and origin is not None:
        up_done = trace_delivery(spec.up_trace, origin, sent_at, result.sent_bytes)
        reply_at = up_done + (spec.rtt_ms / 2 + server) / 1000
        down_done = trace_delivery(spec.down_trace, origin, reply_at, result.received_bytes)
        return device + (down_done - sent_at) * 1000 + spec.rtt_ms / 2
    up, down = spec.up_rate, spec.down_rate
    if spec.schedule is not None and sent_at is not None and origin is not None:
        up = down = spec.schedule.rate_at(sent_at - origin)
    transfer = result.sent_bytes * 8e-3 / up + result.received_bytes * 8e-3 / down
    return device + transfer + spec.rtt_ms + server


def frame_row(
    result: FrameResult,
    mode: str,
    spec: LinkSpec | None,
    window: int,
    wire: tuple[int, int] | None,
    emulator: str,
    device_cpu: float | None = None,
    origin: float | None = None,
) -> dict:
    """One CSV row: the frame's bytes, stages, end-to-end time, floor and overhead."""
    t = result.timing_ms
    floor = physical_floor(result, spec, origin)
    total = t.get("total")
    sent_at = getattr(result, "sent_at", None)
    finished_at = getattr(result, "finished_at", None)
    at = round(sent_at - origin, 3) if sent_at is not None and origin is not None else None
    start = None  # when the frame started, from the link's start (local frames too)
    if finished_at is not None and origin is not None and total is not None:
        start = round(finished_at - total / 1000 - origin, 3)
    rate = spec.up_rate if spec is not None else None
    if spec is not None and spec.schedule is not None and (at if at is not None else start) is not None:
        rate = spec.schedule.rate_at(at if at is not None else start)
    return {
        "device_cpu": device_cpu,
        "mode": mode,
        "chosen": result.mode,
        "emulator": emulator if spec is not None else None,
        "link": spec.label if spec is not None else "none",
        "rate_mbps": rate,
        "down_mbps": spec.down_rate if spec is not None else None,
        "rtt_ms": spec.rtt_ms if spec is not None else None,
        "jitter_ms": spec.jitter_ms if spec is not None else None,
        "loss": spec.loss if spec is not None else None,
        "window": window,
        "frame": result.index,
        "source": result.source,
        "skipped": result.skipped,
        "error": result.error,
        "start_s": start,
        "sent_at_s": at,
        "sent_bytes": result.sent_bytes,
        "received_bytes": result.received_bytes,
        "wire_up_bytes": wire[0] if wire else None,
        "wire_down_bytes": wire[1] if wire else None,
        **{f"{stage}_ms": t.get(stage) for stage in REPORT_STAGES},
        "server_ms": result.server_ms,
        "total_ms": total,
        "floor_ms": None if floor is None else round(floor, 3),
        "overhead_ms": None if floor is None else round(total - floor, 3),
    }


def _result(data: dict) -> FrameResult:
    sent_at, finished_at = data.pop("sent_at", None), data.pop("finished_at", None)
    result = FrameResult(**data)
    result.sent_at = sent_at
    result.finished_at = finished_at  # time.monotonic() when the device had the result
    return result


# ---- command line ----


def parse_links(opts: BenchOptions) -> list[LinkSpec]:
    """The links to run: one per fixed uplink rate, plus the trace link; or only the rate schedule's link."""
    schedule = opts.rate_schedule
    if schedule is not None:
        return [LinkSpec(None, None, opts.rtt_ms, opts.jitter_ms, opts.loss, schedule=schedule)]
    links = []
    for rate in opts.up_rates:
        down = opts.down_mbps if opts.down_mbps is not None else rate
        links.append(LinkSpec(rate, down, opts.rtt_ms, opts.jitter_ms, opts.loss))
    if opts.trace:
        try:
            up = Trace.load(opts.trace[0])
            down = Trace.load(opts.trace[-1])
        except ValueError as e:
            raise SetupError(str(e)) from None
        links.append(LinkSpec(None, None, opts.rtt_ms, opts.jitter_ms, opts.loss, up, down))
    return links


def parse_modes(text: str | None, has_filter: bool, ckpt: Path) -> list[str]:
    """The ``--modes`` in canonical order; by default all, without split+filter when there is no filter to run (the
    checkpoint has no neural filter and ``--background-filter`` is off)."""
    if text is None:
        if not has_filter:
            _log(f"{ckpt} has no neural filter and --background-filter is off: split+filter left out")
        return [m for m in BENCH_MODES if has_filter or m != "split+filter"]
    modes = [m.strip() for m in text.split(",") if m.strip()]  # known and distinct: BenchOptions checked them
    if "split+filter" in modes and not has_filter:
        raise SetupError(
            f"split+filter needs a checkpoint with a neural filter or --background-filter T; {ckpt} has no filter"
        )
    return [m for m in BENCH_MODES if m in modes]


def machine_info(server_threads: int, device: str) -> dict:
    """Where the benchmark ran: CPUs, platform, versions, threads, the server's device, the load at the start."""
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "client_threads": torch.get_num_threads(),
        "server_threads": server_threads,
        "server_device": device,
        "load_average": list(os.getloadavg()),
    }


def _progress(step: int, total: int, run: str, window: int, results: list[FrameResult], wall: float) -> None:
    if not results:
        _log(f"[{step}/{total}] {run}, window {window}: no frames")
        return
    ok = [r for r in results if r.error is None]
    message = f"[{step}/{total}] {run}, window {window}: {len(results)} frames, {len(results) / wall:.2f} fps"
    if window == 1 and ok:
        p50 = np.percentile([r.timing_ms["total"] for r in ok], 50)
        message += f", p50 {p50:.1f} ms, {np.mean([r.sent_bytes for r in ok]):,.0f} B/frame"
    if len(ok) < len(results):
        message += f", {len(results) - len(ok)} failed ({next(r.error for r in results if r.error)})"
    _log(message)


def server_device(target: str, timeout_s: float) -> str:
    """The device the edge server runs on, from its ``GetModelInfo`` (straight, not through the shaper)."""
    link, info = handshake.connect(LinkConfig(target, timeout_s=timeout_s))
    link.close()
    return info.device


def run_plan(
    plan: list[tuple[str, LinkSpec | None, int]],
    device: Device,
    device_cpu: float | None,
    emulator: Userspace | Netem | None,
    server_port: int,
    settings: RunSettings,
    step: int,
    total: int,
) -> tuple[list[dict], list[dict]]:
    """Every (mode, link, window) run on one device: the per-frame rows and one record per run."""
    rows: list[dict] = []
    runs: list[dict] = []
    for mode, spec, window in plan:
        step += 1
        with ExitStack() as stack:
            wire = stack.enter_context(emulator.link(server_port, spec)) if spec is not None else None
            counted: list[tuple[int, int] | None] = []
            on_frame = on_warm = None
            if wire is not None and window == 1:
                last = [wire.counters()]

                def on_warm(wire=wire, last=last) -> None:  # bytes after the handshake and the warm-up frames
                    last[0] = wire.counters()

                def on_frame(_result: dict, wire=wire, last=last, counted=counted) -> None:
                    now = wire.counters()
                    counted.append((now[0] - last[0][0], now[1] - last[0][1]))
                    last[0] = now

            pace = duration = None
            if spec is not None and spec.up_trace is not None and window == 1:
                pace = (settings.trace_window_s or spec.up_trace.period_ms / 1000) / settings.frames
            if spec is not None and spec.schedule is not None:
                duration = spec.schedule.duration_s
            target = wire.target if wire is not None else None
            data, wall, switches = device.run(mode, window, target, settings.warmup, on_frame, on_warm, pace, duration)
            origin = wire.origin if wire is not None else None
        results = [_result(dict(d)) for d in data]
        link = spec.label if spec is not None else "none"
        where = f"{mode} @ {link}" + (f", device {device_cpu:g} core" if device_cpu is not None else "")
        _progress(step, total, where, window, results, wall)
        wires = counted if counted else [None] * len(results)
        for result, wire_counted in zip(results, wires, strict=True):
            rows.append(frame_row(result, mode, spec, window, wire_counted, settings.emulator, device_cpu, origin))
        runs.append(
            {
                "device_cpu": device_cpu,
                "mode": mode,
                "link": link,
                "rate_mbps": spec.up_rate if spec else None,
                "down_mbps": spec.down_rate if spec else None,
                "window": window,
                "frames": len(results),
                "wall_s": round(wall, 3),
                "fps": round(len(results) / wall, 3) if wall > 0 else None,
                "switches": switches,
            }
        )
    return rows, runs


def offload_sizes(frames: list[Frame], min_size: int, max_size: int, quality: int) -> list[dict]:
    """Mean bytes per frame of each offload encoding of these frames: JPEG at several qualities and WebP, at the
    model's input size and (JPEG at ``quality``) at the source size; the ratio is against JPEG q95 at model size."""
    images = [f.image for f in frames if f.image is not None]
    size = model_input_size(*images[0].shape[:2], min_size, max_size)
    settings = [("jpeg", q, "model") for q in sorted({95, 90, 75, 50, quality}, reverse=True)]
    settings += [("webp", q, "model") for q in (95, 75, 50)] + [("jpeg", quality, "source")]
    out = []
    for fmt, q, resize in settings:
        sizes = [len(encode_image(im, fmt, q, size if resize == "model" else None)) for im in images]
        out.append({"format": fmt, "quality": q, "resize": resize, "bytes": float(np.mean(sizes))})
    reference = next(o["bytes"] for o in out if (o["format"], o["quality"], o["resize"]) == ("jpeg", 95, "model"))
    for o in out:
        o["ratio_to_jpeg95_model"] = round(o["bytes"] / reference, 3)
    return out


def onnx_head(path: str, checkpoint: Checkpoint) -> OnnxHead:
    """The ``--head`` file, which must be the head of ``--ckpt`` (the server runs that checkpoint's tail)."""
    head = OnnxHead.load(path)
    if head.fingerprint != checkpoint.fingerprint:
        raise SetupError(f"--head {path} was exported from another checkpoint than --ckpt (fingerprints differ)")
    return head


def _quota_speeds(opts: BenchOptions) -> tuple[list[float | None], str | None]:
    if not opts.device_cpu:
        return [None], None
    return parse_cores(opts.device_cpu), detect(opts.device_quota)


def bench(opts: BenchOptions, command: str) -> dict:
    """Every run; the report that :func:`write_outputs` writes."""
    started = time.monotonic()
    load_start = list(os.getloadavg())
    links = parse_links(opts)
    speeds, mechanism = _quota_speeds(opts)
    ckpt = Path(opts.ckpt) if opts.ckpt else demo_checkpoint()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    checkpoint = load_checkpoint(ckpt)
    head = onnx_head(opts.head[0], checkpoint) if opts.runtime == "onnx" else None
    has_filter = checkpoint.config.with_filter or opts.background_filter > 0
    modes = parse_modes(opts.modes, has_filter, ckpt)
    remote = [m for m in modes if m != "local"]
    if remote and not links:
        raise SetupError("no links to run: give --rates or --trace")
    if opts.schedule and "local" in modes:
        modes, remote = [m for m in modes if m != "local"], remote
        _log("--schedule: local mode does not use the link; left out")
    spec = DeviceSpec(
        ckpt=str(ckpt),
        threads=opts.threads,
        frames=opts.frames,
        images=opts.images,
        synthetic=opts.synthetic,
        seed=opts.seed,
        empty_ratio=None if opts.images else opts.empty_ratio,
        run_frames=(opts.empty_runs, 2 * opts.empty_runs),
        jpeg_quality=opts.jpeg_quality,
        offload_format=opts.offload_format,
        offload_resize=opts.offload_resize,
        timeout_s=opts.timeout_s,
        background_filter=opts.background_filter,
        runtime=opts.runtime,
        head=opts.head[0] if head is not None else None,
    )
    frames = load_frames(spec)
    windows = (1, opts.window) if opts.stream else (1,)
    plan = [("local", None, w) for w in windows if "local" in modes]
    for link in links:
        fixed = link.up_trace is None and link.schedule is None
        plan += [(mode, link, w) for mode in remote for w in (windows if fixed else (1,))]
    emulator, netem_reason, device, port = None, None, "-", 0
    rows: list[dict] = []
    runs: list[dict] = []
    quotas: list[dict] = []
    with ExitStack() as stack:
        if remote:
            scheduled = any(s.up_trace or s.schedule for s in links)
            emulator, netem_reason = open_emulator(opts.emulator, stack, scheduled)
            server_args = ["--ckpt", str(ckpt), "--host", emulator.host, "--device", opts.server_device]
            server_args += ["--torch-threads", str(opts.server_threads), "--workers", "8", "--log-level", "WARNING"]
            server_args += ["--max-batch", str(opts.server_max_batch)]
            server = ServerProcess(server_args, SERVER_START_S, opts.server_threads, emulator.wrap)
            port = stack.enter_context(server).port
            device = server_device(f"{emulator.host}:{port}", opts.timeout_s)
            _log(f"edge-server on {emulator.host}:{port} ({device}); emulator: {emulator.name}")
        settings = RunSettings(opts.warmup, emulator.name if emulator else "none", opts.trace_window_s, len(frames))
        total = len(plan) * len(speeds)
        for i, cores in enumerate(speeds):
            with ExitStack() as on_device:
                worker = on_device.enter_context(Device(spec, _log))
                _log(f"device process {worker.pid}: {worker.info['head']} head")
                if cores is not None:
                    quota = on_device.enter_context(DeviceQuota(mechanism, cores))
                    quota.add(worker.pid)
                    quotas.append({"device_cpu": cores, "mechanism": mechanism, "setting": quota.description})
                    _log(f"device process {worker.pid} held to {cores:g} core(s): {quota.description}")
                more_rows, more_runs = run_plan(plan, worker, cores, emulator, port, settings, i * len(plan), total)
            rows += more_rows
            runs += more_runs
    machine = machine_info(opts.server_threads, device)
    machine["load_average"] = load_start
    machine["load_average_end"] = list(os.getloadavg())
    machine["wall_s"] = round(time.monotonic() - started, 1)
    machine["client_threads"] = opts.threads
    evals = [Path(p) for p in opts.eval_json or sorted(glob.glob(EVAL_GLOB))]
    accuracy, notes = accuracy_points(evals, checkpoint.config.arch)
    summary = summarize(rows, runs, opts.window)
    first = frames[0].image
    config = checkpoint.config
    skipped_empty = None
    if not opts.images:
        from splitdet.synthetic.video import SyntheticVideo

        video = SyntheticVideo(opts.synthetic or opts.frames, opts.seed, empty_ratio=opts.empty_ratio,
                               run_frames=(opts.empty_runs, 2 * opts.empty_runs))  # fmt: skip
        skipped_empty = [i for i in video.empty_frames if i < len(frames)]
    return {
        "command": command,
        "checkpoint": shown_path(ckpt),
        "machine": machine,
        "emulator": {
            "name": settings.emulator,
            "description": emulator.description if emulator else "no link (local only)",
            "netem_unavailable": netem_reason,
        },
        "device_quota": {"mechanism": mechanism, "quotas": quotas},
        "settings": {
            "modes": modes,
            "links": [s.label for s in links],
            "device_cpu": [c for c in speeds if c is not None],
            "rtt_ms": opts.rtt_ms,
            "jitter_ms": opts.jitter_ms,
            "loss": opts.loss,
            "frames": len(frames),
            "empty_frames": skipped_empty,
            "background_filter": opts.background_filter,
            "neural_filter": checkpoint.config.with_filter,
            "runtime": "torch" if head is None else f"onnx ({shown_path(Path(opts.head[0]))}, {head.weights} weights)",
            "warmup": opts.warmup,
            "window": opts.window,
            "stream": opts.stream,
            "jpeg_quality": opts.jpeg_quality,
            "offload": f"{opts.offload_format} q{opts.jpeg_quality}, resized to the "
            + ("model's input size" if opts.offload_resize == "model" else "source size (not resized)"),
            "source": "images" if opts.images else f"the synthetic video (seed {opts.seed})",
            "frame_size": "-" if first is None else f"{first.shape[0]}x{first.shape[1]}",
            "input_size": None if first is None else describe_input(*first.shape[:2], config.min_size, config.max_size),
            "link_note": f"RTT {opts.rtt_ms:g} ms, loss {opts.loss:g}, {settings.emulator} emulator",
            "trace_window_s": opts.trace_window_s,
            "schedule": opts.schedule,
        },
        "summary": summary,
        "map": crossover(summary),
        "bytes": bytes_by_mode(summary),
        "offload_sizes": offload_sizes(frames, config.min_size, config.max_size, opts.jpeg_quality),
        "runs": runs,
        "accuracy": accuracy,
        "accuracy_notes": notes,
        "rows": rows,
    }


def run(opts: BenchOptions, argv: list[str]) -> int:
    """Run the benchmark ``opts`` describes and write its outputs; the exit status. With several
    ``--head`` files, one benchmark per head into ``--out``/<head file name>; the worst exit status."""
    if opts.head is not None and len(opts.head) > 1:
        codes = []
        for head in opts.head:
            one = replace(opts, head=(head,), out=str(Path(opts.out) / Path(head).stem))
            codes.append(run(one, argv))
            if codes[-1] == 130:  # interrupted
                break
        return max(codes)
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        report = bench(opts, shlex.join(["split-bench", *shown_args(argv)]))
    except (
        SetupError, SourceError, CheckpointError, FileNotFoundError, NetemError, ServerStartError, DeviceError
    ) as e:  # fmt: skip
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        torch.set_num_threads(threads)
    try:
        write_outputs(report, Path(opts.out))
    except OSError as e:
        _log(f"error: cannot write {e.filename or opts.out}: {e.strerror}")
        return 2
    print(markdown(report), end="")
    _log(f"wrote {opts.out}/bench.md, bench.csv, bench.json and {len(report['plots'])} plots")
    ok = [r for r in report["rows"] if r["error"] is None]
    return 0 if ok else 1
