"""What ``split-bench`` makes of its rows: summaries per mode and link, the targets of the benchmark, accuracy
against bytes from ``split-eval`` results, and the files: bench.csv, bench.json, bench.md and the plots.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks import plots
from benchmarks.paths import shown_path
from common.checkpoint import CheckpointError, load_checkpoint

REPORT_STAGES = ("head", "filter", "encode", "network", "server_decode", "tail")
REMOTE = ("offload", "split", "split+filter")
COLUMNS = (
    "mode", "emulator", "link", "rate_mbps", "down_mbps", "rtt_ms", "jitter_ms", "loss", "window", "frame", "source",
    "skipped", "error", "sent_bytes", "received_bytes", "wire_up_bytes", "wire_down_bytes",
    *(f"{stage}_ms" for stage in REPORT_STAGES), "server_ms", "total_ms", "floor_ms", "overhead_ms",
)  # fmt: skip


# ---- summaries ----


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def summarize(rows: list[dict], runs: list[dict], window: int) -> list[dict]:
    """Per (mode, link): bytes, end-to-end percentiles, floor, overhead, stages, frames/s with window 1 and ``window``.

    Latency comes from the window-1 run (one frame at a time); frames the filter skipped count at their (short)
    time, failed frames are left out.
    """
    fps = {(r["mode"], r["link"], r["window"]): r["fps"] for r in runs}
    summaries = []
    for run in (r for r in runs if r["window"] == 1):
        group = [r for r in rows if (r["mode"], r["link"], r["window"]) == (run["mode"], run["link"], 1)]
        ok = [r for r in group if r["error"] is None]
        sent = [r for r in ok if not r["skipped"]]
        totals = [r["total_ms"] for r in ok]
        floors = [r["floor_ms"] for r in ok]
        overheads = [r["overhead_ms"] for r in ok]
        wire_up = [r["wire_up_bytes"] for r in ok if r["wire_up_bytes"] is not None]
        wire_down = [r["wire_down_bytes"] for r in ok if r["wire_down_bytes"] is not None]
        summary = {
            "mode": run["mode"],
            "link": run["link"],
            "rate_mbps": run["rate_mbps"],
            "down_mbps": run["down_mbps"],
            "trace": run["link"].startswith("trace"),
            "frames": len(group),
            "failed": len(group) - len(ok),
            "skipped": sum(r["skipped"] for r in ok),
            "bytes_per_frame": _mean([r["sent_bytes"] for r in ok]),
            "bytes_per_sent_frame": _mean([r["sent_bytes"] for r in sent]),
            "wire_up_per_frame": _mean(wire_up),
            "wire_down_per_frame": _mean(wire_down),
            "p50_ms": _pct(totals, 50),
            "p95_ms": _pct(totals, 95),
            "p99_ms": _pct(totals, 99),
            "mean_ms": _mean(totals),
            "floor_p50_ms": _pct(floors, 50),
            "overhead_p50_ms": _pct(overheads, 50),
            "fps_window1": fps.get((run["mode"], run["link"], 1)),
            f"fps_window{window}": fps.get((run["mode"], run["link"], window)),
        }
        floor = summary["floor_p50_ms"]
        overhead = summary["overhead_p50_ms"]
        summary["overhead_pct"] = round(100 * overhead / floor, 2) if floor else None
        for stage in REPORT_STAGES:
            summary[f"{stage}_p50_ms"] = _pct([r[f"{stage}_ms"] for r in ok if r[f"{stage}_ms"] is not None], 50)
        summary["breakdown_ms"] = _breakdown(ok, run["mode"])
        summaries.append(summary)
    return summaries


def _breakdown(ok: list[dict], mode: str) -> dict[str, float]:
    """Mean ms per component (a frame without a stage counts 0), adding up to the mean end-to-end time."""
    if not ok:
        return {}
    parts = {name: _mean([r[f"{name}_ms"] or 0.0 for r in ok]) for name in ("head", "filter", "encode", "network")}
    if mode == "local":
        parts["device tail"] = _mean([r["tail_ms"] or 0.0 for r in ok])
    else:
        parts["server"] = _mean([r["server_ms"] or 0.0 for r in ok])
    parts["other"] = round(max(0.0, _mean([r["total_ms"] for r in ok]) - sum(parts.values())), 3)
    return parts


def bytes_by_mode(summaries: list[dict]) -> list[dict]:
    """Mean bytes per frame of each remote mode over its links: payload, payload of sent frames, shaper-counted."""
    out = []
    for mode in REMOTE:
        group = [s for s in summaries if s["mode"] == mode and s["bytes_per_frame"] is not None]
        if group:
            out.append(
                {
                    "mode": mode,
                    "payload": _mean([s["bytes_per_frame"] for s in group]),
                    "payload_sent": _mean([s["bytes_per_sent_frame"] for s in group if s["bytes_per_sent_frame"]]),
                    "wire_up": _mean([s["wire_up_per_frame"] for s in group if s["wire_up_per_frame"] is not None]),
                }
            )
    return out


# ---- accuracy against bytes (split-eval results) ----


def _student_name(data: dict, cache: dict[str, tuple]) -> str:
    """``GHND 3 ch, 5 ep``, ``3 ch + filter`` or ``3 ch student``, from the evaluated checkpoint when it can be read."""
    path = data.get("checkpoint")
    if path not in cache:
        cache[path] = (None, None, False, None)
        try:
            if path and Path(path).is_file():
                checkpoint = load_checkpoint(path)
                config, training = checkpoint.config, checkpoint.training
                method, epochs = training.get("method"), training.get("epoch")
                cache[path] = (config.bottleneck_channels, method, config.with_filter, epochs)
        except (CheckpointError, OSError):
            pass
    channels, method, with_filter, epochs = cache[path]
    name = f"{data.get('bottleneck_channels') or channels or '?'} ch"
    if method in ("hnd", "ghnd"):
        name = f"{method.upper()} {name}" + (f", {epochs} ep" if epochs else "")
    return f"{name} + filter" if with_filter else name if method in ("hnd", "ghnd") else f"{name} student"


def accuracy_points(paths: list[Path], arch: str | None = None) -> tuple[list[dict], list[str]]:
    """bbox AP and bytes per frame of local (whole model), offload (JPEG, when the file has ``jpeg_ap``) and split
    (8-bit and other non-float codecs) from ``split-eval --json`` files (students or teachers) of models of
    ``arch`` (any when None), and notes on what could not be used."""
    points: list[dict] = []
    notes: list[str] = []
    cache: dict[str, tuple] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            notes.append(f"{path}: not read ({e})")
            continue
        if arch is not None and data.get("arch", arch) != arch:
            continue  # another model's AP (e.g. Keypoint R-CNN's person boxes) is not comparable
        model = _student_name(data, cache) if data.get("student", True) else "teacher"
        common = {"source": str(path), "checkpoint": data.get("checkpoint"), "model": model}
        for run in data.get("runs", []):
            ap = run.get("ap", {}).get("bbox", {}).get("AP")
            if ap is None:
                continue
            if run.get("mode") == "whole":
                points.append({**common, "kind": "local", "label": f"local ({model})", "bytes": 0, "ap": ap})
            elif run.get("mode") == "split" and run.get("quantization") not in (None, "none") and run.get("bytes"):
                codec = "" if run["quantization"] == "per_tensor" else f" {run['quantization']}"
                label = f"split {model.removesuffix(' student')}{codec}"
                points.append({**common, "kind": "split", "label": label, "bytes": run["bytes"]["payload"], "ap": ap})
        jpeg_ap = data.get("jpeg_ap") or {}
        for quality, aps in sorted(jpeg_ap.items(), key=lambda kv: -int(kv[0])):
            size = (data.get("jpeg") or {}).get(str(quality))
            if size is not None and "bbox" in aps:
                label = f"offload JPEG q{quality} ({model})"
                points.append({**common, "kind": "offload", "label": label, "bytes": size, "ap": aps["bbox"]["AP"]})
        if data.get("jpeg") and not jpeg_ap:
            notes.append(f"{path} has no jpeg_ap (AP on JPEG-encoded inputs): offload points left out")
    labels = Counter(p["label"] for p in points)
    for p in points:
        if labels[p["label"]] > 1:  # e.g. two 3-channel students: say which file each comes from
            p["label"] += f" [{Path(p['source']).stem}]"
    return points, notes


# ---- report ----


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def resized(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's detection transform scales a ``height`` x ``width`` image to (before padding)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def input_size(report: dict) -> str | None:
    """What the head's encoder ran on (see :func:`describe_input`): from the report, or
    from its checkpoint for reports written before the size was recorded. None when neither tells."""
    settings = report["settings"]
    if settings.get("input_size"):
        return settings["input_size"]
    try:
        config = load_checkpoint(report["checkpoint"]).config
        height, width = (int(v) for v in settings["frame_size"].split("x"))
    except (CheckpointError, OSError, ValueError, KeyError):
        return None
    return describe_input(height, width, config.min_size, config.max_size)


def describe_input(height: int, width: int, min_size: int, max_size: int, divisible: int = 32) -> str:
    """``120x160, padded to 128x160, from 240x320 frames at min/max size 160/160``."""
    h, w = resized(height, width, min_size, max_size)
    ph, pw = -(-h // divisible) * divisible, -(-w // divisible) * divisible
    return f"{h}x{w}, padded to {ph}x{pw}, from {height}x{width} frames at min/max size {min_size}/{max_size}"


def targets(summaries: list[dict], jpeg_quality: int, size: str | None = None) -> list[str]:
    """The issue's targets, as measured here; ``size`` is the input size the codec timings were taken at."""
    lines = []
    split_bytes = [s["bytes_per_sent_frame"] for s in summaries if s["mode"] == "split" and s["bytes_per_sent_frame"]]
    jpeg_bytes = [s["bytes_per_sent_frame"] for s in summaries if s["mode"] == "offload" and s["bytes_per_sent_frame"]]
    if split_bytes and jpeg_bytes:
        ratio = np.mean(split_bytes) / np.mean(jpeg_bytes)
        lines.append(
            f"- split bytes per frame / JPEG q{jpeg_quality} bytes: {np.mean(split_bytes):,.0f} / "
            f"{np.mean(jpeg_bytes):,.0f} = {ratio:.3f} (target <= 0.25: {'met' if ratio <= 0.25 else 'not met'})"
        )
    local = next((s for s in summaries if s["mode"] == "local"), None)
    slow = sorted({s["rate_mbps"] for s in summaries if s["mode"] in REMOTE and not s["trace"] and s["rate_mbps"] <= 5})
    for rate in slow:
        fixed = [s for s in summaries if not s["trace"] and s["rate_mbps"] == rate]
        rivals = {s["mode"]: s["p50_ms"] for s in fixed if s["mode"] == "offload"}
        if local is not None:
            rivals["local"] = local["p50_ms"]
        splits = [s for s in fixed if s["mode"] in ("split", "split+filter")]
        for s in splits:
            if s["p50_ms"] is None or not rivals or None in rivals.values():
                continue
            beaten = all(s["p50_ms"] < v for v in rivals.values())
            against = ", ".join(f"{m} {v:,.1f}" for m, v in rivals.items())
            lines.append(
                f"- {s['link']}: {s['mode']} p50 {s['p50_ms']:,.1f} ms vs {against} ms: "
                f"{'beats' if beaten else 'does not beat'} {' and '.join(rivals)} (target: beats offload and local "
                "at <= 5 Mbps)"
            )
    remote = [s for s in summaries if s["mode"] in REMOTE and s["overhead_p50_ms"] is not None]
    if remote:
        within = [s for s in remote if s["overhead_p50_ms"] <= 5 or (s["overhead_pct"] or 0) <= 5]
        worst = max(remote, key=lambda s: s["overhead_p50_ms"])
        line = (
            f"- runtime overhead p50 within 5 ms or 5 % of the floor: {len(within)} of {len(remote)} remote runs; "
            f"largest {worst['overhead_p50_ms']:,.1f} ms ({_fmt(worst['overhead_pct'])} %) for {worst['mode']} at "
            f"{worst['link']}"
        )
        with_pct = [s for s in remote if s["overhead_pct"] is not None]
        if with_pct:  # the largest share of the floor is usually another run's (a fast link has a small floor)
            top = max(with_pct, key=lambda s: s["overhead_pct"])
            line += (
                f"; largest share of the floor {_fmt(top['overhead_pct'])} % ({top['overhead_p50_ms']:,.1f} ms) for "
                f"{top['mode']} at {top['link']}"
            )
        lines.append(line)
    split = [s for s in summaries if s["mode"] in ("split", "split+filter")]
    encode = [s["encode_p50_ms"] for s in split if s["encode_p50_ms"] is not None]
    decode = [s["server_decode_p50_ms"] for s in split if s["server_decode_p50_ms"] is not None]
    if encode and decode:
        lines.append(
            f"- quantize+zstd encode p50 {np.median(encode):.2f} ms, server decode p50 {np.median(decode):.2f} ms at "
            f"this checkpoint's input size{f' ({size})' if size else ''}; other sizes: `python -m benchmarks.codec` "
            "(target <= 5 ms each way)"
        )
    return lines


