"""What ``split-bench`` makes of its rows: summaries per device speed, mode and link, the crossover map (which
mode wins where, and auto against the best fixed mode), the targets of the benchmark computed from the run,
accuracy against bytes from ``split-eval`` results, and the files: bench.csv, cells.csv, bench.json, bench.md and
the plots.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from splitdet.benchmarks import plots
from splitdet.benchmarks.paths import shown_path
from splitdet.benchmarks.shaper import RateSchedule
from splitdet.common.checkpoint import CheckpointError, load_checkpoint

REPORT_STAGES = ("head", "filter", "encode", "network", "server_decode", "tail")
REMOTE = ("offload", "split", "split+filter", "auto")
FIXED = ("local", "offload", "split", "split+filter")
COLUMNS = (
    "device_cpu", "mode", "chosen", "emulator", "link", "rate_mbps", "down_mbps", "rtt_ms", "jitter_ms", "loss",
    "window", "frame", "source", "skipped", "error", "start_s", "sent_at_s", "sent_bytes", "received_bytes",
    "wire_up_bytes", "wire_down_bytes", *(f"{stage}_ms" for stage in REPORT_STAGES), "server_ms", "total_ms",
    "floor_ms", "overhead_ms",
)  # fmt: skip
CELL_COLUMNS = (
    "device_cpu", "mode", "link", "rate_mbps", "frames", "skipped", "failed", "bytes_per_frame", "p50_ms", "p95_ms",
    "floor_p50_ms", "overhead_p50_ms", "fps_window1", "fps_stream", "chosen",
)  # fmt: skip
AUTO_TOLERANCE = (0.10, 10.0)  #: auto is "as good as the best" within 10 % or 10 ms of its p50


# ---- summaries ----


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _key(r: dict) -> tuple:
    return (r.get("device_cpu"), r["mode"], r["link"])


def summarize(rows: list[dict], runs: list[dict], window: int) -> list[dict]:
    """Per (device speed, mode, link): bytes, end-to-end percentiles, floor, overhead, stages, frames/s with window 1
    and ``window``, the modes auto chose.

    Latency comes from the window-1 run (one frame at a time); frames the filter skipped count at their (short)
    time, failed frames are left out.
    """
    fps = {(*_key(r), r["window"]): r["fps"] for r in runs}
    switches = {_key(r): len(r.get("switches") or []) for r in runs if r["window"] == 1}
    summaries = []
    for run in (r for r in runs if r["window"] == 1):
        group = [r for r in rows if _key(r) == _key(run) and r["window"] == 1]
        ok = [r for r in group if r["error"] is None]
        sent = [r for r in ok if not r["skipped"]]
        totals = [r["total_ms"] for r in ok]
        floors = [r["floor_ms"] for r in ok]
        overheads = [r["overhead_ms"] for r in ok]
        wire_up = [r["wire_up_bytes"] for r in ok if r["wire_up_bytes"] is not None]
        wire_down = [r["wire_down_bytes"] for r in ok if r["wire_down_bytes"] is not None]
        summary = {
            "device_cpu": run.get("device_cpu"),
            "mode": run["mode"],
            "link": run["link"],
            "rate_mbps": run["rate_mbps"],
            "down_mbps": run["down_mbps"],
            "trace": run["link"].startswith("trace"),
            "schedule": run["link"].startswith("schedule"),
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
            "below_floor": sum(1 for r in ok if r["overhead_ms"] is not None and r["overhead_ms"] < 0),
            "fps_window1": fps.get((*_key(run), 1)),
            f"fps_window{window}": fps.get((*_key(run), window)),
            "chosen": dict(Counter(r.get("chosen") or r["mode"] for r in ok)) if run["mode"] == "auto" else None,
            "switches": switches.get(_key(run)) if run["mode"] == "auto" else None,
        }
        floor = summary["floor_p50_ms"]
        overhead = summary["overhead_p50_ms"]
        summary["overhead_pct"] = round(100 * overhead / floor, 2) if floor else None
        for stage in REPORT_STAGES:
            summary[f"{stage}_p50_ms"] = _pct([r[f"{stage}_ms"] for r in ok if r[f"{stage}_ms"] is not None], 50)
        summary["breakdown_ms"] = _breakdown(ok, run["mode"])
        summaries.append(summary)
    return summaries


def crossover(summaries: list[dict]) -> list[dict]:
    """One cell per (device speed, link): each mode's p50 (local's from its one run per device speed), the winner
    among the fixed modes and its margin over the runner-up, whether split (or split+filter) beats offload and
    local, and auto against the winner (within 10 % or 10 ms of its p50)."""
    local = {s["device_cpu"]: s for s in summaries if s["mode"] == "local"}
    links = []
    for s in summaries:
        if s["mode"] != "local" and not s["schedule"] and (s["device_cpu"], s["link"]) not in links:
            links.append((s["device_cpu"], s["link"]))
    if not links:
        links = [(d, "none") for d in local]
    cells = []
    for device, link in links:
        by_mode = {s["mode"]: s for s in summaries if s["device_cpu"] == device and s["link"] == link}
        if device in local:
            by_mode["local"] = local[device]
        p50 = {m: by_mode[m]["p50_ms"] for m in (*FIXED, "auto") if m in by_mode and by_mode[m]["p50_ms"] is not None}
        fixed = {m: v for m, v in p50.items() if m in FIXED}
        if not fixed:
            continue
        ranked = sorted(fixed, key=fixed.get)
        best = ranked[0]
        split = min((m for m in ("split", "split+filter") if m in fixed), key=fixed.get, default=None)
        any_link = next((by_mode[m] for m in by_mode if m != "local"), None)
        cell = {
            "device_cpu": device,
            "link": link,
            "rate_mbps": any_link["rate_mbps"] if any_link else None,
            "trace": link.startswith("trace"),
            "p50_ms": p50,
            "p95_ms": {m: by_mode[m]["p95_ms"] for m in p50},
            "fps": {m: by_mode[m]["fps_window1"] for m in p50},
            "floor_p50_ms": {m: by_mode[m]["floor_p50_ms"] for m in p50},
            "best": best,
            "runner_up": ranked[1] if len(ranked) > 1 else None,
            "margin": round(fixed[ranked[1]] / fixed[best], 3) if len(ranked) > 1 and fixed[best] else None,
            "split_mode": split,
            "split_beats_offload": None if split is None or "offload" not in fixed else fixed[split] < fixed["offload"],
            "split_beats_local": None if split is None or "local" not in fixed else fixed[split] < fixed["local"],
        }
        if "auto" in p50:
            slack = max(AUTO_TOLERANCE[0] * fixed[best], AUTO_TOLERANCE[1])
            cell["auto_vs_best_ms"] = round(p50["auto"] - fixed[best], 3)
            cell["auto_ok"] = p50["auto"] <= fixed[best] + slack
            cell["auto_chosen"] = by_mode["auto"]["chosen"]
        cells.append(cell)
    return cells


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
        for fmt, name in (("jpeg", "JPEG"), ("webp", "WebP")):
            for quality, aps in sorted((data.get(f"{fmt}_ap") or {}).items(), key=lambda kv: -int(kv[0])):
                size = (data.get(fmt) or {}).get(str(quality))
                if size is not None and "bbox" in aps:
                    label = f"offload {name} q{quality} ({model})"
                    point = {**common, "kind": "offload", "label": label, "bytes": size, "ap": aps["bbox"]["AP"]}
                    points.append(point)
        if data.get("jpeg") and not data.get("jpeg_ap"):
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


def _cell_name(c: dict) -> str:
    device = f"{c['device_cpu']:g} core" if c["device_cpu"] is not None else "full-speed device"
    return f"{device}, {c['link']}"


def _where(s: dict) -> str:
    return s["link"] + (f" ({s['device_cpu']:g} core)" if s.get("device_cpu") is not None else "")


def _why_split_loses(c: dict, by_key: dict, rival: str) -> str:
    """Why split does not beat ``rival`` in cell ``c``, from the measured stages."""
    split = by_key.get((c["device_cpu"], c["split_mode"], c["link"]))
    if split is None:
        return ""
    device = sum(split[f"{k}_p50_ms"] or 0.0 for k in ("head", "filter", "encode"))
    if rival == "local":
        local = by_key.get((c["device_cpu"], "local", "none"))
        tail = local["tail_p50_ms"] if local else None
        return (
            f"the device runs the whole model in {_fmt(local['p50_ms'] if local else None)} ms (tail "
            f"{_fmt(tail)} ms), less than the link and the server add to split ({_fmt(split['network_p50_ms'])} ms "
            f"network + {_fmt(split['tail_p50_ms'])} ms server tail)"
        )
    offload = by_key.get((c["device_cpu"], "offload", c["link"]))
    if offload is None:
        return ""
    saved = (offload["bytes_per_frame"] or 0) - (split["bytes_per_sent_frame"] or 0)
    if saved <= 0:
        return (
            f"offload sends fewer bytes ({offload['bytes_per_frame']:,.0f} B against split's "
            f"{split['bytes_per_sent_frame']:,.0f} B) and spends {_fmt(offload['encode_p50_ms'], 2)} ms on the device "
            f"against split's head + encode {device:,.1f} ms, so no split could win here"
        )
    text = (
        f"split's head + encode on the device ({device:,.1f} ms) costs more than the {saved:,.0f} bytes it saves "
        f"take on the link (offload network {_fmt(offload['network_p50_ms'])} ms vs split "
        f"{_fmt(split['network_p50_ms'])} ms; offload encodes in {_fmt(offload['encode_p50_ms'], 2)} ms)"
    )
    return f"{text}; {could_split_win(c, device, offload['encode_p50_ms'] or 0.0, saved)}"


def could_split_win(c: dict, device_ms: float, offload_device_ms: float, saved_bytes: float) -> str:
    """Whether any split could beat offload in cell ``c``: the link time the saved bytes are worth at the cell's
    rate against the device time split spends beyond offload's encoder."""
    if not c.get("rate_mbps"):
        return "no fixed rate to weigh the saved bytes against"
    link_ms = saved_bytes * 8 / (c["rate_mbps"] * 1e3)
    extra_ms = device_ms - offload_device_ms
    if link_ms > extra_ms:
        return (
            f"split could win: the saved bytes are worth {link_ms:,.1f} ms at {c['rate_mbps']:g} Mbps, more than the "
            f"{extra_ms:,.1f} ms more it spends on the device, so the loss is in this run's other stages"
        )
    return (
        f"no split could win here: the saved bytes are worth {link_ms:,.1f} ms at {c['rate_mbps']:g} Mbps, less "
        f"than the {extra_ms:,.1f} ms more split spends on the device (head + filter + encode vs offload's encode)"
    )


