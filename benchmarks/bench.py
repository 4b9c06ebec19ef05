"""``split-bench``: latency, bytes per frame and throughput of local, offload (JPEG), split and split+filter over
emulated links, next to each frame's physical floor; and accuracy against bytes from ``split-eval`` results.

    split-bench --ckpt student.pt --rates 0.5,1,2,5,10,50 --rtt-ms 20 --frames 30 --out benchmarks/results/bench

An ``edge-server`` process serves the checkpoint behind the emulated link (the userspace shaper of
:mod:`benchmarks.shaper`, or netem between network namespaces, :mod:`benchmarks.netem`). For every mode and link
the real client pipeline (:mod:`mobile_client.pipeline` over :mod:`mobile_client.link`) makes two runs over the
same frames: a latency run, one frame at a time (window 1, unary calls), and a streaming run with ``--window``
frames in flight, for frames per second with pipelining off and on. Each run starts with ``--warmup`` frames that
are not recorded. ``local`` uses no link and runs once.

The physical floor of a frame is what it has to cost on this link given its measured stages: head + filter +
encode on the device, request bytes / uplink rate, the RTT, the server's time (queue, decode, tail, encode) and
response bytes / downlink rate (``local``: head + filter + tail). The runtime overhead is end-to-end minus floor:
gRPC and HTTP/2 framing, TCP, threads, Python. Packet loss is not part of the floor; a trace-driven link counts at
its mean rate.

Writes to ``--out``: ``bench.csv`` (one row per frame), ``bench.json`` (the rows plus summaries, runs, accuracy
points and the setup), ``bench.md`` (also printed on stdout) and the plots ``latency_vs_rate.png``,
``bytes_per_frame.png``, ``stage_breakdown.png``, ``throughput_vs_rate.png`` and ``ap_vs_bytes.png``. Progress goes
to stderr. Exit status: 0, 1 when every frame failed, 2 for usage and setup errors (one line).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_cli import BENCH_MODES, EVAL_GLOB
from benchmarks.bench_report import (
    REPORT_STAGES,
    accuracy_points,
    bytes_by_mode,
    describe_input,
    markdown,
    summarize,
    write_outputs,
)
from benchmarks.netem import NetemError, NetemLink, unavailable
from benchmarks.paths import shown_args, shown_path
from benchmarks.server_process import ServerProcess, ServerStartError
from benchmarks.shaper import LinkShaper, Trace
from common.checkpoint import CheckpointError
from common.demo import demo_checkpoint
from mobile_client import handshake, sources
from mobile_client.link import LinkConfig
from mobile_client.pipeline import FrameResult, Pipeline
from mobile_client.settings import Options, SetupError
from mobile_client.sources import Frame, SourceError
from mobile_client.torch_head import ClientModel

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

    @property
    def label(self) -> str:
        if self.up_trace is not None:
            return f"trace {self.up_trace.name}/{self.down_trace.name}"
        down = "" if self.down_mbps == self.up_mbps else f"/{self.down_mbps:g}"
        return f"{self.up_mbps:g}{down} Mbps"

    @property
    def up_rate(self) -> float:
        return self.up_trace.mean_mbps if self.up_trace is not None else self.up_mbps

    @property
    def down_rate(self) -> float:
        return self.down_trace.mean_mbps if self.down_trace is not None else self.down_mbps


@dataclass
class EmulatedPath:
    """The client's way to the server over one emulated link, and the bytes that crossed it (up, down)."""

    target: str
    counters: Callable[[], tuple[int, int]]


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
        )
        with shaper:
            yield EmulatedPath(f"{self.host}:{shaper.port}", lambda: (shaper.up_bytes, shaper.down_bytes))


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
    reason = "trace-driven links need the userspace shaper" if traces else unavailable()
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
    jpeg_quality: int
    timeout_s: float
    warmup: int
    emulator: str


def build_pipeline(mode: str, window: int, model: ClientModel, target: str | None, settings: RunSettings) -> Pipeline:
    """The client's pipeline for one mode, after the ``GetModelInfo`` handshake over the emulated link."""
    options = Options(
        mode=mode.split("+")[0],
        use_filter=mode == "split+filter",
        codec=model.checkpoint.codec,
        jpeg_quality=settings.jpeg_quality,
        window=window,
    )
    link = None
    if target is not None:
        fingerprint = None if mode == "offload" else model.fingerprint
        link, _ = handshake.connect(LinkConfig(target, timeout_s=settings.timeout_s), fingerprint=fingerprint)
    class_names = list(model.checkpoint.class_names)
    return Pipeline(options, class_names, model=None if mode == "offload" else model, link=link)


