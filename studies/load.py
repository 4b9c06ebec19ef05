"""Load benchmark: N concurrent streaming clients against one edge server on loopback for T minutes.

    python -m studies.load --clients 8 --minutes 5 [--ckpt PATH] [--out studies/results/load]
    python -m studies.load --scenario fairness --clients 8 --minutes 1 --out studies/results/fairness

The fairness scenario: ``clients - 1`` paced clients (one frame every 1/``--paced-fps`` s each, like cameras) alone,
then with one greedy client that streams as fast as it can (``--greedy-streams`` streams of ``--window`` frames in
flight over one connection), against the default (fair: round-robin over connections) server and against
``--scheduling fifo``; ``--minutes`` per phase. It reports the paced clients' p50/p95 per phase and what the greedy
one got (``OUT.md``).

The idle scenario holds 0, 64, 256, 1024 (``--idle-streams``) open idle streams (``studies.fleet``, grpc.aio)
against a server with the default limits and reports its RSS and health-check latency at each. The fleet scenario
measures the server's capacity (``--capacity-devices`` devices sending back to back), then runs ``--streams``
paced devices (a stream each, from ``--processes`` client processes, honouring the server's retry hint) offering 1x
and 2x that capacity, then 1x against two replicas (``ipv4:A,B``, round robin) of which one is killed halfway; each
phase ``--minutes`` long. It reports answered frames/s, goodput, p50/p99 latency, errors by code, retried
refusals, duplicates and health-check latency (``OUT.md``).

    python -m studies.load --scenario idle --out studies/results/idle_streams
    python -m studies.load --scenario fleet --streams 256 --minutes 0.5 --out studies/results/fleet

The server is an ``edge-server`` child process (the bundled demo checkpoint unless ``--ckpt``), so its RSS can be
sampled from ``/proc``. Each client is a thread running the mobile client's own link (one
:class:`splitdet.mobile_client.link.StreamLink` bidirectional stream, ``--window`` frames in flight, its retries and
deadlines) on bottleneck frames its head made once before the run, so client CPU does not dominate. Latency is
from handing a frame to the link to its answer. Writes ``OUT.md`` (throughput, p50/p95/p99, errors by status code,
RSS start/end/max and its slope), ``OUT.csv`` (one row per RSS sample) and ``OUT.png`` (RSS and throughput).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch
from matplotlib.figure import Figure

from splitdet.benchmarks.paths import shown_args
from splitdet.benchmarks.server_process import ServerProcess
from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.demo import demo_checkpoint
from splitdet.common.models import build_student
from splitdet.common.split import image_tensor, split
from splitdet.common.wire import encode_frame
from splitdet.mobile_client.link import Link, LinkConfig, LinkError
from splitdet.proto import splitdet_pb2 as pb
from splitdet.proto import splitdet_pb2_grpc
from splitdet.synthetic import SceneConfig, render_scene
from studies.fleet import DeviceFleet, Devices, IdleStreams, health_latencies_ms

FRAMES = 8  # distinct precomputed frames each client cycles through


@dataclass
class Client:
    """One client's record: latency of each answered frame, and its failures by status code."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


SMALL_MODEL = "Faster R-CNN, ResNet-18, 3-channel bottleneck, images resized to 160-224 px, 32 FPN channels"


def small_model(path: Path) -> Path:
    """A small untrained student checkpoint at ``path`` (:data:`SMALL_MODEL`): a fast tail, for fleet runs whose
    subject is the server, not the model."""
    torch.manual_seed(0)
    model = build_student(
        "faster_rcnn", "resnet18", 3, num_classes=4, min_size=160, max_size=224, fpn_channels=32,
        box_representation_size=64,
    )  # fmt: skip
    save_checkpoint(model.eval(), path, ["__background__", "disc", "ring", "star"])
    return path


def make_frames(ckpt: Path, size: tuple[int, int]) -> list[pb.BottleneckFrame]:
    """Synthetic scenes through the checkpoint's head and codec, as the mobile client sends them."""
    checkpoint = load_checkpoint(ckpt)
    head, _ = split(checkpoint.build_model())
    fingerprint = checkpoint.side_fingerprint(head=head)
    frames = []
    with torch.inference_mode():
        for seed in range(FRAMES):
            scene = np.array(render_scene(seed, SceneConfig(height=size[0], width=size[1]))[0])
            out = head([image_tensor(scene)], use_filter=False)
            frames.append(encode_frame(out.bottleneck.numpy(), out.meta, checkpoint.codec, fingerprint))
    return frames