def targets(report: dict) -> list[str]:
    """The issue's targets, every sentence computed from this run."""
    summaries, cells = report["summary"], report.get("map") or []
    by_key = {_key(s): s for s in summaries}
    lines = []
    split_bytes = [s["bytes_per_sent_frame"] for s in summaries if s["mode"] == "split" and s["bytes_per_sent_frame"]]
    jpeg_bytes = [s["bytes_per_sent_frame"] for s in summaries if s["mode"] == "offload" and s["bytes_per_sent_frame"]]
    reference = next(
        (
            o
            for o in report.get("offload_sizes") or []
            if (o["format"], o["quality"], o["resize"]) == ("jpeg", 95, "model")
        ),
        None,
    )
    if split_bytes and reference:
        ratio = np.mean(split_bytes) / reference["bytes"]
        lines.append(
            f"- bytes: split sends {np.mean(split_bytes):,.0f} B per sent frame, JPEG q95 at the model's input size "
            f"{reference['bytes']:,.0f} B: {ratio:.3f}×"
            + (f"; the offload runs sent {np.mean(jpeg_bytes):,.0f} B per frame" if jpeg_bytes else "")
        )
    weak = [
        c for c in cells
        if c["device_cpu"] is not None and c["device_cpu"] <= 0.25 and not c["trace"]
        and c["rate_mbps"] is not None and c["rate_mbps"] <= 5 and c["split_mode"] is not None
    ]  # fmt: skip
    for rival in ("offload", "local"):
        key = f"split_beats_{rival}"
        judged = [c for c in weak if c[key] is not None]
        if not judged:
            continue
        won = [c for c in judged if c[key]]
        lines.append(
            f"- at <= 0.25 core and <= 5 Mbps split (or split+filter) beats {rival} in {len(won)} of {len(judged)} "
            f"cells (target: all)"
        )
        for c in judged:
            if not c[key]:
                lines.append(
                    f"  - {_cell_name(c)}: {c['split_mode']} {_fmt(c['p50_ms'][c['split_mode']])} ms vs {rival} "
                    f"{_fmt(c['p50_ms'][rival])} ms: {_why_split_loses(c, by_key, rival)}"
                )
    everywhere = [c for c in cells if c["split_mode"] is not None]
    if everywhere:
        both = [c for c in everywhere if c["split_beats_offload"] and c["split_beats_local"]]
        wins = Counter(c["best"] for c in cells)
        lines.append(
            f"- over the whole map ({len(cells)} cells) the fastest fixed mode is "
            + ", ".join(f"{m} in {n}" for m, n in wins.most_common())
            + f"; split (or split+filter) beats both offload and local in {len(both)}"
        )
    with_auto = [c for c in cells if "auto_ok" in c]
    if with_auto:
        ok = [c for c in with_auto if c["auto_ok"]]
        lines.append(
            f"- auto's p50 is within 10 % or 10 ms of the best fixed mode in {len(ok)} of {len(with_auto)} cells"
        )
        for c in with_auto:
            if not c["auto_ok"]:
                chosen = ", ".join(f"{m} {n}" for m, n in sorted((c.get("auto_chosen") or {}).items()))
                lines.append(
                    f"  - {_cell_name(c)}: auto {_fmt(c['p50_ms']['auto'])} ms vs {c['best']} "
                    f"{_fmt(c['p50_ms'][c['best']])} ms (frames by mode: {chosen})"
                )
    filt = [s for s in summaries if s["mode"] == "split+filter"]
    empty = report["settings"].get("empty_frames")
    if filt and empty is not None:
        skipped = sum(s["skipped"] for s in filt)
        frames = sum(s["frames"] for s in filt)
        settings = report["settings"]
        filters = [
            name
            for name, on in (
                ("the neural filter", settings.get("neural_filter", True)),
                (f"the background filter (threshold {settings.get('background_filter', 0):g})",
                 settings.get("background_filter", 0) > 0),
            )
            if on
        ]  # fmt: skip
        lines.append(
            f"- {' and '.join(filters)} skipped {skipped} of {frames} frames over the split+filter runs; the video "
            f"has {len(empty)} empty frames out of {settings['frames']} per run"
        )
    remote = [s for s in summaries if s["mode"] in REMOTE and s["overhead_p50_ms"] is not None]
    if remote:
        within = [s for s in remote if s["overhead_p50_ms"] <= 5 or (s["overhead_pct"] or 0) <= 5]
        worst = max(remote, key=lambda s: s["overhead_p50_ms"])
        below = sum(s.get("below_floor", 0) for s in summaries)
        line = (
            f"- runtime overhead p50 within 5 ms or 5 % of the floor: {len(within)} of {len(remote)} remote runs; "
            f"largest {worst['overhead_p50_ms']:,.1f} ms ({_fmt(worst['overhead_pct'])} %) for {worst['mode']} at "
            f"{_where(worst)}"
        )
        with_pct = [s for s in remote if s["overhead_pct"] is not None]
        if with_pct:  # the largest share of the floor is usually another run's (a fast link has a small floor)
            top = max(with_pct, key=lambda s: s["overhead_pct"])
            line += (
                f"; largest share of the floor {_fmt(top['overhead_pct'])} % ({top['overhead_p50_ms']:,.1f} ms) for "
                f"{top['mode']} at {_where(top)}"
            )
        lines.append(f"{line}; frames measured below their floor: {below}")
    split = [s for s in summaries if s["mode"] in ("split", "split+filter")]
    encode = [s["encode_p50_ms"] for s in split if s["encode_p50_ms"] is not None]
    decode = [s["server_decode_p50_ms"] for s in split if s["server_decode_p50_ms"] is not None]
    size = input_size(report)
    if encode and decode:
        lines.append(
            f"- quantize+zstd encode p50 {np.median(encode):.2f} ms (on the emulated device), server decode p50 "
            f"{np.median(decode):.2f} ms at this checkpoint's input size{f' ({size})' if size else ''}"
        )
    return lines


