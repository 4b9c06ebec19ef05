"""``split-eval``: COCO AP, teacher fidelity, bytes per frame and filter statistics of a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitdet.common.codec_settings import QUANTIZATIONS
from splitdet.common.extras import require
from splitdet.distill.config import ConfigError, load_config


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _qualities(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"JPEG qualities must be integers, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="split-eval", description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint to evaluate (student or teacher)")
    p.add_argument("--config", required=True, help="training config whose dataset section names the data")
    p.add_argument("--teacher", help="teacher checkpoint: also score against its detections, fidelity (default: none)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="dataset split (default: %(default)s)")
    p.add_argument(
        "--quantization", type=_csv, default="none,per_tensor", help="comma list for split runs (default: %(default)s)"
    )
    p.add_argument(
        "--head",
        nargs="+",
        default=[],
        metavar="FILE",
        help="ONNX head files exported from --ckpt (split-model export --format onnx [--int8]): also split runs "
        "with each on the device side, run by ONNX Runtime as the client runs it (default: none)",
    )
    p.add_argument(
        "--no-filter", action="store_true", help="do not use the neural filter in split runs (default: use it)"
    )
    p.add_argument(
        "--jpeg", type=_qualities, default="", help="comma list of JPEG qualities to compare (default: none)"
    )
    p.add_argument(
        "--webp", type=_qualities, default="", help="comma list of WebP qualities to compare (default: none)"
    )
    p.add_argument(
        "--teacher-score",
        type=float,
        default=0.5,
        help="teacher detections kept as ground truth (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=1, help="images per forward pass in whole-model runs (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--json", dest="json_out", help="write the report as JSON (default: not written)")
    p.add_argument("--md", dest="md_out", help="write the markdown table (default: not written)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require("torch", "full", "split-eval")
    try:
        for q in args.quantization:
            if q not in QUANTIZATIONS:
                raise ConfigError(f"--quantization: unknown {q!r} ({', '.join(QUANTIZATIONS)})")
        for option, path in (("--ckpt", args.ckpt), ("--teacher", args.teacher)):
            if path is not None and Path(path).is_dir():
                raise FileNotFoundError(f"{option} {path} is a directory; give the checkpoint file inside it")
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{option}: checkpoint not found: {path}")
        for path in args.head:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--head: ONNX head not found: {path}")
        cfg = load_config(args.config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"split-eval: error: {e}", file=sys.stderr)
        return 2
    from splitdet.common.checkpoint import CheckpointError  # torch loads only once the command line is known to be good
    from splitdet.distill.dataset_config import build_dataset
    from splitdet.distill.evaluate import evaluate, format_markdown

    try:
        dataset, _ = build_dataset(cfg.dataset, args.split)
        report = evaluate(
            args.ckpt,
            dataset,
            teacher_ckpt=args.teacher,
            quantizations=args.quantization,
            use_filter=not args.no_filter,
            jpeg_qualities=args.jpeg,
            webp_qualities=args.webp,
            teacher_score_threshold=args.teacher_score,
            batch_size=args.batch_size,
            device=args.device,
            onnx_heads=args.head,
        )
        table = format_markdown(report)
        print(table, end="")
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        if args.md_out:
            Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.md_out).write_text(table)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"split-eval: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