def run_client(
    target: str,
    frames: list[pb.BottleneckFrame],
    window: int,
    timeout_s: float,
    stop_at: float,
    record: Client,
    link: Link | None = None,
    period_s: float = 0.0,
) -> None:
    """Stream frames with ``window`` in flight until ``stop_at``, then drain; every frame is answered or failed.
    ``link`` shares a connection (not closed here); ``period_s`` paces the frames (one every ``period_s``)."""
    own = link is None
    link = link or Link(LinkConfig(target, timeout_s=timeout_s))
    stream = link.stream(link.stub.InferStream)
    next_at = time.monotonic()
    pending: deque = deque()
    frame_id = 0
    try:
        while True:
            while len(pending) < window and time.monotonic() < stop_at and time.monotonic() >= next_at:
                next_at = max(next_at + period_s, time.monotonic()) if period_s else 0.0
                request = pb.BottleneckFrame()
                request.CopyFrom(frames[frame_id % len(frames)])
                request.frame_id = frame_id
                pending.append((frame_id, time.monotonic(), stream.submit(frame_id, request)))
                frame_id += 1
            if not pending:
                if time.monotonic() >= stop_at:
                    return
                time.sleep(max(0.0, min(next_at, stop_at) - time.monotonic()))
                continue
            sent_id, sent_at, future = pending.popleft()
            try:
                reply = future.result(timeout=max(0.0, sent_at + timeout_s - time.monotonic()))
            except TimeoutError:
                stream.cancel(sent_id, link.deadline_error())
                record.errors["DEADLINE_EXCEEDED"] += 1
            except LinkError as e:
                record.errors[e.code] += 1
            else:
                if len(reply.response.images) != 1 or reply.response.frame_id != sent_id:
                    record.errors["WRONG_ANSWER"] += 1
                else:
                    record.latencies_ms.append((time.monotonic() - sent_at) * 1000)
    finally:
        stream.close()
        if own:
            link.close()


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time, MiB per minute."""
    if len(samples) < 2:
        return 0.0
    t, rss = np.array(samples).T
    return float(np.polyfit(t / 60, rss, 1)[0])


def windows(rows: list[tuple[float, float, int, int, float]], elapsed: float, parts: int = 5) -> list[tuple]:
    """The run in ``parts`` equal spans: (start s, end s, lowest RSS, highest RSS, answered frames/s).

    RSS swings by a batch's working memory between samples; the lowest RSS of each span is the steady level a leak
    would lift.
    """
    out = []
    for i in range(parts):
        lo, hi = elapsed * i / parts, elapsed * (i + 1) / parts
        span = [r for r in rows if lo <= r[0] < hi or (i == parts - 1 and r[0] >= hi)]
        if len(span) < 2:
            continue
        fps = (span[-1][2] - span[0][2]) / max(span[-1][0] - span[0][0], 1e-9)
        out.append((lo, hi, min(r[1] for r in span), max(r[1] for r in span), fps))
    return out


def plot(rows: list[tuple[float, float, int, int, float]], path: Path, title: str) -> None:
    t = [r[0] / 60 for r in rows]
    fig = Figure(figsize=(8, 5.5))  # drawn on the Agg canvas, no pyplot state
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(t, [r[1] for r in rows], marker=".")
    top.set_ylabel("server RSS (MiB)")
    top.set_ylim(bottom=0)
    top.set_title(title)
    bottom.plot(t[1:], [r[4] for r in rows[1:]], marker=".", color="tab:green")  # a rate needs two samples
    bottom.set_ylabel("answered frames/s")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def server_summary(stats: pb.Stats) -> str:
    stages = {s.stage: s for s in stats.stages}
    parts = [f"{name} p50 {stages[name].p50_ms:.1f} ms" for name in ("queue", "decode", "tail") if name in stages]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors_by_code.items())) or "none"
    return f"{stats.frames} frames answered, errors: {errors}; {', '.join(parts)}"


@dataclass
class Run:
    """What one load run measured."""

    elapsed: float
    rows: list[tuple[float, float, int, int, float]]  # per sample: t_s, rss_mb, answered, failed, frames/s
    records: list[Client]
    end_rss: float
    peak_rss: float
    stats: pb.Stats


def run_load(server_args: list[str], threads: int, frames: list[pb.BottleneckFrame], args: argparse.Namespace) -> Run:
    """Start the server, warm it up, run the clients until ``args.minutes`` pass, sampling RSS as they go."""
    records = [Client() for _ in range(args.clients)]
    rows: list[tuple[float, float, int, int, float]] = []
    with ServerProcess(server_args, threads=threads) as server:
        control = Link(LinkConfig(server.target, timeout_s=60))
        for frame in frames:  # the model's first calls allocate its buffers: not part of the run
            control.call(control.stub.Infer, frame, control.deadline())
        start = time.monotonic()
        clients = [
            threading.Thread(
                target=run_client,
                args=(server.target, frames, args.window, args.timeout_s, start + args.minutes * 60, record),
                name=f"client-{i}",
            )
            for i, record in enumerate(records)
        ]
        for thread in clients:
            thread.start()
        next_sample = start
        while any(thread.is_alive() for thread in clients):
            if time.monotonic() >= next_sample:
                now = time.monotonic() - start
                answered = sum(len(r.latencies_ms) for r in records)
                fps = (answered - rows[-1][2]) / (now - rows[-1][0]) if rows else 0.0
                rows.append((now, server.memory_mb()[0], answered, sum(r.failed for r in records), fps))
                next_sample += args.sample_s
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        end_rss, peak_rss = server.memory_mb()
        stats = control.call(control.stub.GetStats, pb.StatsRequest(), control.deadline()).response
        control.close()
    return Run(elapsed, rows, records, end_rss, peak_rss, stats)


def markdown(run: Run, command: str, header: list[str], sample_s: float, name: str) -> str:
    """The report: ``header`` lines, then throughput, latency, errors, and the server's RSS over the run."""
    latencies = np.array([v for r in run.records for v in r.latencies_ms])
    errors = sum((r.errors for r in run.records), Counter())
    rss = [row[1] for row in run.rows] + [run.end_rss]
    spans = windows(run.rows, run.elapsed)
    lows = [((lo + hi) / 2, low) for lo, hi, low, _, _ in spans]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (0.0, 0.0, 0.0)
    lines = [
        "# Edge-server load",
        "",
        f"Command: `{command}`",
        "",
        *header,
        "",
        f"- throughput: **{len(latencies) / run.elapsed:.1f} frames/s** ({len(latencies)} answered)",
        f"- latency (hand-off to answer): p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms",
        "- errors: " + (", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "none"),
        f"- server: {server_summary(run.stats)}",
        f"- server RSS: start {rss[0]:.0f} MiB, end {run.end_rss:.0f} MiB, max sampled {max(rss):.0f} MiB, "
        f"peak (VmHWM) {run.peak_rss:.0f} MiB; slope {slope_mb_per_min([r[:2] for r in run.rows]):+.2f} MiB/min "
        f"over all samples, {slope_mb_per_min(lows):+.2f} MiB/min over the lowest RSS of each fifth of the run",
        "",
        "| minutes | lowest RSS (MiB) | highest RSS (MiB) | frames/s |",
        "| --- | --- | --- | --- |",
        *(f"| {lo / 60:.1f}-{hi / 60:.1f} | {low:.0f} | {high:.0f} | {fps:.1f} |" for lo, hi, low, high, fps in spans),
        "",
        f"RSS sampled every {sample_s:g} s: `{name}.csv`; plot: `{name}.png`.",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Phase:
    """One phase of the fairness scenario: the paced clients' records and the greedy one's (None when absent)."""

    name: str
    seconds: float
    paced: list[Client]
    greedy: Client | None


def run_phase(
    target: str, frames: list[pb.BottleneckFrame], args: argparse.Namespace, greedy: bool, name: str
) -> Phase:
    """``clients - 1`` paced clients, and the greedy one if asked, for ``args.minutes``."""
    paced = [Client() for _ in range(args.clients - 1)]
    hog = Client() if greedy else None
    period = 1.0 / args.paced_fps
    greedy_process = None
    if greedy:  # its own process, like another device: its threads do not slow the paced clients' measurements
        spawn = multiprocessing.get_context("spawn")
        results = spawn.Queue()
        frames_bytes = [f.SerializeToString() for f in frames]
        greedy_process = spawn.Process(
            target=run_greedy,
            args=(target, frames_bytes, args.greedy_streams, args.window, args.timeout_s, args.minutes * 60, results),
            name="greedy",
        )
        greedy_process.start()
        assert results.get(timeout=300) == "ready"
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    threads = [
        threading.Thread(
            target=run_client,
            args=(target, frames, 1, args.timeout_s, stop_at, record),
            kwargs={"period_s": period},
            name=f"paced-{i}",
        )
        for i, record in enumerate(paced)
    ]
    for thread in threads:
        thread.start()
        time.sleep(period / len(paced))  # spread the paced clients' phases
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start  # the paced clients' run; the greedy one ran as long
    if greedy_process is not None:
        hog.latencies_ms, hog.errors = results.get(timeout=args.timeout_s + 60)
        greedy_process.join()
    return Phase(name, seconds, paced, hog)


def run_greedy(
    target: str, frames: list[bytes], streams: int, window: int, timeout_s: float, seconds: float, results
) -> None:
    """The greedy client (in a process of its own): ``streams`` streams over one connection, ``window`` frames in
    flight each, as fast as it can for ``seconds``; puts (latencies, errors) on ``results``."""
    messages = [pb.BottleneckFrame.FromString(f) for f in frames]
    link = Link(LinkConfig(target, timeout_s=timeout_s))
    results.put("ready")
    stop_at = time.monotonic() + seconds
    parts = [Client() for _ in range(streams)]
    threads = [
        threading.Thread(
            target=run_client, args=(target, messages, window, timeout_s, stop_at, part), kwargs={"link": link}
        )
        for part in parts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    link.close()
    results.put(([v for p in parts for v in p.latencies_ms], sum((p.errors for p in parts), Counter())))


def fairness(frames: list[pb.BottleneckFrame], server_args: list[str], args: argparse.Namespace) -> list[Phase]:
    """Paced alone, paced + greedy against the fair server, paced + greedy against a FIFO server."""
    phases = []
    plan = {
        "fair": ((False, "7 paced, alone"), (True, "7 paced + 1 greedy")),
        "fifo": ((True, "7 paced + 1 greedy, --scheduling fifo"),),
    }
    for scheduling, runs in plan.items():
        with ServerProcess([*server_args, "--scheduling", scheduling], threads=args.server_threads) as server:
            control = Link(LinkConfig(server.target, timeout_s=60))
            for frame in frames:  # warm-up
                control.call(control.stub.Infer, frame, control.deadline())
            control.close()
            for greedy, name in runs:
                phases.append(run_phase(server.target, frames, args, greedy, name.replace("7", str(args.clients - 1))))
    return phases


def fairness_markdown(phases: list[Phase], command: str, header: list[str], args: argparse.Namespace) -> str:
    def pct(values: list[float]) -> tuple[float, float]:
        return tuple(np.percentile(values, [50, 95])) if values else (float("nan"), float("nan"))

    alone = pct([v for c in phases[0].paced for v in c.latencies_ms])[1]
    lines = [
        "# Fairness: one greedy client among paced ones",
        "",
        f"Command: `{command}`",
        "",
        *header,
        "",
        f"{args.clients - 1} paced clients send one frame every {1 / args.paced_fps:.2f} s each (one stream, one frame "
        f"in flight); the greedy client (a process of its own) opens {args.greedy_streams} streams over one "
        f"connection with {args.window} frames in flight each and sends as fast as it can. {args.minutes:g} min per "
        "phase. Latency: from handing a frame to the link to its answer.",
        "",
        "| phase | paced frames/s | paced p50 ms | paced p95 ms | p95 vs alone | greedy frames/s | greedy p50 ms "
        "| errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase in phases:
        paced = [v for c in phase.paced for v in c.latencies_ms]
        p50, p95 = pct(paced)
        errors = sum((c.errors for c in phase.paced), Counter()) + (phase.greedy.errors if phase.greedy else Counter())
        greedy_fps = f"{len(phase.greedy.latencies_ms) / phase.seconds:.2f}" if phase.greedy else "-"
        greedy_p50 = f"{pct(phase.greedy.latencies_ms)[0]:.0f}" if phase.greedy else "-"
        lines.append(
            f"| {phase.name} | {len(paced) / phase.seconds:.2f} | {p50:.0f} | {p95:.0f} | {p95 / alone:.2f}x | "
            f"{greedy_fps} | {greedy_p50} | {', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), no GPU, torch "
        f"{torch.__version__}, grpcio {grpc.__version__}; load average at the end {os.getloadavg()[0]:.2f}."
    )


def stream_count(target: str) -> int:
    """Streams the server at ``target`` holds open now (GetStats)."""
    with grpc.insecure_channel(target) as channel:
        return splitdet_pb2_grpc.SplitDetectionStub(channel).GetStats(pb.StatsRequest(), timeout=10).streams


def idle_scenario(server_args: list[str], args: argparse.Namespace, command: str) -> str:
    """RSS and health-check latency with 0, 64, 256, 1024 idle streams open; the markdown report."""
    counts = [int(c) for c in args.idle_streams.split(",")]
    rows = []
    with ServerProcess(server_args, threads=args.server_threads) as server:
        for count in counts:
            with IdleStreams(server.target, count, channels=max(1, count // 64)) as idle:
                deadline = time.monotonic() + 120
                while stream_count(server.target) < count and time.monotonic() < deadline:
                    time.sleep(0.2)
                held = stream_count(server.target)
                time.sleep(2)
                rss = server.memory_mb()[0]
                health = health_latencies_ms(server.target, args.health_checks)
                refused = sum(idle.ended().values())
            p50, p99 = np.percentile(health, [50, 99])
            rows.append((count, held, refused, rss, p50, p99, max(health)))
    base = rows[0][3]
    per_stream = [(rss - base) * 1024 / count for count, _, _, rss, *_ in rows if count]
    lines = [
        "# Idle streams: memory and health-check latency",
        "",
        f"Command: `{command}`",
        "",
        f"Server: `edge-server {' '.join(shown_args(server_args))}` (child process, every limit at its default) on "
        "loopback.",
        machine_line(),
        "",
        f"Idle streams: `InferStream` calls that send nothing, opened by one grpc.aio client process over one "
        f'connection per 64 streams. At each count, {args.health_checks} health checks (service ""), one every '
        "20 ms on a connection of their own.",
        "",
        "| idle streams | held by the server | refused | server RSS (MiB) | RSS per stream (KiB) | health p50 ms "
        "| health p99 ms | health max ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count, held, refused, rss, p50, p99, worst in rows:
        each = f"{(rss - base) * 1024 / count:.0f}" if count else "-"
        lines.append(f"| {count} | {held} | {refused} | {rss:.0f} | {each} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    if per_stream:
        lines += ["", f"Memory per idle stream: about {per_stream[-1]:.0f} KiB (RSS growth over {counts[-1]} streams)."]
    return "\n".join(lines) + "\n"


@dataclass
class FleetPhase:
    """One phase of the fleet scenario."""

    name: str
    offered_fps: float
    seconds: float
    answered_fps: float
    devices: Devices
    health_ms: list[float]
    rss_mb: float


def fleet_phase(
    name: str,
    target: str,
    health_target: str,
    frame: pb.BottleneckFrame,
    count: int,
    period_s: float,
    args: argparse.Namespace,
    memory: Callable[[], float],
    halfway: Callable[[], None] | None = None,
) -> FleetPhase:
    """``count`` devices at one frame per ``period_s`` each for ``args.minutes``, health sampled throughout;
    ``halfway`` runs in the middle of the run."""
    seconds = args.minutes * 60
    fleet = DeviceFleet(target, frame, count, args.processes, period_s, seconds, args.timeout_s)
    start_at = fleet.start()
    time.sleep(max(0.0, start_at - time.monotonic()))
    health: list[float] = []
    sampler = threading.Thread(
        target=lambda: health.extend(health_latencies_ms(health_target, int(seconds / 0.1), interval_s=0.08))
    )
    sampler.start()
    if halfway is not None:
        time.sleep(seconds / 2)
        halfway()
    sampler.join()
    rss = memory()
    devices = fleet.results()
    offered = count / period_s if period_s else float("nan")
    return FleetPhase(name, offered, seconds, devices.rate(start_at, seconds), devices, health, rss)


def fleet_scenario(frame: pb.BottleneckFrame, server_args: list[str], args: argparse.Namespace) -> tuple[float, list]:
    """Capacity, then 1x and 2x of it against one server, then 1x against two replicas, one killed halfway."""
    phases = []
    with ServerProcess(server_args, threads=args.server_threads) as server:
        control = Link(LinkConfig(server.target, timeout_s=60))
        control.call(control.stub.Infer, frame, control.deadline())  # warm-up
        control.close()
        capacity_run = fleet_phase(
            "capacity", server.target, server.target, frame, args.capacity_devices, 0.0, args, lambda: 0.0
        )
        capacity = capacity_run.answered_fps
        for factor in (1, 2):
            period = args.streams / (factor * capacity)
            name = f"{args.streams} streams, {factor}x capacity, one server"
            phases.append(
                fleet_phase(name, server.target, server.target, frame, args.streams, period, args,
                            lambda: server.memory_mb()[0])
            )  # fmt: skip
    with (
        ServerProcess(server_args, threads=args.server_threads) as first,
        ServerProcess(server_args, threads=args.server_threads) as second,
    ):
        target = f"ipv4:{first.target},{second.target}"
        name = f"{args.streams} streams, 1x capacity, 2 replicas, one killed halfway"
        phases.append(
            fleet_phase(name, target, second.target, frame, args.streams, args.streams / capacity, args,
                        lambda: second.memory_mb()[0], halfway=first.kill)
        )  # fmt: skip
    return capacity, phases


def fleet_markdown(capacity: float, phases: list[FleetPhase], command: str, header: list[str]) -> str:
    lines = [
        "# Fleet: many devices against one server, and against two replicas",
        "",
        f"Command: `{command}`",
        "",
        *header,
        "",
        f"Capacity: **{capacity:.1f} frames/s** (devices sending back to back, one frame in flight each).",
        "",
        "| phase | offered frames/s | answered frames/s | goodput vs capacity | p50 ms | p99 ms | failed (by code) "
        "| refusals retried | duplicates | health p50 ms | health p99 ms | server RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase in phases:
        d = phase.devices
        p50, p99 = d.percentiles()
        fps = phase.answered_fps
        failed = ", ".join(f"{k} {v}" for k, v in sorted(d.errors.items())) or "none"
        retried = ", ".join(f"{k} {v}" for k, v in sorted(d.refusals.items())) or "none"
        duplicates = len(d.answered_ids) - len(set(d.answered_ids))
        h50, h99 = np.percentile(phase.health_ms, [50, 99]) if phase.health_ms else (float("nan"),) * 2
        lines.append(
            f"| {phase.name} | {phase.offered_fps:.1f} | {fps:.1f} | {fps / capacity:.0%} | {p50:.0f} | {p99:.0f} "
            f"| {failed} | {retried} | {duplicates} | {h50:.1f} | {h99:.1f} | {phase.rss_mb:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (default 8)")
    p.add_argument("--minutes", type=float, default=5.0, help="length of the run (default 5)")
    p.add_argument("--ckpt", type=Path, help="student checkpoint (default: the bundled demo checkpoint)")
    p.add_argument(
        "--small-model",
        action="store_true",
        help=f"serve a small untrained student instead ({SMALL_MODEL}; written to the temporary directory)",
    )
    p.add_argument("--window", type=int, default=2, help="frames in flight per client (default 2)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-frame deadline (default 10)")
    p.add_argument("--size", default="480x640", help="camera frame size HxW before the head resizes it")
    p.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch (default 4)")
    p.add_argument("--server-threads", type=int, default=1, help="the server's --torch-threads (default 1)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--out", type=Path, default=Path("studies/results/load"), help="OUT.md, OUT.csv, OUT.png")
    p.add_argument(
        "--scenario", choices=["steady", "fairness", "idle", "fleet"], default="steady", help="(default steady)"
    )
    p.add_argument("--idle-streams", default="0,64,256,1024", help="idle: stream counts (default 0,64,256,1024)")
    p.add_argument("--health-checks", type=int, default=200, help="idle: health checks per count (default 200)")
    p.add_argument("--streams", type=int, default=256, help="fleet: paced devices, a stream each (default 256)")
    p.add_argument("--processes", type=int, default=4, help="fleet: client processes (default 4)")
    p.add_argument(
        "--max-queued-frames", type=int, help="idle, fleet: the server's --max-queued-frames (default: its own)"
    )
    p.add_argument("--capacity-devices", type=int, default=8, help="fleet: devices measuring capacity (default 8)")
    p.add_argument("--paced-fps", type=float, default=0.7, help="fairness: frames/s of each paced client (default 0.7)")
    p.add_argument("--greedy-streams", type=int, default=8, help="fairness: the greedy client's streams (default 8)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0 or args.window < 1 or args.sample_s <= 0:
        p.error("need --clients >= 1, --minutes > 0, --window >= 1 and --sample-s > 0")
    torch.set_num_threads(1)
    ckpt = small_model(Path(tempfile.gettempdir()) / "splitdet-small-model.pt") if args.small_model else args.ckpt
    ckpt = ckpt or demo_checkpoint()
    height, width = (int(v) for v in args.size.split("x"))
    frames = make_frames(ckpt, (height, width))
    server_args = ["--ckpt", str(ckpt), "--workers", str(args.clients + 2), "--max-batch", str(args.max_batch)]
    server_args += ["--torch-threads", str(args.server_threads), "--log-level", "WARNING"]
    command = "python -m studies.load " + " ".join(shown_args(argv if argv is not None else sys.argv[1:]))
    if args.scenario in ("idle", "fleet"):
        plain = ["--ckpt", str(ckpt), "--torch-threads", str(args.server_threads), "--log-level", "WARNING"]
        if args.max_queued_frames is not None:
            plain += ["--max-queued-frames", str(args.max_queued_frames)]
        if args.scenario == "idle":
            text = idle_scenario(plain, args, command)
        else:
            capacity, phases = fleet_scenario(frames[0], plain, args)
            header = [
                f"Server: `edge-server {' '.join(shown_args(plain))}` (child processes, other limits at their "
                f"defaults) serving `{ckpt.name}` on loopback.",
                machine_line(),
                "",
                f"Devices: {args.streams} emulated cameras (grpc.aio, `studies.fleet`) in {args.processes} client "
                f"processes, one stream each, one {height}x{width} frame ({frames[0].ByteSize()} B) at a time at a "
                f"fixed rate, deadline {args.timeout_s:g} s; a refused frame (RESOURCE_EXHAUSTED) is sent again after "
                "the server's retry hint (at once failed when the hint is past its deadline), one that meets "
                "UNAVAILABLE after 0.2 s, on a new stream. Latency: from "
                f"the first send to the answer, retries included. {args.minutes * 60:g} s per phase; health checks "
                "every 0.1 s on a connection of their own (the surviving replica's in the last phase).",
            ]
            text = fleet_markdown(capacity, phases, command, header)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.scenario == "fairness":
        server_args[server_args.index("--workers") + 1] = str(args.clients + args.greedy_streams + 2)
        phases = fairness(frames, server_args, args)
        header = [
            f"Server: `edge-server {' '.join(shown_args(server_args))} --scheduling fair|fifo` (child process) on "
            "loopback.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), torch "
            f"{torch.__version__}, grpcio {grpc.__version__}; load average at the end {os.getloadavg()[0]:.2f}.",
        ]
        text = fairness_markdown(phases, command, header, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    run = run_load(server_args, args.server_threads, frames, args)
    header = [
        f"Server: `edge-server {' '.join(shown_args(server_args))}` (child process) serving `{ckpt.name}` on loopback.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, grpcio {grpc.__version__}; "
        f"load average at the end {os.getloadavg()[0]:.2f}.",
        "",
        f"{args.clients} clients x {args.window} frames in flight, one stream each "
        "(splitdet.mobile_client.link.StreamLink), "
        f"{args.minutes:g} min ({run.elapsed:.0f} s), {height}x{width} camera frames, "
        f"{np.mean([f.ByteSize() for f in frames]):.0f} B per frame on the wire.",
    ]
    text = markdown(run, command, header, args.sample_s, args.out.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    csv = ["t_s,rss_mb,answered,failed,fps"] + [f"{t:.1f},{m:.1f},{a},{f},{r:.2f}" for t, m, a, f, r in run.rows]
    args.out.with_suffix(".csv").write_text("\n".join(csv) + "\n")
    plot(run.rows, args.out.with_suffix(".png"), f"{args.clients} streaming clients, {ckpt.name}")
    print(text)
    return 1 if any(r.failed for r in run.records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
