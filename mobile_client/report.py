"""Per-frame JSON lines and the end-of-run summary table."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TextIO

import numpy as np

from splitdet.mobile_client.pipeline import FRAME_STAGES, FrameResult


def result_json(result: FrameResult) -> dict:
    """The JSON object of one frame (one line of the output)."""
    line = {
        "frame": result.index,
        "source": result.source,
        "mode": result.mode,
        "skipped": result.skipped,
        "dropped": result.dropped,
        "reused": result.reused,
        "sent_bytes": result.sent_bytes,
        "detections": result.detections,
        "timing_ms": result.timing_ms,
    }
    if result.reused:
        line["reused_from"] = result.reused_from
    if result.error is not None:
        line["error"] = result.error
    return line


class Report:
    """Collects results, writes one JSON line each to ``out``, and renders the summary."""

    def __init__(self, out: TextIO, mode: str) -> None:
        self.out = out
        self.mode = mode
        self.started = time.monotonic()
        self.frames = 0
        self.skipped = 0
        self.dropped = 0
        self.reused = 0
        self.failed = 0
        self.sent_bytes: list[int] = []
        self.modes: Counter[str] = Counter()
        self.stages: dict[str, list[float]] = {stage: [] for stage in FRAME_STAGES}

    def add(self, result: FrameResult) -> None:
        self.out.write(json.dumps(result_json(result)) + "\n")
        self.out.flush()
        self.frames += 1
        self.modes[result.mode] += 1
        if result.error is not None:
            self.failed += 1
            return
        if result.dropped:
            self.dropped += 1
            return
        self.skipped += result.skipped
        self.reused += result.reused
        self.sent_bytes.append(result.sent_bytes)
        for stage, ms in result.timing_ms.items():
            self.stages[stage].append(ms)

    @property
    def all_failed(self) -> bool:
        return self.failed > 0 and self.failed == self.frames - self.dropped

    def summary(self, interrupted: bool = False) -> str:
        """The summary table: counts, bytes per frame, p50/p95/mean per stage, frames per second."""
        elapsed = time.monotonic() - self.started
        fps = self.frames / elapsed if elapsed > 0 else 0.0
        sent = [n for n in self.sent_bytes if n > 0]
        mean_all = float(np.mean(self.sent_bytes)) if self.sent_bytes else 0.0
        mean_sent = float(np.mean(sent)) if sent else 0.0
        lines = [
            f"summary: mode {self.mode}, {self.frames} frames in {elapsed:.2f} s ({fps:.2f} fps)"
            + (", interrupted" if interrupted else ""),
            f"  frames {self.frames}  skipped {self.skipped}  dropped {self.dropped}  reused {self.reused}  "
            f"failed {self.failed}  bytes/frame {mean_all:.0f} (mean over {len(sent)} sent frames: {mean_sent:.0f})",
        ]
        if self.reused:
            lines.append(
                f"  static frames reused the last answer instead of being sent: {self.reused}, about "
                f"{self.reused * mean_sent:,.0f} bytes saved (each at the mean of the sent frames)"
            )
        if len(self.modes) > 1 or self.mode == "auto":
            lines.append("  frames by mode: " + ", ".join(f"{m} {n}" for m, n in sorted(self.modes.items())))
        lines.append(f"  {'stage':<14}{'frames':>8}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
        for stage in FRAME_STAGES:
            values = self.stages[stage]
            if values:
                p50, p95 = np.percentile(values, [50, 95])
                lines.append(f"  {stage:<14}{len(values):>8}{p50:>10.2f}{p95:>10.2f}{np.mean(values):>10.2f}")
        return "\n".join(lines)
