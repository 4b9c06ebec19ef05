"""Codec benchmark: quantize+zstd encode and decode times and bytes per frame, per bottleneck width.

    python -m studies.codec [--channels 3,6,12] [--size 800x1088] [--repeats 20] [--ckpt STUDENT.pt]

The bottleneck comes from a student head run on a synthetic scene: a trained one with ``--ckpt``, otherwise a
randomly initialised ResNet-50 student (whose activations compress differently from a trained encoder's).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.models import build_student
from splitdet.common.split import split
from splitdet.common.wire import FrameLimits, decode_frame, encode_frame
from splitdet.synthetic import SceneConfig, render_scene


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", default="3,6,12")
    parser.add_argument("--size", default="800x1088")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--ckpt", type=Path, help="trained student (its channel count replaces --channels)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    image = torch.from_numpy(np.array(render_scene(7, SceneConfig(height=h, width=w))[0])).permute(2, 0, 1)
    image = image.float() / 255
    models = []
    if args.ckpt:
        models.append(load_checkpoint(args.ckpt).build_model())
    else:
        torch.manual_seed(0)
        for c in (int(v) for v in args.channels.split(",")):
            models.append(build_student("faster_rcnn", "resnet50", c, min_size=min(h, w), max_size=max(h, w)).eval())
    lines = [
        f"Codec benchmark, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"input {h}x{w}, zstd level {args.level}, median of {args.repeats}; "
        f"{'trained student ' + str(args.ckpt) if args.ckpt else 'randomly initialised ResNet-50 students'}",
        "",
        "| channels | bottleneck | float32 bytes | 8-bit bytes | 8-bit+zstd bytes | wire frame bytes "
        "| encode ms (quantize+zstd) | decode ms (zstd+dequantize) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    settings = CodecSettings("per_tensor", "zstd", args.level)
    for model in models:
        head, _ = split(model)
        with torch.inference_mode():
            out = head([image], use_filter=False)
        z, meta = out.bottleneck.numpy(), out.meta
        c = z.shape[1]
        frame = encode_frame(z, meta, settings)
        encode_ms = _median_ms(lambda z=z, meta=meta: encode_frame(z, meta, settings), args.repeats)
        decode_ms = _median_ms(lambda frame=frame, c=c: decode_frame(frame, FrameLimits(channels=c)), args.repeats)
        lines.append(
            f"| {c} | {'x'.join(map(str, z.shape[1:]))} | {z.size * 4} | {z.size} | {len(frame.payload)} "
            f"| {frame.ByteSize()} | {encode_ms:.2f} | {decode_ms:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
