"""The ``split-bench`` plots, drawn on matplotlib's Agg canvas (no display, no global pyplot state).

Each function takes the summaries (or accuracy points) that :mod:`splitdet.benchmarks.bench` computes and writes one
PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

MODE_COLORS = {
    "local": "tab:gray",
    "offload": "tab:red",
    "split": "tab:blue",
    "split+filter": "tab:green",
    "auto": "black",
}
PART_COLORS = {
    "head": "tab:blue",
    "filter": "tab:cyan",
    "encode": "tab:purple",
    "network": "tab:orange",
    "server": "tab:red",
    "device tail": "tab:brown",
    "other": "tab:gray",
}
REMOTE = ("offload", "split", "split+filter", "auto")


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _rate_axis(ax: Axes, summaries: list[dict]) -> None:
    """Log-scaled uplink rate with a labelled tick at every rate that was run."""
    rates = sorted({s["rate_mbps"] for s in summaries if s["rate_mbps"] is not None})
    if rates:
        ax.set_xscale("log")
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("uplink rate (Mbit/s)")


def _bytes_label(value: float, _position: int) -> str:
    """Tick label of a log bytes axis: every decade and the 2x and 5x ticks between."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:,.0f}" if leading in (1, 2, 5) else ""


def _by_rate(summaries: list[dict], mode: str, key: str) -> list[dict]:
    """Fixed-rate summaries of ``mode`` that have ``key``, by rate."""
    group = [s for s in summaries if s["mode"] == mode and not s["trace"] and s.get(key) is not None]
    return sorted(group, key=lambda s: s["rate_mbps"])


def _local(summaries: list[dict]) -> dict | None:
    return next((s for s in summaries if s["mode"] == "local"), None)


