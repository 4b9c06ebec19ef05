"""What ``split-bench`` runs, checked where it is defined (no torch, so a command line is checked before torch
loads): :class:`BenchOptions` refuses values that cannot work with an
:class:`splitdet.common.options.OptionsError` naming the field; ``split-bench`` maps its flags onto the
fields (``--`` + the field with ``-``) and adds the flag to the message."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from splitdet.benchmarks.shaper import RateSchedule
from splitdet.common.options import OptionsError, check
from splitdet.mobile_client.settings import OFFLOAD_FORMATS, OFFLOAD_RESIZE, QUOTA_MECHANISMS, RUNTIMES

BENCH_MODES = ("local", "offload", "split", "split+filter", "auto")
EVAL_GLOB = "studies/results/*eval*.json"  #: split-eval results, relative to the working directory
EMULATORS = ("auto", "userspace", "netem")
DEFAULT_RATES = "0.5,1,2,5,10,50"


def _rates(text: str) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class BenchOptions:
    """One ``split-bench`` run: the checkpoint and head, the links (``rates`` or a ``schedule``, plus ``trace``),
    the device speeds, the modes, the frames, the offload and filter settings, the server and the outputs."""

    ckpt: str | None = None  #: student checkpoint for both sides; None: the demo checkpoint
    runtime: str = "torch"  #: what runs the device's head
    head: tuple[str, ...] | None = None  #: ONNX heads (runtime onnx); one whole benchmark per head
    rates: str = DEFAULT_RATES  #: uplink rates in Mbit/s, comma list
    down_mbps: float | None = None  #: downlink rate; None: each uplink rate
    rtt_ms: float = 20.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    trace: tuple[str, ...] | None = None  #: mahimahi traces: UPLINK [DOWNLINK]
    trace_window_s: float | None = None
    schedule: str | None = None  #: MBPS:S,... : one link whose rate changes, instead of rates
    device_cpu: str | None = None  #: F[,F...] device cores, one run per F
    device_quota: str = "auto"
    modes: str | None = None  #: comma list out of BENCH_MODES; None: all
    frames: int = 30
    warmup: int = 2
    images: str | None = None  #: frames from image files; None: the synthetic video
    synthetic: int | None = None  #: frames of the synthetic video; None: frames
    seed: int = 0
    empty_ratio: float = 0.5
    empty_runs: int = 4
    jpeg_quality: int = 95
    offload_format: str = "jpeg"
    offload_resize: str = "model"
    background_filter: float = 0.0
    window: int = 4  #: frames in flight in the streaming run
    stream: bool = True
    emulator: str = "auto"
    eval_json: tuple[str, ...] | None = None  #: split-eval results; None: EVAL_GLOB
    out: str = "bench-results"
    threads: int = 1
    server_threads: int = 1
    server_device: str = "auto"
    server_max_batch: int = 1
    timeout_s: float = 30.0

    @property
    def up_rates(self) -> tuple[float, ...]:
        """The fixed uplink rates, Mbit/s (none with a schedule)."""
        return () if self.schedule else _rates(self.rates)

    @property
    def rate_schedule(self) -> RateSchedule | None:
        return RateSchedule.parse(self.schedule) if self.schedule else None

    def __post_init__(self) -> None:
        check(self.rtt_ms >= 0, "rtt_ms", f"must be >= 0, got {self.rtt_ms:g}")
        check(self.jitter_ms >= 0, "jitter_ms", f"must be >= 0, got {self.jitter_ms:g}")
        check(0.0 <= self.loss < 1.0, "loss", f"must be in [0, 1), got {self.loss:g}")
        check(self.down_mbps is None or self.down_mbps > 0, "down_mbps", f"must be positive, got {self.down_mbps}")
        check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        check(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", f"must be in 1..100, got {self.jpeg_quality}")
        check(self.window >= 2, "window", f"must be >= 2 (window 1 is the latency run), got {self.window}")
        check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        check(self.server_threads >= 1, "server_threads", f"must be >= 1, got {self.server_threads}")
        check(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s:g}")
        check(0.0 <= self.empty_ratio < 1.0, "empty_ratio", f"must be in [0, 1), got {self.empty_ratio:g}")
        check(self.empty_runs >= 1, "empty_runs", f"must be >= 1, got {self.empty_runs}")
        check(
            math.isfinite(self.background_filter) and self.background_filter >= 0.0,
            "background_filter",
            f"must be a finite number >= 0, got {self.background_filter}",
        )
        check(
            self.trace_window_s is None or self.trace_window_s > 0,
            "trace_window_s",
            f"must be positive, got {self.trace_window_s}",
        )
        check(not (self.schedule and self.trace), "schedule", "and trace are separate runs")
        check(self.server_max_batch >= 1, "server_max_batch", f"must be >= 1, got {self.server_max_batch}")
        check(self.runtime in RUNTIMES, "runtime", f"must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check(self.runtime != "onnx" or self.head is not None, "head", "runtime onnx needs a head file")
        check(self.head is None or self.runtime == "onnx", "head", "is for runtime onnx")
        check(
            self.head is None or len({Path(h).stem for h in self.head}) == len(self.head),
            "head",
            "files must have distinct names (each names its output folder)",
        )
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.server_device) is not None,
            "server_device",
            f"must be auto, cpu, cuda or cuda:N, got {self.server_device!r}",
        )
        check(
            self.offload_format in OFFLOAD_FORMATS,
            "offload_format",
            f"must be one of {', '.join(OFFLOAD_FORMATS)}, got {self.offload_format!r}",
        )
        check(
            self.offload_resize in OFFLOAD_RESIZE,
            "offload_resize",
            f"must be one of {', '.join(OFFLOAD_RESIZE)}, got {self.offload_resize!r}",
        )
        check(self.emulator in EMULATORS, "emulator", f"must be one of {', '.join(EMULATORS)}, got {self.emulator!r}")
        check(
            self.device_quota in QUOTA_MECHANISMS,
            "device_quota",
            f"must be one of {', '.join(QUOTA_MECHANISMS)}, got {self.device_quota!r}",
        )
        check(self.images is None or self.synthetic is None, "images", "and synthetic are separate sources")
        if self.schedule:
            try:
                RateSchedule.parse(self.schedule)
            except ValueError as e:
                raise OptionsError("schedule", str(e)) from None
        else:
            rates = _rates(self.rates)
            check(rates is not None, "rates", f"must be a comma list of numbers, got {self.rates!r}")
            check(all(r > 0 for r in rates), "rates", f"must be positive, got {self.rates!r}")
        check(
            self.trace is None or 1 <= len(self.trace) <= 2,
            "trace",
            "takes an uplink trace and optionally a downlink trace",
        )
        if self.modes is not None:
            modes = [m.strip() for m in self.modes.split(",") if m.strip()]
            check(
                bool(modes) and set(modes) <= set(BENCH_MODES) and len(set(modes)) == len(modes),
                "modes",
                f"must list distinct modes out of {', '.join(BENCH_MODES)}, got {self.modes!r}",
            )
        only_local = self.modes is not None and {m.strip() for m in self.modes.split(",") if m.strip()} == {"local"}
        check(
            bool(self.schedule) or bool(self.up_rates) or bool(self.trace) or only_local,
            "rates",
            "names no rate and there is no trace: no links to run",
        )
