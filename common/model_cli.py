"""``split-model``: create, inspect and import student checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.models import ARCHS, BACKBONES, build_student
from common.seed_import import import_seed
from common.split import bottleneck_shape, split


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 800x1088, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def _macs(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops() // 2


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cmd_init(args: argparse.Namespace) -> None:
    model = build_student(
        args.arch,
        args.backbone,
        args.channels,
        num_classes=args.num_classes,
        num_keypoints=args.num_keypoints,
        min_size=args.min_size,
        max_size=args.max_size,
        with_filter=args.with_filter,
    )
    names = ["__background__"] + [f"class_{i}" for i in range(1, args.num_classes)]
    keypoints = [f"kp_{i}" for i in range(args.num_keypoints)] if args.arch == "keypoint_rcnn" else []
    ckpt = save_checkpoint(model.eval(), args.out, class_names=names, keypoint_names=keypoints, half=args.half)
    print(f"wrote {args.out} ({args.arch}, {args.backbone}, {args.channels} channels, fingerprint {ckpt.fingerprint})")


def cmd_info(args: argparse.Namespace) -> None:
    ckpt = load_checkpoint(args.path)
    cfg = ckpt.config
    print(f"checkpoint     {args.path}")
    print(
        f"model          {cfg.arch} {cfg.backbone}, {cfg.num_classes} classes"
        + (f", {cfg.num_keypoints} keypoints" if cfg.arch == "keypoint_rcnn" else "")
    )
    print(f"input          min_size {cfg.min_size}, max_size {cfg.max_size}")
    if not cfg.is_student:
        print(f"teacher        {_params(ckpt.build_model()) / 1e6:.2f} M parameters (not splittable)")
        return
    model = ckpt.build_model()
    head, tail = split(model, ckpt.filter_threshold)
    print(
        f"bottleneck     {cfg.bottleneck_channels} channels; filter "
        + (f"yes (threshold {ckpt.filter_threshold})" if model.neural_filter is not None else "no")
    )
    print(f"fingerprint    {ckpt.fingerprint}")
    head_params = _params(head.stem) + _params(head.encoder)
    print(
        f"head params    {head_params / 1e6:.3f} M (+ filter {_params(model.neural_filter) / 1e6:.3f} M)"
        if model.neural_filter is not None
        else f"head params    {head_params / 1e6:.3f} M"
    )
    print(f"tail params    {_params(tail) / 1e6:.3f} M")
    if args.input_size:
        h, w = args.input_size
        image = torch.rand(3, h, w)
        x, meta = head.preprocess([image])
        c, bh, bw = bottleneck_shape(cfg.bottleneck_channels, meta.batch_shape)
        head_macs = _macs(lambda t: head.encoder(head.stem(t)), x)
        z = torch.zeros(1, c, bh, bw)
        tail_macs = _macs(tail, z, meta)
        print(
            f"input {h}x{w}   resized to {meta.image_sizes[0][0]}x{meta.image_sizes[0][1]}, "
            f"padded batch {meta.batch_shape[0]}x{meta.batch_shape[1]}"
        )
        print(f"bottleneck     {c}x{bh}x{bw}: {c * bh * bw * 4} bytes float32, {c * bh * bw} bytes 8-bit")
        print(f"head MACs      {head_macs / 1e9:.3f} G")
        print(f"tail MACs      {tail_macs / 1e9:.3f} G")


def cmd_export(args: argparse.Namespace) -> None:
    ckpt = load_checkpoint(args.path)
    exported = save_checkpoint(
        ckpt.build_model(),
        args.out,
        class_names=ckpt.class_names,
        keypoint_names=ckpt.keypoint_names,
        filter_threshold=ckpt.filter_threshold,
        codec=ckpt.codec,
        half=args.half,
        training={"exported_from": str(args.path), "epoch": ckpt.training.get("epoch")},
        metrics=ckpt.metrics,
    )
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB{', float16' if args.half else ''}, fingerprint {exported.fingerprint})")


def cmd_import_seed(args: argparse.Namespace) -> None:
    ckpt = import_seed(args.seed, args.out)
    cfg = ckpt.config
    print(
        f"wrote {args.out} ({cfg.arch}, {cfg.backbone}, {cfg.bottleneck_channels} channels, "
        f"fingerprint {ckpt.fingerprint})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a randomly initialised student checkpoint")
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--backbone", choices=BACKBONES, default="resnet50")
    p.add_argument("--channels", type=int, required=True)
    p.add_argument("--num-classes", type=int, default=91)
    p.add_argument("--num-keypoints", type=int, default=17)
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--with-filter", action="store_true", help="add an (untrained) neural filter")
    p.add_argument("--half", action="store_true", help="store weights as float16")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_init)
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("path", type=Path)
    p.add_argument("--input-size", type=_parse_size, help="HxW: report bottleneck shape, bytes and MACs")
    p.set_defaults(run=cmd_info)
    p = sub.add_parser("export", help="copy a checkpoint for deployment: no optimizer state, optionally float16")
    p.add_argument("path", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("import-seed", help="convert a checkpoint of the seed's published zips")
    p.add_argument("seed", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_import_seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"split-model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