def device_speeds(report: dict) -> list[dict]:
    """Per device speed: the quota, local mode's p50 and fps, and the achieved speed relative to the fastest."""
    local = [s for s in report["summary"] if s["mode"] == "local" and s["device_cpu"] is not None]
    quotas = {q["device_cpu"]: q for q in (report.get("device_quota") or {}).get("quotas", [])}
    if not local:
        return []
    top = max(local, key=lambda s: s["device_cpu"])
    out = []
    for s in sorted(local, key=lambda s: -s["device_cpu"]):
        fps = 1000 / s["mean_ms"] if s["mean_ms"] else None
        top_fps = 1000 / top["mean_ms"] if top["mean_ms"] else None
        relative = fps / top_fps if fps and top_fps else None
        out.append(
            {
                "device_cpu": s["device_cpu"],
                "setting": quotas.get(s["device_cpu"], {}).get("setting", "-"),
                "local_p50_ms": s["p50_ms"],
                "local_fps": round(fps, 3) if fps else None,
                "relative_speed": round(relative, 3) if relative else None,
                "expected": round(s["device_cpu"] / top["device_cpu"], 3),
            }
        )
    return out


def schedule_steps(report: dict) -> tuple[list[dict], list[dict]]:
    """For a ``--schedule`` run: p50 per mode in each step of the schedule, and each of auto's switches with the
    frames it took after the last rate change (frames started since the change, the switching frame included)."""
    text = report["settings"].get("schedule")
    if not text:
        return [], []
    steps = RateSchedule.parse(text).steps
    rows = [r for r in report["rows"] if r["error"] is None and r["start_s"] is not None and r["window"] == 1]
    out = []
    for (start, rate), (end, _) in itertools.pairwise(steps):
        cell = {"from_s": start, "to_s": end, "rate_mbps": rate}
        for mode in dict.fromkeys(r["mode"] for r in rows):
            values = [r["total_ms"] for r in rows if r["mode"] == mode and start <= r["start_s"] < end]
            cell[mode] = _pct(values, 50)
        out.append(cell)
    switches = []
    auto = sorted((r for r in rows if r["mode"] == "auto"), key=lambda r: r["start_s"])
    for run in (r for r in report["runs"] if r["mode"] == "auto" and r["window"] == 1):
        for frame, before, after in run.get("switches") or []:
            at = next((r["start_s"] for r in auto if r["frame"] == frame), None)
            if at is None:
                continue
            change = max((t for t, _ in steps[:-1] if t <= at), default=0.0)
            after_change = sum(1 for r in auto if change <= r["start_s"] <= at)
            switches.append({"frame": frame, "at_s": at, "from": before, "to": after, "change_at_s": change,
                             "frames_after_change": after_change if change > 0 else None})  # fmt: skip
    return out, switches