def latency_vs_rate(summaries: list[dict], path: Path, note: str) -> None:
    """End-to-end p50 (line), p50..p95 (band) and the physical floor (dashed) against the uplink rate, per mode."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for mode in REMOTE:
        group = _by_rate(summaries, mode, "p50_ms")
        color = MODE_COLORS[mode]
        if group:
            x = [s["rate_mbps"] for s in group]
            ax.plot(x, [s["p50_ms"] for s in group], "o-", color=color, label=f"{mode} p50")
            ax.fill_between(x, [s["p50_ms"] for s in group], [s["p95_ms"] for s in group], color=color, alpha=0.15)
            ax.plot(x, [s["floor_p50_ms"] for s in group], "--", color=color, lw=1, label=f"{mode} floor")
        for s in (s for s in summaries if s["mode"] == mode and s["trace"] and s["p50_ms"] is not None):
            ax.plot(s["rate_mbps"], s["p50_ms"], "*", color=color, ms=12, label=f"{mode} {s['link']} (mean rate)")
    local = _local(summaries)
    if local is not None and local["p50_ms"] is not None:
        ax.axhline(local["p50_ms"], color=MODE_COLORS["local"], ls=":", label="local p50 (no link)")
    _rate_axis(ax, summaries)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(f"Latency per frame: p50, band to p95, dashed: physical floor ({note})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def bytes_per_frame(rows: list[dict], path: Path) -> None:
    """Bytes per frame of each remote mode: payload over all frames, over sent frames, and counted on the link."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    bars = (("payload", "payload, all frames"), ("payload_sent", "payload, sent frames"), ("wire_up", "on the link"))
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        xs = [j + (i - 1) * width for j, row in enumerate(rows) if row[key] is not None]
        values = [row[key] for row in rows if row[key] is not None]
        drawn = ax.bar(xs, values, width, label=label, alpha=0.5 + 0.25 * (i == 0))
        ax.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(rows)), [row["mode"] for row in rows])
    ax.set_ylabel("bytes per frame (uplink)")
    ax.set_title("Bytes per frame (mean over all links)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def stage_breakdown(summaries: list[dict], path: Path) -> None:
    """Stacked mean time per component for each mode and link; the bars add up to the mean end-to-end time."""
    group = [s for s in summaries if s["breakdown_ms"]]
    fig = Figure(figsize=(max(6.0, 0.5 * len(group) + 2), 5))
    ax = fig.subplots()
    bottoms = [0.0] * len(group)
    for part, color in PART_COLORS.items():
        values = [s["breakdown_ms"].get(part, 0.0) for s in group]
        if any(values):
            label = "server (queue, decode, tail, encode)" if part == "server" else part
            ax.bar(range(len(group)), values, 0.7, bottom=bottoms, color=color, label=label)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xticks(range(len(group)), [f"{s['mode']}\n{s['link']}" for s in group], rotation=60, fontsize=7)
    ax.set_ylabel("mean time per frame (ms)")
    ax.set_title("Where the time goes (mean per frame)", fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def throughput_vs_rate(summaries: list[dict], window: int, path: Path) -> None:
    """Frames per second against the uplink rate: one frame at a time (dashed) and pipelined (solid)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    streaming = f"fps_window{window}"
    for mode in REMOTE:
        color = MODE_COLORS[mode]
        for key, style, label in (("fps_window1", "o--", "window 1"), (streaming, "o-", f"window {window}")):
            group = _by_rate(summaries, mode, key)
            if group:
                ax.plot([s["rate_mbps"] for s in group], [s[key] for s in group], style, color=color,
                        label=f"{mode}, {label}")  # fmt: skip
    local = _local(summaries)
    if local is not None:
        for key, style in (("fps_window1", "--"), (streaming, "-")):
            if local.get(key) is not None:
                label = f"local, window {key.removeprefix('fps_window')}"
                ax.axhline(local[key], color=MODE_COLORS["local"], ls=style, lw=1, label=label)
    _rate_axis(ax, [s for s in summaries if s["mode"] != "local"])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("frames per second")
    ax.set_title("Streaming throughput, pipelining off (window 1) and on", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def ap_vs_bytes(points: list[dict], path: Path) -> None:
    """bbox AP against bytes per frame: offload (JPEG qualities) and split (channel counts); local as a line (the
    teacher's only, when there is one: each student's local AP is next to its split point)."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    markers = {"offload": ("s", MODE_COLORS["offload"]), "split": ("o", MODE_COLORS["split"])}
    for kind, (marker, color) in markers.items():
        group = [p for p in points if p["kind"] == kind]
        if group:
            ax.scatter([p["bytes"] for p in group], [p["ap"] for p in group], marker=marker, color=color, label=kind)
            for p in group:
                ax.annotate(p["label"], (p["bytes"], p["ap"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    styles = [":", "-.", "--", (0, (1, 3))]
    local = [p for p in points if p["kind"] == "local"]
    local = [p for p in local if p["model"] == "teacher"] or local
    for i, p in enumerate(local):
        ax.axhline(
            p["ap"], color=MODE_COLORS["local"], ls=styles[i % len(styles)], label=f"{p['label']}, sends nothing"
        )
    if any(p["bytes"] > 0 for p in points):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
        ax.xaxis.set_minor_formatter(FuncFormatter(_bytes_label))
    ax.margins(x=0.25)
    ax.set_xlabel("bytes per frame")
    ax.set_ylabel("bbox AP (synthetic validation set)")
    ax.set_title("Accuracy against bytes per frame", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    _save(fig, path)


def crossover_map(cells: list[dict], path: Path, note: str) -> None:
    """Heat map over device speed (rows) x link (columns): the colour is the fastest fixed mode, its shade how far
    ahead it is (runner-up p50 / best p50); each cell names the winner, the margin and auto's verdict."""
    from matplotlib.colors import to_rgb

    devices = sorted({c["device_cpu"] for c in cells}, key=lambda d: -(d or 1e9))
    links: list[str] = []
    for c in sorted(cells, key=lambda c: (c["trace"], c["rate_mbps"] or 0)):
        if c["link"] not in links:
            links.append(c["link"])
    fig = Figure(figsize=(1.6 * len(links) + 2.5, 1.0 * len(devices) + 2))
    ax = fig.subplots()
    for c in cells:
        x, y = links.index(c["link"]), devices.index(c["device_cpu"])
        strength = min(1.0, ((c["margin"] or 1.0) - 1.0) / 1.0)  # x2 or more: full colour
        base = to_rgb(MODE_COLORS[c["best"]])
        color = tuple(1 - (0.25 + 0.75 * strength) * (1 - v) for v in base)
        ax.add_patch(Rectangle((x, y), 1, 1, color=color))
        text = f"{c['best']}\n×{c['margin']:.2f}" if c["margin"] else c["best"]
        if "auto_ok" in c:
            text += f"\nauto {'ok' if c['auto_ok'] else 'LOSES'} ({c['auto_vs_best_ms']:+.0f} ms)"
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(links))
    ax.set_ylim(0, len(devices))
    ax.set_xticks([i + 0.5 for i in range(len(links))], [lk.replace("trace ", "trace\n") for lk in links], fontsize=7)
    ax.set_yticks(
        [i + 0.5 for i in range(len(devices))], ["full" if d is None else f"{d:g} core" for d in devices], fontsize=8
    )
    ax.set_xlabel("link (uplink rate)")
    ax.set_ylabel("device speed (CPU quota)")
    ax.set_title(f"Fastest mode by p50 (×: runner-up / best) ({note})", fontsize=9)
    _save(fig, path)


def timeline(rows: list[dict], path: Path, note: str, steps: tuple = ()) -> None:
    """A scheduled-link run: each frame's latency against its send time, per mode (auto coloured by the mode it
    chose), with the link rate on a second axis."""
    group = [r for r in rows if r["link"].startswith("schedule") and r["window"] == 1 and r["error"] is None]
    group = sorted((r for r in group if r["start_s"] is not None), key=lambda r: r["start_s"])
    fig = Figure(figsize=(10, 5.5))
    ax, modes_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for mode in REMOTE:
        own = [r for r in group if r["mode"] == mode]
        if not own:
            continue
        style = "-" if mode == "auto" else ":"
        ax.plot([r["start_s"] for r in own], [r["total_ms"] for r in own], style, color=MODE_COLORS[mode],
                lw=1.5 if mode == "auto" else 1, label=f"{mode} (fixed)" if mode != "auto" else "auto")  # fmt: skip
        if mode == "auto":
            for chosen in ("split", "offload", "local"):
                picked = [r for r in own if r["chosen"] == chosen]
                if picked:
                    ax.scatter([r["start_s"] for r in picked], [r["total_ms"] for r in picked], s=9,
                               color=MODE_COLORS[chosen], zorder=3, label=f"auto chose {chosen}")  # fmt: skip
            order = {"local": 0, "offload": 1, "split": 2}
            modes_ax.step([r["start_s"] for r in own], [order[r["chosen"]] for r in own], where="post", color="k")
            modes_ax.set_yticks(list(order.values()), list(order))
    rate_ax = ax.twinx()
    if steps:  # the schedule: (start second, Mbit/s), the last step marks its end
        rate_ax.step([t for t, _ in steps], [r for _, r in steps], where="post", color="tab:orange", alpha=0.5, lw=2)
    rate_ax.set_yscale("log")
    rate_ax.set_ylabel("uplink rate (Mbit/s)", color="tab:orange")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.set_title(f"Link-rate schedule: latency per frame and auto's mode ({note})", fontsize=9)
    modes_ax.set_xlabel("time since the link started (s)")
    modes_ax.set_ylabel("auto's mode", fontsize=8)
    modes_ax.grid(True, alpha=0.3)
    _save(fig, path)