def physical_floor(result: FrameResult, spec: LinkSpec | None) -> float | None:
    """What the frame has to cost given its measured stages: device time, transfers at the link rate, RTT, server."""
    if result.error is not None:
        return None
    t = result.timing_ms
    device = sum(t.get(stage, 0.0) for stage in ("head", "filter", "encode"))
    if spec is None or result.skipped:
        return device + t.get("tail", 0.0)
    transfer = result.sent_bytes * 8e-3 / spec.up_rate + result.received_bytes * 8e-3 / spec.down_rate
    return device + transfer + spec.rtt_ms + (result.server_ms or 0.0)


def frame_row(
    result: FrameResult, mode: str, spec: LinkSpec | None, window: int, wire: tuple[int, int] | None, emulator: str
) -> dict:
    """One CSV row: the frame's bytes, stages, end-to-end time, floor and overhead."""
    t = result.timing_ms
    floor = physical_floor(result, spec)
    total = t.get("total")
    return {
        "mode": mode,
        "emulator": emulator if spec is not None else None,
        "link": spec.label if spec is not None else "none",
        "rate_mbps": spec.up_rate if spec is not None else None,
        "down_mbps": spec.down_rate if spec is not None else None,
        "rtt_ms": spec.rtt_ms if spec is not None else None,
        "jitter_ms": spec.jitter_ms if spec is not None else None,
        "loss": spec.loss if spec is not None else None,
        "window": window,
        "frame": result.index,
        "source": result.source,
        "skipped": result.skipped,
        "error": result.error,
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


def run_frames(
    pipeline: Pipeline, frames: list[Frame], warmup: int, counters: Callable[[], tuple[int, int]] | None
) -> tuple[list[FrameResult], list[tuple[int, int] | None], float]:
    """Warm up, then run every frame: results, bytes that crossed the link per frame (when given), wall seconds."""
    list(pipeline.run(frames[i % len(frames)] for i in range(warmup)))
    results: list[FrameResult] = []
    wire: list[tuple[int, int] | None] = []
    before = counters() if counters else None
    start = time.monotonic()
    for result in pipeline.run(iter(frames)):
        results.append(result)
        if counters is None:
            wire.append(None)
            continue
        now = counters()
        wire.append((now[0] - before[0], now[1] - before[1]))
        before = now
    return results, wire, time.monotonic() - start


# ---- command line ----


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SetupError(f"--rates must be a comma list of numbers, got {text!r}") from None


def parse_links(args: argparse.Namespace) -> list[LinkSpec]:
    """The links to run: one per ``--rates`` entry, plus the trace link."""
    links = []
    for rate in _floats(args.rates):
        if rate <= 0:
            raise SetupError("--rates must be positive")
        down = args.down_mbps if args.down_mbps is not None else rate
        links.append(LinkSpec(rate, down, args.rtt_ms, args.jitter_ms, args.loss))
    if args.trace:
        if len(args.trace) > 2:
            raise SetupError("--trace takes an uplink trace and optionally a downlink trace")
        try:
            up = Trace.load(args.trace[0])
            down = Trace.load(args.trace[-1])
        except ValueError as e:
            raise SetupError(str(e)) from None
        links.append(LinkSpec(None, None, args.rtt_ms, args.jitter_ms, args.loss, up, down))
    return links


def parse_modes(text: str | None, has_filter: bool, ckpt: Path) -> list[str]:
    """The ``--modes`` in canonical order; by default all, without split+filter when the checkpoint has no filter."""
    if text is None:
        if not has_filter:
            _log(f"{ckpt} has no neural filter: split+filter left out")
        return [m for m in BENCH_MODES if has_filter or m != "split+filter"]
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in BENCH_MODES]
    if unknown or not modes or len(set(modes)) != len(modes):
        raise SetupError(f"--modes must list distinct modes out of {', '.join(BENCH_MODES)}")
    if "split+filter" in modes and not has_filter:
        raise SetupError(f"split+filter needs a checkpoint with a neural filter; {ckpt} has none")
    return [m for m in BENCH_MODES if m in modes]


