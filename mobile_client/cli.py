"""``mobile-client``: run a frame source through the split (or offload, local, auto) pipeline.

Exit status: 0 at the normal end, 1 when every frame failed, 2 for usage and setup errors (one line on
stderr), 130 after Ctrl-C (the summary is printed all the same). The command line is checked before torch is
imported, so ``--help`` and usage errors answer at once.

``--runtime onnx --head FILE`` runs the head exported by ``split-model export --format onnx`` with ONNX Runtime and
never imports torch (``pip install ".[device]"`` installs just that); local mode runs the tail on the device and
needs ``--runtime torch``; auto mode chooses between split and offload there.
"""

from __future__ import annotations

import argparse
import sys

from splitdet.common.codec_settings import QUANTIZATIONS
from splitdet.common.endpoint import DEFAULT_PORT
from splitdet.common.options import OptionsError, flag_message
from splitdet.mobile_client.background import DEFAULT_MAX_SKIPPED, DEFAULT_RATE
from splitdet.mobile_client.device_cpu import add_quota_argument, check_quota
from splitdet.mobile_client.settings import (
    CLIENT_MODES,
    DEFAULT_ATTEMPTS,
    DEFAULT_MAX_REUSED,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WINDOW,
    RUNTIMES,
    RunOptions,
    SetupError,
    add_offload_arguments,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobile-client", description="Stream frames to a splitdet edge server.")
    p.add_argument(
        "--server",
        metavar="TARGET",
        help=f"edge server, HOST[:PORT] (port {DEFAULT_PORT} when none is given), or replicas balanced round-robin: "
        "dns:///NAME:PORT (every address of NAME) or ipv4:HOST:P1,HOST:P2,... ; a frame on a replica that dies is "
        "sent again to another, a replica running another model is refused (default: none; required except in "
        "local mode)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index")
    src.add_argument("--video", metavar="PATH", help="video file")
    src.add_argument("--images", metavar="PATH|DIR|GLOB", help="one image, a directory of images, or a glob")
    src.add_argument("--synthetic", type=int, metavar="N", help="N frames of the synthetic video")
    p.add_argument(
        "--live",
        action="store_true",
        help="play --video at its own frame rate as a live source, like a camera: one frame in flight, the latest "
        "wins, frames that cannot be sent fresh are dropped (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default: %(default)s)")
    p.add_argument(
        "--static-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="share of the synthetic video's frames in static stretches of 10-30 frames (nothing moves, only the "
        "sensor noise changes) (default: %(default)s)",
    )
    p.add_argument(
        "--ckpt", metavar="PATH", help="client checkpoint, torch runtime (default: the bundled demo checkpoint)"
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="what runs the head: torch (a --ckpt checkpoint) or onnx (a --head file from `split-model export "
        "--format onnx`, run by onnxruntime + numpy, no torch: pip install '.[device]'); onnx supports split, "
        "offload and auto mode (default: %(default)s)",
    )
    p.add_argument("--head", metavar="FILE", help="ONNX head file, required with --runtime onnx (default: none)")
    p.add_argument(
        "--mode",
        choices=CLIENT_MODES,
        default="split",
        help="where the model runs; local runs the tail on the device too and needs torch (--runtime torch); auto "
        "chooses between split and offload on --runtime onnx (default: %(default)s)",
    )
    p.add_argument(
        "--filter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip frames the neural filter rejects (default: on when the checkpoint has a filter)",
    )
    p.add_argument(
        "--filter-threshold", type=float, metavar="P", help="keep frames with P(object) >= P (default: checkpoint's)"
    )
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="bottleneck quantization (default: checkpoint's)")
    add_offload_arguments(p)
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        metavar="S",
        help="report detections scoring >= S (default: %(default)s)",
    )
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames (default: the whole source)")
    p.add_argument(
        "--skip-static",
        type=float,
        default=0.0,
        metavar="T",
        help="video and camera sources, split frames (auto mode's too): when the bottleneck changed by less than T "
        "from the last frame sent (mean |difference| / mean |value| of that frame's bottleneck), send nothing and "
        "report that frame's detections, marked reused; 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--skip-static-max",
        type=int,
        default=DEFAULT_MAX_REUSED,
        metavar="N",
        help="with --skip-static, at most N frames in a row reuse one answer; the next one is sent "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--background-filter",
        type=float,
        default=0.0,
        metavar="T",
        help="fixed cameras, split frames (auto mode's too): skip a frame, reporting no detections, when its stem "
        "differs from the empty background by less than T (largest mean squared difference over 16x16-pixel cells); "
        "the background is learnt from the server's empty answers and the skipped frames; choose T with "
        "`python -m studies.filter_background`; 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--background-rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="R",
        help="with --background-filter, how much of each frame it learns from goes into the background "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--background-max-skipped",
        type=int,
        default=DEFAULT_MAX_SKIPPED,
        metavar="N",
        help="with --background-filter, at most N frames in a row are skipped; the next one is sent "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        metavar="N",
        help="most frames in flight for file sources (fewer when the server is slow, so that each frame can be "
        "answered within --timeout-s); 1 = unary calls (default: %(default)s)",
    )
    p.add_argument("--jsonl", metavar="OUT", help="write the per-frame JSON lines here (default: stdout)")
    p.add_argument("--save-vis", metavar="DIR", help="write annotated frames into DIR (default: none written)")
    p.add_argument(
        "--tls-ca", metavar="F", help="CA certificate (PEM) to verify the server; enables TLS (default: plaintext)"
    )
    p.add_argument(
        "--tls-cert", metavar="F", help="client certificate (PEM) for mutual TLS, with --tls-key (default: none)"
    )
    p.add_argument("--tls-key", metavar="F", help="private key (PEM) of --tls-cert (default: none)")
    p.add_argument(
        "--token-file",
        metavar="F",
        help="file holding the bearer token the server expects; sent as call credentials, needs TLS (default: none)",
    )
    p.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="send --token-file's token without TLS, in plaintext; for loopback tests (default: %(default)s)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="T",
        help="per-frame deadline (default: %(default)s)",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        metavar="N",
        help="tries per frame on a broken call (default: %(default)s)",
    )
    p.add_argument(
        "--auto-every",
        type=int,
        default=1,
        metavar="N",
        help="auto mode: re-evaluate every N frames (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the on-device model (default: torch's or onnxruntime's own choice)",
    )
    p.add_argument(
        "--device-cpu",
        type=float,
        metavar="F",
        help="emulate a weak device: hold this process to F cores once the model is loaded (default: no quota)",
    )
    add_quota_argument(p)
    return p


def run_options(args: argparse.Namespace) -> RunOptions:
    """The run the parsed command line describes (each flag's dest is a :class:`RunOptions` field); raises
    :class:`OptionsError` for values that cannot work."""
    return RunOptions(**vars(args))


def parse(argv: list[str] | None = None) -> RunOptions:
    """Parse and check a command line (argparse exits on a usage error; bad values raise :class:`OptionsError`)."""
    return run_options(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        options = run_options(args)
        check_quota(options.device_cpu, options.device_quota)  # this machine can enforce the quota
    except OptionsError as e:
        print(f"mobile-client: error: {flag_message(e)}", file=sys.stderr)
        return 2
    except SetupError as e:
        print(f"mobile-client: error: {e}", file=sys.stderr)
        return 2
    from splitdet.mobile_client import runner  # torch and the model load only once the command line is known to be good

    return runner.run(options)
