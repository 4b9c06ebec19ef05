"""The crossover maps side by side: which mode wins each (device speed, link) cell with each client.

    python -m studies.crossover_compare \\
        --map "torch client, GHND 8-bit"=benchmarks/results/crossover/bench.json \\
        --map "ONNX client (int8 head), GHND 8-bit"=benchmarks/results/crossover_onnx/ghnd/bench.json \\
        --map "ONNX client (float32 head), entropic"=benchmarks/results/crossover_onnx/entropic/bench.json \\
        --out studies/results/crossover_compare

Reads ``split-bench``'s ``bench.json`` files (nothing is re-measured) and writes OUT.md / OUT.json: per cell each
map's p50 of offload, split (the faster of split and split+filter) and local and the fastest fixed mode; per map the
weak-device targets as :func:`splitdet.benchmarks.bench_report.targets` computes them from that run (split against
offload and local at <= 0.25 core and <= 5 Mbps, and, where split loses to offload, whether any split could win:
the link time the saved bytes are worth at the cell's rate against the device time split adds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from splitdet.benchmarks.bench_report import targets
from splitdet.benchmarks.paths import shown_args, write_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studies.crossover_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--map", action="append", required=True, metavar="NAME=BENCH_JSON", help="a map to compare")
    p.add_argument("--out", default="studies/results/crossover_compare", help="OUT.md and OUT.json")
    return p.parse_args(argv)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    maps = {}
    for item in args.map:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"crossover_compare: error: --map {item!r} is not NAME=EXISTING_BENCH_JSON", file=sys.stderr)
            return 2
        maps[name] = json.loads(Path(path).read_text()) | {"source": path}
    cells: dict[tuple, dict] = {}
    for name, report in maps.items():
        for c in report["map"]:
            cell = cells.setdefault(
                (c["device_cpu"], c["link"]),
                {"device_cpu": c["device_cpu"], "link": c["link"], "rate_mbps": c["rate_mbps"]},
            )
            split = c["split_mode"]
            cell[name] = {
                "offload": c["p50_ms"].get("offload"),
                "split": c["p50_ms"].get(split) if split else None,
                "split_mode": split,
                "local": c["p50_ms"].get("local"),
                "best": c["best"],
            }
    names = list(maps)
    command = shlex.join(shown_args(sys.argv[1:] if argv is None else argv))
    lines = [
        "# Crossover maps side by side",
        "",
        f"Command: `python -m studies.crossover_compare {command}`",
        "",
        "Maps (each one `split-bench` run; its command, machine and load are in its own bench.md):",
        "",
        *[f"- {name}: `{maps[name]['source']}` — `{maps[name]['command']}`" for name in names],
        "",
        "p50 ms per frame, window 1: offload / split (the faster of split and split+filter) / local, and the fastest "
        "fixed mode.",
        "",
        "| device | link | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    order = sorted(cells.items(), key=lambda kv: (-(kv[0][0] or 0), kv[1]["rate_mbps"] or float("inf")))
    for (device, link), cell in order:
        row = []
        for name in names:
            m = cell.get(name)
            row.append(
                "-" if m is None else f"{_ms(m['offload'])} / {_ms(m['split'])} / {_ms(m['local'])}: **{m['best']}**"
            )
        lines.append(f"| {device:g} core | {link} | " + " | ".join(row) + " |")
    summary = {}
    for name in names:
        computed = [t for t in targets(maps[name]) if t.startswith(("- at <= 0.25", "  - ", "- over the whole map"))]
        summary[name] = computed
        lines += ["", f"## {name}", "", *computed]
    write_report(args.out, {"maps": {n: maps[n]["source"] for n in names}, "cells": list(cells.values()),
                            "targets": summary}, "\n".join(lines) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