def _cell_text(c: dict) -> str:
    return f"**{c['best']}** ×{c['margin']:.2f}" if c["margin"] else f"**{c['best']}**"


def markdown(report: dict) -> str:
    """bench.md: setup, device speeds, the crossover map, targets, the per-run table, accuracy, plots."""
    s, window = report["settings"], report["settings"]["window"]
    machine, emulator = report["machine"], report["emulator"]
    quota = report.get("device_quota") or {}
    load_end = machine.get("load_average_end")
    offload = s.get("offload") or f"JPEG q{s['jpeg_quality']}"
    lines = [
        f"# split-bench: `{shown_path(report['checkpoint'])}`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}; device {machine['client_threads']} torch thread(s), server "
        f"{machine['server_threads']} thread(s) on {machine['server_device']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}"
        + (f", at the end {', '.join(f'{v:.2f}' for v in load_end)}" if load_end else "")
        + (f"; wall time {machine['wall_s'] / 60:.1f} min" if machine.get("wall_s") else "")
        + ".",
        "",
        f"Emulator: {emulator['name']}: {emulator['description']}."
        + (f" netem not used: {emulator['netem_unavailable']}." if emulator["netem_unavailable"] else ""),
        "",
        "Device: "
        + (
            f"a child process under a CPU quota ({quota['mechanism']}) of "
            + ", ".join(f"{c:g}" for c in s["device_cpu"])
            + " core(s), one speed after another: head, filter, encode, JPEG, local tail and the client's gRPC "
            "threads; the edge server and the link shaper run outside the quota."
            if quota.get("mechanism")
            else "a child process at full speed (no --device-cpu), sharing the CPU with the server."
        )
        + (
            f" Head runtime: {s['runtime']}; local mode runs the torch head and tail, auto chooses between split "
            "and offload."
            if s.get("runtime", "torch") != "torch"
            else ""
        ),
        "",
        f"Frames: {s['frames']} per run from {s['source']} ({s['frame_size']})"
        + (f", {len(s['empty_frames'])} of them without objects" if s.get("empty_frames") is not None else "")
        + (f", cycled until the schedule ({s['schedule']} Mbps:s) ends" if s.get("schedule") else "")
        + f", {s['warmup']} warm-up frame(s) per run (auto: 3, its first try of each mode); RTT {s['rtt_ms']:g} ms, "
        f"jitter {s['jitter_ms']:g} ms, loss {s['loss']:g}; offload: {offload}. "
        "Latency from one frame at a time (window 1)"
        + (f"; throughput with window 1 and window {window} (pipelined)." if s.get("stream", True) else "."),
    ]
    speeds = device_speeds(report)
    if speeds:
        lines += [
            "",
            "## Device speed",
            "",
            "Achieved speed = local mode's frames per second relative to the fastest device setting (expected: the "
            "ratio of the quotas).",
            "",
            "| device (cores) | quota | local p50 ms | local fps | achieved speed | expected |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {d['device_cpu']:g} | {d['setting']} | {_fmt(d['local_p50_ms'])} | {_fmt(d['local_fps'], 2)} "
            f"| {_fmt(d['relative_speed'], 3)} | {d['expected']:.3f} |"
            for d in speeds
        ]
    cells = report.get("map") or []
    if cells:
        modes = [m for m in (*FIXED, "auto") if any(m in c["p50_ms"] for c in cells)]
        lines += [
            "",
            "## Crossover map",
            "",
            "p50 end-to-end ms per mode (p95 in `cells.csv`); best = fastest fixed mode, ×margin = the runner-up's p50 "
            "/ the best's; floor = the best mode's physical floor p50; auto: within 10 % or 10 ms of the best?",
            "",
            "| device | link | best | " + " | ".join(modes) + " | floor | split beats offload | split beats local "
            "| auto ok |",
            "|---|---|---|" + "---|" * len(modes) + "---|---|---|---|",
        ]
        for c in cells:
            device = "full" if c["device_cpu"] is None else f"{c['device_cpu']:g}"
            yes = {True: "yes", False: "no", None: "-"}
            lines.append(
                f"| {device} | {c['link']} | {_cell_text(c)} | "
                + " | ".join(_fmt(c["p50_ms"].get(m)) for m in modes)
                + f" | {_fmt(c['floor_p50_ms'].get(c['best']))} | {yes[c['split_beats_offload']]} "
                f"| {yes[c['split_beats_local']]} | {yes[c.get('auto_ok')]} |"
            )
    steps, switches = schedule_steps(report)
    if steps:
        modes = [k for k in steps[0] if k not in ("from_s", "to_s", "rate_mbps")]
        lines += [
            "",
            "## Link-rate schedule",
            "",
            "p50 end-to-end ms of the frames that started in each step of the schedule; auto's switches, with the "
            "number of frames auto started since the last rate change up to and including the switching frame.",
            "",
            "| step | uplink | " + " | ".join(modes) + " |",
            "|---|---|" + "---|" * len(modes),
        ]
        lines += [
            f"| {st['from_s']:g}-{st['to_s']:g} s | {st['rate_mbps']:g} Mbps | "
            + " | ".join(_fmt(st[m]) for m in modes)
            + " |"
            for st in steps
        ]
        lines += [""] + [
            f"- auto: frame {w['frame']} at {w['at_s']:.1f} s: {w['from']} -> {w['to']}"
            + (
                f" ({w['frames_after_change']} frame(s) after the change at {w['change_at_s']:g} s)"
                if w["frames_after_change"] is not None
                else " (its first decision)"
            )
            for w in switches
        ]
    found = targets(report)
    lines += ["", "## Targets", "", *(found or ["- nothing to compare"])]
    sizes = report.get("offload_sizes") or []
    if sizes:
        lines += [
            "",
            "## Offload encodings of these frames",
            "",
            "Mean bytes per frame of each offload encoding of the benchmark's frames (model size: resized to the "
            "model's input first, as the offload client does by default).",
            "",
            "| encoding | resized to | bytes/frame | / JPEG q95 at model size |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['format'].upper() if o['format'] == 'jpeg' else 'WebP'} q{o['quality']} | {o['resize']} "
            f"| {o['bytes']:,.0f} | {o['ratio_to_jpeg95_model']:.3f} |"
            for o in sizes
        ]
    lines += [
        "",
        "## Every run",
        "",
        "End-to-end (e2e) percentiles over the frames that did not fail; floor = device stages + request bytes over "
        "the uplink + RTT + server time + response bytes over the downlink (on a trace: the trace's delivery "
        "opportunities from the send time); overhead = e2e - floor (p50 of per-frame values). Stage columns are p50 "
        "ms; network = reply time minus server time. Bytes: protobuf payload per frame (skipped frames count 0), "
        "and bytes the emulator counted each way.",
        "",
        "| device | mode | link | frames (skipped/failed) | bytes/frame | wire up/down B | e2e p50 | p95 | floor p50 "
        f"| overhead p50 | head | encode | network | server decode | tail | fps w1 | fps w{window} | auto chose |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        pct = f" ({_fmt(r['overhead_pct'])} %)" if r["overhead_pct"] is not None else ""
        wire = "-"
        if r["wire_up_per_frame"] is not None:
            wire = f"{r['wire_up_per_frame']:,.0f}/{r['wire_down_per_frame']:,.0f}"
        chosen = ", ".join(f"{m} {n}" for m, n in sorted((r.get("chosen") or {}).items())) or "-"
        device = "full" if r.get("device_cpu") is None else f"{r['device_cpu']:g}"
        lines.append(
            f"| {device} | {r['mode']} | {r['link']} | {r['frames']} ({r['skipped']}/{r['failed']}) "
            f"| {_fmt(r['bytes_per_frame'], 0)} "
            f"| {wire} | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['floor_p50_ms'])} "
            f"| {_fmt(r['overhead_p50_ms'])}{pct} | {_fmt(r['head_p50_ms'])} | {_fmt(r['encode_p50_ms'], 2)} "
            f"| {_fmt(r['network_p50_ms'])} | {_fmt(r['server_decode_p50_ms'], 2)} | {_fmt(r['tail_p50_ms'])} "
            f"| {_fmt(r['fps_window1'], 2)} | {_fmt(r.get(f'fps_window{window}'), 2)} | {chosen} |"
        )
    lines += ["", "## Accuracy against bytes per frame", ""]
    if report["accuracy"]:
        lines += [
            "bbox AP on the synthetic validation set (160×160 images: the model's input size, so every offload point "
            "is at model resolution) from `split-eval --json` results; split bytes are the mean payload of the "
            "frames the filter sent, offload bytes the mean encoded size.",
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
    """bench.csv, cells.csv, bench.json, bench.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in report["rows"])
    summaries, window = report["summary"], report["settings"]["window"]
    with open(out / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CELL_COLUMNS)
        writer.writeheader()
        for s in summaries:
            row = {k: s.get(k) for k in CELL_COLUMNS}
            row["fps_stream"] = s.get(f"fps_window{window}")
            row["chosen"] = " ".join(f"{m}:{n}" for m, n in sorted((s.get("chosen") or {}).items()))
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    devices = sorted({s["device_cpu"] for s in summaries if s["device_cpu"] is not None})
    slowest = devices[0] if devices else None
    shown = [s for s in summaries if s["device_cpu"] == slowest and not s["schedule"]]
    note = report["settings"]["link_note"] + (f", device {slowest:g} core" if slowest is not None else "")
    names = []
    if report.get("map") and len({(c["device_cpu"], c["link"]) for c in report["map"]}) > 1:
        plots.crossover_map(report["map"], out / "crossover.png", report["settings"]["link_note"])
        names.append("crossover.png")
    if any(s["schedule"] for s in summaries):
        steps = RateSchedule.parse(report["settings"]["schedule"]).steps if report["settings"].get("schedule") else ()
        plots.timeline(report["rows"], out / "timeline.png", report["settings"]["link_note"], steps)
        names.append("timeline.png")
    if any(not s["schedule"] for s in summaries):
        plots.latency_vs_rate(shown, out / "latency_vs_rate.png", note)
        plots.bytes_per_frame(report["bytes"], out / "bytes_per_frame.png")
        plots.stage_breakdown(shown, out / "stage_breakdown.png")
        plots.throughput_vs_rate(shown, window, out / "throughput_vs_rate.png")
        names += ["latency_vs_rate.png", "bytes_per_frame.png", "stage_breakdown.png", "throughput_vs_rate.png"]
    if report["accuracy"]:
        plots.ap_vs_bytes(report["accuracy"], out / "ap_vs_bytes.png")
        names.append("ap_vs_bytes.png")
    report["plots"] = names
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(report))
