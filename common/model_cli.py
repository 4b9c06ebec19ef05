"""``split-model``: create, inspect and import student checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitdet.common.architectures import ARCHS, BACKBONES
from splitdet.common.extras import require


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 800x1088, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a randomly initialised student checkpoint")
    p.add_argument("--arch", choices=ARCHS, required=True, help="detector")
    p.add_argument("--backbone", choices=BACKBONES, default="resnet50", help="ResNet backbone (default: %(default)s)")
    p.add_argument("--channels", type=int, required=True, help="bottleneck channels")
    p.add_argument("--num-classes", type=int, default=91, help="classes with background (default: %(default)s)")
    p.add_argument("--num-keypoints", type=int, default=17, help="keypoints, Keypoint R-CNN (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=800, help="transform's shorter side (default: %(default)s)")
    p.add_argument("--max-size", type=int, default=1333, help="transform's longest side (default: %(default)s)")
    p.add_argument("--with-filter", action="store_true", help="add an (untrained) neural filter (default: no filter)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (default: float32)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("path", type=Path, help="checkpoint")
    p.add_argument(
        "--input-size", type=_parse_size, help="HxW: report bottleneck shape, bytes and MACs (default: not reported)"
    )
    p = sub.add_parser(
        "export",
        help="copy a checkpoint for deployment (no optimizer state, optionally float16), or write its head as ONNX "
        "for the torch-free device client (mobile-client --runtime onnx --head FILE)",
    )
    p.add_argument("path", type=Path, help="checkpoint")
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--format",
        choices=("checkpoint", "onnx"),
        default="checkpoint",
        help="checkpoint: a .pt for both sides; onnx: the head (transform + stem, filter, encoder) as one ONNX file "
        "with the fingerprint, size rules, codec and class names in its metadata (default: %(default)s)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx only: quantize the encoder's convolutions to int8 (ONNX Runtime static QDQ), "
        "calibrated on --calibration frames (default: float32)",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=64,
        metavar="N",
        help="with --int8: calibration frames (default: %(default)s)",
    )
    calibration = p.add_mutually_exclusive_group()
    calibration.add_argument(
        "--calibration-config",
        type=Path,
        metavar="CONFIG",
        help="with --int8: the training config whose dataset (train split) gives the frames, e.g. the one the "
        "checkpoint was trained with (default: none)",
    )
    calibration.add_argument(
        "--calibration-images", type=Path, metavar="DIR", help="with --int8: a folder of images (default: none)"
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="store weights as float16, half the size; checkpoint only (default: float32)",
    )
    p = sub.add_parser("import-seed", help="convert a checkpoint of the seed's published zips")
    p.add_argument("seed", type=Path, help="the seed's checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require("torch", "full", "split-model")  # every subcommand reads or writes a torch checkpoint
    if args.command == "export":
        problem = None
        if args.format == "onnx" and args.half:
            problem = "--half applies to --format checkpoint only"
        elif args.int8 and args.format != "onnx":
            problem = "--int8 applies to --format onnx only"
        elif args.int8 and args.calibration_config is None and args.calibration_images is None:
            problem = "--int8 needs calibration frames: --calibration-config CONFIG or --calibration-images DIR"
        elif not args.int8 and (args.calibration_config or args.calibration_images):
            problem = "--calibration-config and --calibration-images go with --int8"
        elif args.calibration < 1:
            problem = "--calibration must be >= 1"
        if problem:
            print(f"split-model: error: {problem}", file=sys.stderr)
            return 2
    from splitdet.common import model_commands  # torch loads only once the command line is known to be good
    from splitdet.common.checkpoint import CheckpointError

    try:
        model_commands.COMMANDS[args.command](**{k: v for k, v in vars(args).items() if k != "command"})
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"split-model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
