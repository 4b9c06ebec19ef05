"""What each ``split-model`` command does: init, info, export, import-seed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from splitdet.common.checkpoint import load_checkpoint, save_checkpoint
from splitdet.common.models import build_student
from splitdet.common.seed_import import import_seed
from splitdet.common.split import bottleneck_shape, split


def _macs(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops() // 2


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cmd_init(
    *,
    arch: str,
    backbone: str,
    channels: int,
    num_classes: int,
    num_keypoints: int,
    min_size: int,
    max_size: int,
    with_filter: bool,
    half: bool,
    out: Path,
) -> None:
    """``split-model init``: a randomly initialised student checkpoint at ``out``."""
    model = build_student(
        arch,
        backbone,
        channels,
        num_classes=num_classes,
        num_keypoints=num_keypoints,
        min_size=min_size,
        max_size=max_size,
        with_filter=with_filter,
    )
    names = ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    keypoints = [f"kp_{i}" for i in range(num_keypoints)] if arch == "keypoint_rcnn" else []
    ckpt = save_checkpoint(model.eval(), out, class_names=names, keypoint_names=keypoints, half=half)
    print(f"wrote {out} ({arch}, {backbone}, {channels} channels, fingerprint {ckpt.fingerprint})")


def codec_description(ckpt) -> str:
    """One line saying how the head encodes the bottleneck."""
    codec = ckpt.codec
    if codec.quantization == "entropy":
        tables = ckpt.entropy
        return (
            f"entropy: rANS (constriction) with learned factorized-prior tables ({tables.channels} channels, "
            f"{int(tables.cdf_length.max())} symbols max, tables {tables.fingerprint[:16]}); "
            f"8-bit + zstd level {codec.level} when smaller"
        )
    if codec.quantization in ("per_tensor", "per_channel"):
        return f"8-bit {codec.quantization.replace('_', ' ')} + {codec.compression} (level {codec.level})"
    return f"{codec.quantization} + {codec.compression}" + (
        f" (level {codec.level})" if codec.compression == "zstd" else ""
    )


def cmd_info(*, path: Path, input_size: tuple[int, int] | None) -> None:
    """``split-model info``: describe the checkpoint at ``path`` (bottleneck, bytes and MACs at ``input_size``)."""
    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    print(f"checkpoint     {path}")
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
    print(f"codec          {codec_description(ckpt)}")
    head_params = _params(head.stem) + _params(head.encoder)
    print(
        f"head params    {head_params / 1e6:.3f} M (+ filter {_params(model.neural_filter) / 1e6:.3f} M)"
        if model.neural_filter is not None
        else f"head params    {head_params / 1e6:.3f} M"
    )
    print(f"tail params    {_params(tail) / 1e6:.3f} M")
    if input_size:
        h, w = input_size
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


def cmd_export(
    *,
    path: Path,
    out: Path,
    format: str,
    int8: bool,
    calibration: int,
    calibration_config: Path | None,
    calibration_images: Path | None,
    half: bool,
) -> None:
    """``split-model export``: a deployment copy of the checkpoint, or its head as ONNX (``format`` "onnx")."""
    if format == "onnx":
        from splitdet.common.onnx_export import export_onnx_head
        from splitdet.common.onnx_int8 import calibration_frames

        frames = None
        if int8:
            frames = calibration_frames(calibration, calibration_config, calibration_images)
        meta = export_onnx_head(path, out, calibration=frames)
        size = out.stat().st_size / 1e6
        weights = f"int8, calibrated on {len(frames)} frames" if frames else "float32"
        print(
            f"wrote {out} ({size:.1f} MB ONNX head, {weights}, {meta['quantization']} codec, filter "
            f"{meta['filter']}, fingerprint {meta['fingerprint']})"
        )
        return
    ckpt = load_checkpoint(path)
    exported = save_checkpoint(
        ckpt.build_model(),
        out,
        half=half,
        training={"exported_from": str(path), "epoch": ckpt.training.get("epoch")},
        metrics=ckpt.metrics,
        **ckpt.save_options(),
    )
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB{', float16' if half else ''}, fingerprint {exported.fingerprint})")


def cmd_import_seed(*, seed: Path, out: Path) -> None:
    """``split-model import-seed``: the seed's published checkpoint ``seed`` as one of ours at ``out``."""
    ckpt = import_seed(seed, out)
    cfg = ckpt.config
    print(
        f"wrote {out} ({cfg.arch}, {cfg.backbone}, {cfg.bottleneck_channels} channels, fingerprint {ckpt.fingerprint})"
    )


COMMANDS = {"init": cmd_init, "info": cmd_info, "export": cmd_export, "import-seed": cmd_import_seed}
