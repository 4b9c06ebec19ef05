"""Write a SYNTHETIC mahimahi-format trace pair for exercising trace-driven links (no real network measured).

    python -m studies.synthetic_trace --out benchmarks/traces/synthetic-cellular

Real cellular traces (mahimahi's published ``TMobile-UMTS-driving.up``/``.down`` and the like) could not be
obtained on the machine these benchmarks ran on (no internet access), so the committed trace rows use this file
pair instead, named ``synthetic-*`` so that no report mistakes it for a measurement. The model: the rate changes
every ``--step-s`` seconds to a level drawn (seeded) from ``--up-levels`` (Mbit/s; the downlink 4x the uplink),
delivery opportunities of 1500 bytes are spaced evenly at that rate, and one outage of ``--outage-s`` seconds
(no opportunities) sits in the middle of the period. Give a real trace pair to ``split-bench --trace`` when you
have one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PACKET_BITS = 1500 * 8


def opportunities(levels_mbps: list[float], step_s: float, outage: tuple[float, float]) -> list[int]:
    """Millisecond timestamps of the delivery opportunities for a rate that is ``levels_mbps[i]`` in step i."""
    times: list[int] = []
    for i, mbps in enumerate(levels_mbps):
        start, end = i * step_s, (i + 1) * step_s
        t = start
        while t < end:
            if not outage[0] <= t < outage[1]:
                times.append(int(t * 1000) + 1)
            t += PACKET_BITS / (mbps * 1e6)
    times.append(int(len(levels_mbps) * step_s * 1000))  # the period: the last timestamp
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.synthetic_trace", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path prefix: writes PREFIX.up and PREFIX.down")
    p.add_argument("--period-s", type=float, default=24.0, help="trace period (default: %(default)s)")
    p.add_argument("--step-s", type=float, default=2.0, help="seconds between rate changes (default: %(default)s)")
    p.add_argument("--up-levels", default="0.25,0.5,1,2", help="uplink rate levels, Mbit/s (default: %(default)s)")
    p.add_argument("--outage-s", type=float, default=0.5, help="one outage in the middle (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the level sequence (default: %(default)s)")
    args = p.parse_args(argv)
    levels = [float(v) for v in args.up_levels.split(",")]
    steps = round(args.period_s / args.step_s)
    rng = np.random.default_rng(args.seed)
    up = [float(v) for v in rng.choice(levels, size=steps)]
    middle = args.period_s / 2
    outage = (middle, middle + args.outage_s)
    for suffix, rates in (("up", up), ("down", [4 * r for r in up])):
        path = Path(f"{args.out}.{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(str(t) for t in opportunities(rates, args.step_s, outage)) + "\n")
        print(f"wrote {path} (SYNTHETIC; mean {np.mean(rates):.2f} Mbit/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
