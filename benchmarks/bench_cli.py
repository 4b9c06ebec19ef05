"""``split-bench`` command line: parsed onto :class:`splitdet.benchmarks.bench_options.BenchOptions` (which checks its
values) before torch is imported; :mod:`splitdet.benchmarks.bench` runs it."""

from __future__ import annotations

import argparse
import sys

from splitdet.benchmarks.bench_options import BENCH_MODES, DEFAULT_RATES, EMULATORS, EVAL_GLOB, BenchOptions
from splitdet.common.extras import require
from splitdet.common.options import OptionsError, flag_message
from splitdet.mobile_client.device_cpu import add_quota_argument, check_quota
from splitdet.mobile_client.settings import SetupError, add_offload_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="split-bench",
        description="Latency, bytes and throughput of local, offload, split, split+filter and auto over emulated links "
        "and emulated device speeds: which mode wins where.",
    )
    p.add_argument("--ckpt", metavar="PATH", help="student checkpoint for both sides (default: the demo checkpoint)")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="what runs the device's head: torch (the checkpoint) or onnx (--head FILE, the torch-free client's "
        "ONNX Runtime head; local mode, which needs the tail on the device, stays torch and auto chooses between "
        "split and offload) (default: %(default)s)",
    )
    p.add_argument(
        "--head",
        nargs="+",
        metavar="FILE",
        help="with --runtime onnx: the ONNX head exported from --ckpt (split-model export --format onnx [--int8]); "
        "with several (a float32 and an int8 head, say), one whole benchmark per head, each written to "
        "--out/<head file name> (default: none)",
    )
    p.add_argument(
        "--rates",
        default=DEFAULT_RATES,
        metavar="LIST",
        help="uplink rates in Mbit/s, comma list (default: %(default)s)",
    )
    p.add_argument("--down-mbps", type=float, metavar="R", help="downlink rate (default: each uplink rate)")
    p.add_argument(
        "--rtt-ms", type=float, default=20.0, help="round-trip time added by the link (default: %(default)s)"
    )
    p.add_argument("--jitter-ms", type=float, default=0.0, help="± jitter on each one-way delay (default: %(default)s)")
    p.add_argument(
        "--loss", type=float, default=0.0, help="packet loss probability per direction (default: %(default)s)"
    )
    p.add_argument(
        "--trace",
        nargs="+",
        metavar="FILE",
        help="also run a mahimahi trace link: UPLINK [DOWNLINK], userspace only (default: none)",
    )
    p.add_argument(
        "--trace-window-s",
        type=float,
        metavar="S",
        help="spread a trace run's frames over its first S seconds (default: the trace's whole period)",
    )
    p.add_argument(
        "--schedule",
        metavar="MBPS:S,...",
        help="instead of --rates: one link whose rate changes, e.g. 20:20,0.5:20,20:20; frames cycle until it "
        "ends (default: none)",
    )
    p.add_argument(
        "--device-cpu",
        metavar="F[,F...]",
        help="run the device (head, filter, encode, JPEG, local tail, its gRPC link) under a CPU quota of F cores, "
        "once per F; the server keeps its cores (default: none, the device runs at full speed)",
    )
    add_quota_argument(p)
    p.add_argument("--modes", metavar="LIST", help=f"comma list of {', '.join(BENCH_MODES)} (default: all)")
    p.add_argument("--frames", type=int, default=30, metavar="N", help="frames per run (default: %(default)s)")
    p.add_argument(
        "--warmup", type=int, default=2, metavar="N", help="unrecorded frames before each run (default: %(default)s)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="PATH|DIR|GLOB", help="frames from image files (default: the synthetic video)")
    src.add_argument(
        "--synthetic", type=int, metavar="N", help="synthetic video of N frames (default: --frames frames)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default: %(default)s)")
    p.add_argument(
        "--empty-ratio",
        type=float,
        default=0.5,
        metavar="R",
        help="share of the synthetic video's frames without objects, in runs (default: %(default)s)",
    )
    p.add_argument(
        "--empty-runs",
        type=int,
        default=4,
        metavar="N",
        help="the synthetic video's runs with objects last N..2N frames (default: %(default)s)",
    )
    add_offload_arguments(p)
    p.add_argument(
        "--background-filter",
        type=float,
        default=0.0,
        metavar="T",
        help="split+filter also skips the frames that match the fixed camera's empty background (mobile-client "
        "--background-filter T); with it, split+filter runs on checkpoints without a neural filter too; 0 = off "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--window", type=int, default=4, metavar="N", help="frames in flight when streaming (default: %(default)s)"
    )
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also a streaming run (--window frames in flight) per mode and fixed-rate link (default: %(default)s)",
    )
    p.add_argument(
        "--emulator",
        choices=EMULATORS,
        default="auto",
        help="link emulator; auto uses netem where it works (default: %(default)s)",
    )
    p.add_argument("--eval-json", nargs="+", metavar="PATH", help=f"split-eval results (default: {EVAL_GLOB})")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=1, metavar="N", help="client torch or onnxruntime threads (default: %(default)s)"
    )
    p.add_argument(
        "--server-threads", type=int, default=1, metavar="N", help="server torch threads (default: %(default)s)"
    )
    p.add_argument(
        "--server-device", default="auto", help="edge-server --device: auto, cpu, cuda, cuda:N (default: %(default)s)"
    )
    p.add_argument(
        "--server-max-batch",
        type=int,
        default=1,
        metavar="N",
        help="edge-server --max-batch (e.g. 8 on a GPU) (default: %(default)s)",
    )
    p.add_argument(
        "--timeout-s", type=float, default=30.0, metavar="T", help="per-frame deadline (default: %(default)s)"
    )
    return p


TUPLES = ("head", "trace", "eval_json")  #: nargs="+" flags: lists in argparse, tuples in the frozen options


def bench_options(args: argparse.Namespace) -> BenchOptions:
    """The benchmark the parsed command line describes (each flag's dest is a :class:`BenchOptions` field); raises
    :class:`OptionsError` for values that cannot work."""
    values = vars(args)
    return BenchOptions(**{k: tuple(v) if k in TUPLES and v is not None else v for k, v in values.items()})


def parse(argv: list[str] | None = None) -> BenchOptions:
    """Parse and check a command line (argparse exits on a usage error; bad values raise :class:`OptionsError`)."""
    return bench_options(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        options = parse(argv)
        check_quota(options.device_cpu, options.device_quota)  # this machine can enforce the quota
        require("torch", "full", "split-bench")
    except SystemExit as e:
        return int(e.code or 0)
    except OptionsError as e:
        print(f"split-bench: error: {flag_message(e)}", file=sys.stderr)
        return 2
    except SetupError as e:
        print(f"split-bench: error: {e}", file=sys.stderr)
        return 2
    from splitdet.benchmarks import bench  # torch loads only once the command line is known to be good

    return bench.run(options, argv)