def load_frames(args: argparse.Namespace) -> tuple[list[Frame], str]:
    """The frames every run uses (held in memory, so every mode sees the same), and where they came from."""
    if args.images:
        source, label = sources.images(args.images), f"images {args.images}"
    else:
        count = args.synthetic or args.frames
        source, label = sources.synthetic(count, args.seed), f"the synthetic video (seed {args.seed})"
    frames = list(itertools.islice(source.frames, args.frames))
    if not frames:
        raise SourceError("no frames")
    return frames, label


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
    model: ClientModel,
    frames: list[Frame],
    emulator: Userspace | Netem | None,
    server_port: int,
    settings: RunSettings,
) -> tuple[list[dict], list[dict]]:
    """Every (mode, link, window) run: the per-frame rows and one record per run."""
    rows: list[dict] = []
    runs: list[dict] = []
    for step, (mode, spec, window) in enumerate(plan, 1):
        with ExitStack() as stack:
            wire = stack.enter_context(emulator.link(server_port, spec)) if spec is not None else None
            pipeline = build_pipeline(mode, window, model, wire.target if wire else None, settings)
            stack.callback(pipeline.close)
            counters = wire.counters if wire is not None and window == 1 else None
            results, wire_bytes, wall = run_frames(pipeline, frames, settings.warmup, counters)
        link = spec.label if spec is not None else "none"
        _progress(step, len(plan), f"{mode} @ {link}", window, results, wall)
        for result, wire_counted in zip(results, wire_bytes, strict=True):
            rows.append(frame_row(result, mode, spec, window, wire_counted, settings.emulator))
        runs.append(
            {
                "mode": mode,
                "link": link,
                "rate_mbps": spec.up_rate if spec else None,
                "down_mbps": spec.down_rate if spec else None,
                "window": window,
                "frames": len(results),
                "wall_s": round(wall, 3),
                "fps": round(len(results) / wall, 3),
            }
        )
    return rows, runs


def bench(args: argparse.Namespace, command: str) -> dict:
    """Every run; the report that :func:`write_outputs` writes."""
    links = parse_links(args)
    ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    model = ClientModel.load(ckpt)
    modes = parse_modes(args.modes, model.has_filter, ckpt)
    remote = [m for m in modes if m != "local"]
    if remote and not links:
        raise SetupError("no links to run: give --rates or --trace")
    frames, source_label = load_frames(args)
    plan = [("local", None, w) for w in (1, args.window) if "local" in modes]
    plan += [(mode, spec, w) for spec in links for mode in remote for w in (1, args.window)]
    emulator, netem_reason, device, port = None, None, "-", 0
    with ExitStack() as stack:
        if remote:
            emulator, netem_reason = open_emulator(args.emulator, stack, any(s.up_trace for s in links))
            server_args = ["--ckpt", str(ckpt), "--host", emulator.host, "--device", args.server_device]
            server_args += ["--torch-threads", str(args.server_threads), "--workers", "8", "--log-level", "WARNING"]
            server = ServerProcess(server_args, SERVER_START_S, args.server_threads, emulator.wrap)
            port = stack.enter_context(server).port
            device = server_device(f"{emulator.host}:{port}", args.timeout_s)
            _log(f"edge-server on {emulator.host}:{port} ({device}); emulator: {emulator.name}")
        settings = RunSettings(args.jpeg_quality, args.timeout_s, args.warmup, emulator.name if emulator else "none")
        rows, runs = run_plan(plan, model, frames, emulator, port, settings)
    evals = [Path(p) for p in args.eval_json or sorted(glob.glob(EVAL_GLOB))]
    accuracy, notes = accuracy_points(evals, model.checkpoint.config.arch)
    summary = summarize(rows, runs, args.window)
    first = frames[0].image
    config = model.checkpoint.config
    return {
        "command": command,
        "checkpoint": shown_path(ckpt),
        "machine": machine_info(args.server_threads, device),
        "emulator": {
            "name": settings.emulator,
            "description": emulator.description if emulator else "no link (local only)",
            "netem_unavailable": netem_reason,
        },
        "settings": {
            "modes": modes,
            "links": [s.label for s in links],
            "rtt_ms": args.rtt_ms,
            "jitter_ms": args.jitter_ms,
            "loss": args.loss,
            "frames": len(frames),
            "warmup": args.warmup,
            "window": args.window,
            "jpeg_quality": args.jpeg_quality,
            "source": source_label,
            "frame_size": "-" if first is None else f"{first.shape[0]}x{first.shape[1]}",
            "input_size": None if first is None else describe_input(*first.shape[:2], config.min_size, config.max_size),
            "link_note": f"RTT {args.rtt_ms:g} ms, loss {args.loss:g}, {settings.emulator} emulator",
        },
        "summary": summary,
        "bytes": bytes_by_mode(summary),
        "runs": runs,
        "accuracy": accuracy,
        "accuracy_notes": notes,
        "rows": rows,
    }


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the benchmark the checked ``args`` describe and write its outputs; the exit status."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        report = bench(args, shlex.join(["split-bench", *shown_args(argv)]))
    except (SetupError, SourceError, CheckpointError, FileNotFoundError, NetemError, ServerStartError) as e:
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        torch.set_num_threads(threads)
    try:
        write_outputs(report, Path(args.out))
    except OSError as e:
        _log(f"error: cannot write {e.filename or args.out}: {e.strerror}")
        return 2
    print(markdown(report), end="")
    _log(f"wrote {args.out}/bench.md, bench.csv, bench.json and {len(report['plots'])} plots")
    ok = [r for r in report["rows"] if r["error"] is None]
    return 0 if ok else 1