def markdown(report: dict) -> str:
    """bench.md: setup, latency and throughput table, targets, accuracy against bytes, plots."""
    s, window = report["settings"], report["settings"]["window"]
    machine, emulator = report["machine"], report["emulator"]
    lines = [
        f"# split-bench: `{shown_path(report['checkpoint'])}`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}; client {machine['client_threads']} thread(s), server "
        f"{machine['server_threads']} thread(s) on {machine['server_device']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}.",
        "",
        f"Emulator: {emulator['name']}: {emulator['description']}."
        + (f" netem not used: {emulator['netem_unavailable']}." if emulator["netem_unavailable"] else ""),
        "",
        f"Frames: {s['frames']} per run from {s['source']} ({s['frame_size']}), {s['warmup']} warm-up frame(s) "
        "per run; "
        f"RTT {s['rtt_ms']:g} ms, jitter {s['jitter_ms']:g} ms, loss {s['loss']:g}; offload JPEG q{s['jpeg_quality']}. "
        f"Latency from one frame at a time (window 1); throughput with window 1 and window {window} (pipelined).",
        "",
        "End-to-end (e2e) percentiles over the frames that did not fail; floor = device stages + request bytes / "
        "uplink rate + RTT + server time + response bytes / downlink rate; overhead = e2e - floor (p50 of per-frame "
        "values). Stage columns are p50 ms; network = reply time minus server time. Bytes: protobuf payload per frame "
        "(skipped frames count 0), and bytes the emulator counted each way.",
        "",
        "| mode | link | frames (skipped/failed) | bytes/frame | wire up/down B | e2e p50 | p95 | p99 | floor p50 "
        f"| overhead p50 | head | encode | network | server decode | tail | fps w1 | fps w{window} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        pct = f" ({_fmt(r['overhead_pct'])} %)" if r["overhead_pct"] is not None else ""
        wire = "-"
        if r["wire_up_per_frame"] is not None:
            wire = f"{r['wire_up_per_frame']:,.0f}/{r['wire_down_per_frame']:,.0f}"
        lines.append(
            f"| {r['mode']} | {r['link']} | {r['frames']} ({r['skipped']}/{r['failed']}) "
            f"| {_fmt(r['bytes_per_frame'], 0)} "
            f"| {wire} | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['floor_p50_ms'])} "
            f"| {_fmt(r['overhead_p50_ms'])}{pct} | {_fmt(r['head_p50_ms'])} | {_fmt(r['encode_p50_ms'], 2)} "
            f"| {_fmt(r['network_p50_ms'])} | {_fmt(r['server_decode_p50_ms'], 2)} | {_fmt(r['tail_p50_ms'])} "
            f"| {_fmt(r['fps_window1'], 2)} | {_fmt(r[f'fps_window{window}'], 2)} |"
        )
    found = targets(report["summary"], s["jpeg_quality"], input_size(report))
    lines += ["", "## Targets", "", *(found or ["- nothing to compare"])]
    lines += ["", "## Accuracy against bytes per frame", ""]
    if report["accuracy"]:
        lines += [
            "bbox AP on the synthetic validation set from `split-eval --json` results; split bytes are the mean "
            "payload of the frames the filter sent, offload bytes the mean JPEG size.",
            "",
            "| source | point | model | bytes/frame | bbox AP |",
            "|---|---|---|---|---|",
        ]
        for p in report["accuracy"]:
            lines.append(
                f"| {Path(p['source']).name} | {p['label']} | {p['model']} | {p['bytes']:,.0f} | {p['ap']:.3f} |"
            )
    else:
        lines.append("No evaluation results (`--eval-json`).")
    lines += [f"- {note}" for note in report["accuracy_notes"]]
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out: Path) -> None:
    """bench.csv, bench.json, bench.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in report["rows"])
    summaries, window = report["summary"], report["settings"]["window"]
    plots.latency_vs_rate(summaries, out / "latency_vs_rate.png", report["settings"]["link_note"])
    plots.bytes_per_frame(report["bytes"], out / "bytes_per_frame.png")
    plots.stage_breakdown(summaries, out / "stage_breakdown.png")
    plots.throughput_vs_rate(summaries, window, out / "throughput_vs_rate.png")
    names = ["latency_vs_rate.png", "bytes_per_frame.png", "stage_breakdown.png", "throughput_vs_rate.png"]
    if report["accuracy"]:
        plots.ap_vs_bytes(report["accuracy"], out / "ap_vs_bytes.png")
        names.append("ap_vs_bytes.png")
    report["plots"] = names
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(report))
