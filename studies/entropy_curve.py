"""bbox AP against bytes per frame on the synthetic validation set: entropic students, GHND at 8/6/4 bits + zstd,
JPEG and WebP of the model input; encode and decode times per frame; the fallback on noise and photos.

    python -m studies.entropy_curve [--images 300] [--runs runs] [--out studies/results/entropy_curve]

Every row is measured on the same images (``configs/ghnd/synthetic-demo.yaml``'s val set, 160x160, the model's
input size) with :func:`splitdet.distill.evaluate.predict`, i.e. the codec in ``common/`` that client and server run;
the bytes are the payloads actually sent. GHND 6 and 12 channels come from the committed ``eval-*.json`` (their
checkpoints are not kept); JPEG and WebP rows run the GHND 3-channel student whole on the re-encoded image. Runs
whose tail was fine-tuned on the decoded bottleneck (``configs/finetune/``) are their own series, the GHND student
fine-tuned the same way included, so that they are compared like for like.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splitdet.benchmarks.paths import shown_args, write_report
from splitdet.common.checkpoint import load_checkpoint
from splitdet.common.codec_settings import CodecSettings
from splitdet.common.demo import DEMO_CHECKPOINT
from splitdet.common.split import image_tensor, split
from splitdet.common.wire import FrameLimits, decode_frame, encode_frame
from splitdet.distill.config import load_config
from splitdet.distill.dataset_config import build_dataset
from splitdet.distill.evaluate import coco_eval, jpeg_bytes, predict, with_jpeg_quality
from splitdet.proto import splitdet_pb2 as pb

CONFIG = "configs/ghnd/synthetic-demo.yaml"
ENTROPIC = (
    "b3ch-beta2",
    "b3ch-beta8",
    "b3ch-beta32",
    "b3ch-beta128",
    "b6ch-beta32",
    "b3ch-beta32-lr1e-3",
    "b3ch-beta2-long",
    "b3ch-beta8-long",
    "b3ch-beta32-long",
    "b3ch-beta128-long",
    "b3ch-beta2-long-finetuned",
    "b3ch-beta8-long-finetuned",
    "b3ch-beta32-long-finetuned",
    "b3ch-beta128-long-finetuned",
)
FINETUNED = "-finetuned"  #: stage two (``method: finetune``): the tail trained on the decoded bottleneck
GHND_FINETUNED_RUN = "finetune-ghnd-synthetic-faster_rcnn-resnet18-b3ch"  #: the same stage two for the GHND student
RESULTS = Path("studies/results")
JPEG_QUALITIES = (95, 75, 50, 25, 10)
WEBP_QUALITIES = (75, 50, 25)
GHND_BITS = (8, 6, 4)


class Reencoded:
    """``dataset`` with every image re-encoded by PIL as ``fmt`` at ``quality`` (WebP; JPEG uses the evaluator's own
    :func:`with_jpeg_quality`); ``sizes`` collects the encoded bytes."""

    def __init__(self, dataset, fmt: str, quality: int) -> None:
        self.dataset, self.fmt, self.quality = dataset, fmt, quality
        self.class_names, self.label_to_cat_id = dataset.class_names, dataset.label_to_cat_id
        self.sizes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=self.fmt, quality=self.quality)
        self.sizes[i] = buf.tell()
        buf.seek(0)
        return image_tensor(np.asarray(Image.open(buf).convert("RGB"))), target


def _ap(dataset, preds) -> float:
    return coco_eval(dataset.coco, preds.results, "bbox", sorted(dataset.label_to_cat_id.values()))["AP"]


def split_row(name: str, kind: str, ckpt, dataset, quantization: str, bits: int = 8) -> dict:
    preds = predict(ckpt, dataset, "split", quantization=quantization, bits=bits, progress=False)
    b = preds.mean_bytes()
    row = {"name": name, "kind": kind, "bytes": b["payload"], "ap": _ap(dataset, preds)}
    if quantization == "entropy":
        row["fallback_frames"] = b["fallback_frames"]
    return row


def timings(ckpt, dataset, settings: CodecSettings, count: int) -> dict[str, float]:
    """Median ms per frame of ``encode_frame`` + serialization (device) and parsing + ``decode_frame`` (server)."""
    head, _ = split(ckpt.build_model(), ckpt.filter_threshold)
    limits = FrameLimits(channels=ckpt.config.bottleneck_channels, entropy=ckpt.entropy)
    enc, dec = [], []
    with torch.inference_mode():
        for i in range(min(count, len(dataset))):
            out = head([dataset[i][0]], use_filter=False)
            t0 = time.perf_counter()
            data = encode_frame(out.bottleneck, out.meta, settings, entropy_tables=ckpt.entropy).SerializeToString()
            t1 = time.perf_counter()
            decode_frame(pb.BottleneckFrame.FromString(data), limits)
            t2 = time.perf_counter()
            enc.append((t1 - t0) * 1e3)
            dec.append((t2 - t1) * 1e3)
    return {"encode_ms": statistics.median(enc), "decode_ms": statistics.median(dec)}


def odd_images(size: int = 160) -> dict[str, list[torch.Tensor]]:
    """Uniform noise and out-of-distribution photos (matplotlib's bundled sample images), ``size`` pixels square."""
    g = torch.Generator().manual_seed(0)
    noise = [torch.rand(3, size, size, generator=g) for _ in range(8)]
    import matplotlib

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photos = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (sample / name).is_file():
            img = Image.open(sample / name).convert("RGB")
            for box in (None, (0, 0, img.width // 2, img.height // 2)):
                photos.append(image_tensor(np.asarray((img.crop(box) if box else img).resize((size, size)))))
    return {"noise": noise, "photos": photos}


def fallback_rows(ckpt, name: str) -> list[dict]:
    head, _ = split(ckpt.build_model(), ckpt.filter_threshold)
    rows = []
    with torch.inference_mode():
        for kind, images in odd_images().items():
            sent, zstd, fallback = [], [], 0
            for image in images:
                out = head([image], use_filter=False)
                frame = encode_frame(out.bottleneck, out.meta, CodecSettings("entropy"), entropy_tables=ckpt.entropy)
                plain = encode_frame(out.bottleneck, out.meta, CodecSettings("per_tensor"))
                sent.append(len(frame.payload))
                zstd.append(len(plain.payload))
                fallback += frame.quantization != pb.ENTROPY
            rows.append(
                {
                    "checkpoint": name,
                    "images": kind,
                    "count": len(images),
                    "sent_bytes": float(np.mean(sent)),
                    "zstd_bytes": float(np.mean(zstd)),
                    "max_sent_over_zstd": max(s / z for s, z in zip(sent, zstd, strict=True)),
                    "fallback_frames": fallback,
                }
            )
    return rows


def existing_ghnd(results: Path) -> list[dict]:
    rows = []
    for ch in (3, 6, 12):
        path = results / f"eval-ghnd-synthetic-faster_rcnn-resnet18-b{ch}ch.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        run = next(r for r in report["runs"] if r["quantization"] == "per_tensor")
        rows.append(
            {
                "name": f"GHND {ch} ch 8-bit+zstd (eval-*.json)",
                "kind": "ghnd-json",
                "bytes": run["bytes"]["zstd"],
                "ap": run["ap"]["bbox"]["AP"],
            }
        )
    return rows


def interpolate_bytes(points: list[tuple[float, float]], ap: float) -> float | None:
    """Bytes at which a (bytes, AP) curve reaches ``ap`` (linear in log bytes between neighbours), None if never."""
    pts = sorted(points)
    for (b0, a0), (b1, a1) in itertools.pairwise(pts):
        if min(a0, a1) <= ap <= max(a0, a1) and a0 != a1:
            t = (ap - a0) / (a1 - a0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    best = [b for b, a in pts if a >= ap]
    return min(best) if best else None


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    styles = {
        "entropic": ("tab:green", "o-", "entropic (rANS, 3 ch)"),
        "ghnd-bits": ("tab:blue", "s-", "GHND 3 ch, 8/6/4-bit + zstd"),
        "ghnd-json": ("tab:cyan", "D", "GHND 3/6/12 ch 8-bit + zstd"),
        "jpeg": ("tab:red", "^-", "JPEG (model input)"),
        "webp": ("tab:orange", "v-", "WebP (model input)"),
        "entropic-tried": ("tab:olive", "x", "entropic 3 ch, lr 1e-3 (first try)"),
        "entropic-long": ("tab:purple", "P-", "entropic 3 ch, 500 steps"),
        "entropic-finetuned": ("black", "h-", "entropic 3 ch, 500 steps, tail fine-tuned"),
        "ghnd-finetuned": ("tab:gray", "s--", "GHND 3 ch 8/6-bit + zstd, tail fine-tuned"),
    }
    for kind, (color, style, label) in styles.items():
        pts = sorted(
            (r["bytes"], r["ap"])
            for r in rows
            if r["kind"] == kind and not (kind == "entropic" and "6 ch" in r["name"])
        )
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, color=color, label=label)
    six = [r for r in rows if r["kind"] == "entropic" and "6 ch" in r["name"]]
    for r in six:
        ax.plot([r["bytes"]], [100 * r["ap"]], "*", color="tab:green", markersize=12, label="entropic 6 ch")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per frame (160x160 input)")
    ax.set_ylabel("bbox AP (synthetic val)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.entropy_curve", description=__doc__)
    p.add_argument("--images", type=int, default=100, help="validation images (default: %(default)s)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the entropic runs are (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS / "entropy_curve", help="output prefix (default: %(default)s)")
    p.add_argument("--timing-frames", type=int, default=100, help="frames timed per codec (default: %(default)s)")
    p.add_argument("--no-report", action="store_true", help="score what is there, write no report (default: write)")
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="only the GHND / JPEG / WebP rows, kept in OUT.baselines.json for the next run (default: everything)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(CONFIG)
    section = {**cfg.dataset, "val": {**cfg.dataset["val"], "num_images": args.images}}
    dataset, _ = build_dataset(section, "val")
    ghnd = load_checkpoint(DEMO_CHECKPOINT)
    rows: list[dict] = []
    reused = 0  #: rows scored by an earlier run of this command on the same images (cached)
    started = time.perf_counter()

    def log(row: dict) -> None:
        print(
            f"{row['name']:40s} {row['bytes']:9.0f} B  AP {100 * row['ap']:.1f}",
            f"({time.perf_counter() - started:.0f} s)",
        )

    cache = Path(f"{args.out}.baselines.json")
    cached = json.loads(cache.read_text()) if cache.is_file() else None
    if cached is not None and cached["images"] == len(dataset) and not args.baselines_only:
        rows += cached["rows"]
        reused += len(cached["rows"])
        print(f"reusing the GHND / JPEG / WebP rows of {cache}")
    else:
        for bits in GHND_BITS:
            rows.append(split_row(f"GHND 3 ch {bits}-bit+zstd", "ghnd-bits", ghnd, dataset, "per_tensor", bits))
            log(rows[-1])
        rows += existing_ghnd(RESULTS)
        for q in JPEG_QUALITIES:
            preds = predict(ghnd, with_jpeg_quality(dataset, q), "whole", progress=False)
            rows.append(
                {
                    "name": f"JPEG q{q}",
                    "kind": "jpeg",
                    "bytes": float(np.mean(jpeg_bytes(dataset, q))),
                    "ap": _ap(dataset, preds),
                }
            )
            log(rows[-1])
        for q in WEBP_QUALITIES:
            webp = Reencoded(dataset, "WEBP", q)
            preds = predict(ghnd, webp, "whole", progress=False)
            rows.append(
                {
                    "name": f"WebP q{q}",
                    "kind": "webp",
                    "bytes": float(np.mean(list(webp.sizes.values()))),
                    "ap": _ap(dataset, preds),
                }
            )
            log(rows[-1])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"images": len(dataset), "rows": rows}, indent=2) + "\n")
        if args.baselines_only:
            return 0
    entropic = {}
    entropic_cache = Path(f"{args.out}.entropic.json")  # rows of checkpoints already scored (path, mtime, images)
    done = json.loads(entropic_cache.read_text()) if entropic_cache.is_file() else {}

    def scored(path: Path, ckpt, label: str, kind: str, quantization: str, bits: int = 8) -> None:
        key = f"{path}@{path.stat().st_mtime_ns}/{len(dataset)}" + (f"/{bits}-bit" if quantization != "entropy" else "")
        nonlocal reused
        if key in done:
            reused += 1
        else:
            row = split_row(label, kind, ckpt, dataset, quantization, bits)
            done[key] = row | {"checkpoint": str(path)}
            entropic_cache.write_text(json.dumps(done, indent=2) + "\n")
        rows.append(done[key] | {"name": label})
        log(rows[-1])

    for name in ENTROPIC:
        tuned = name.endswith(FINETUNED)
        run = f"entropic-synthetic-faster_rcnn-resnet18-{name.removesuffix(FINETUNED)}"
        path = args.runs / (f"finetune-{run}" if tuned else run) / "final.pt"
        if not path.is_file():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        entropic[name] = load_checkpoint(path)
        channels, beta = name.removesuffix(FINETUNED).split("-beta")
        label = f"entropic {channels[1:-2]} ch beta {beta.replace('-', ', ', 1)}"
        label += ", tail fine-tuned" if tuned else ""
        kind = "entropic-tried" if "lr" in name else "entropic-long" if name.endswith("-long") else "entropic"
        scored(path, entropic[name], label, "entropic-finetuned" if tuned else kind, "entropy")
    path = args.runs / GHND_FINETUNED_RUN / "final.pt"
    if path.is_file():
        tuned_ghnd = load_checkpoint(path)
        for bits in GHND_BITS[:2]:
            label = f"GHND 3 ch {bits}-bit+zstd, tail fine-tuned"
            scored(path, tuned_ghnd, label, "ghnd-finetuned", "per_tensor", bits)
    else:
        print(f"skipping the fine-tuned GHND student: {path} not found", file=sys.stderr)
    if args.no_report:
        return 0
    times = {"GHND 3 ch 8-bit+zstd": timings(ghnd, dataset, CodecSettings("per_tensor"), args.timing_frames)}
    # the smallest fine-tuned point and the bundled demo's recipe
    shown = [n for n in ("b3ch-beta32-long-finetuned", "b3ch-beta8-long-finetuned") if n in entropic]
    for name, ckpt in ((n, entropic[n]) for n in shown):
        times[f"entropic {name}"] = timings(ckpt, dataset, CodecSettings("entropy"), args.timing_frames)
    fallback = [r for name in shown for r in fallback_rows(entropic[name], name)]
    report = {
        "command": " ".join(["python -m studies.entropy_curve", *shown_args(list(argv or sys.argv[1:]))]),
        "images": len(dataset),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread, CPU",
        "wall_s": round(time.perf_counter() - started, 1),
        "rows_reused": reused,
        "rows": rows,
        "timings_ms": times,
        "fallback": fallback,
    }
    write_report(args.out, report, markdown(report))
    plot(rows, Path(f"{args.out}.png"))
    return 0


def markdown(report: dict) -> str:
    rows = report["rows"]
    ghnd8 = next(r for r in rows if r["name"] == "GHND 3 ch 8-bit+zstd")
    q95 = next((r for r in rows if r["name"] == "JPEG q95"), None)
    lines = [
        f"bbox AP against bytes per frame, {report['images']} synthetic val images at the model's 160x160 input "
        f"(`{report['command']}`, {report['machine']}, {report['wall_s']:.0f} s"
        + (
            f"; {report['rows_reused']} rows cached from an earlier run of this command on the same images)."
            if report.get("rows_reused")
            else ")."
        ),
        "",
        "| codec | bytes/frame | × GHND 3 ch 8-bit | × JPEG q95 | bbox AP | fallback frames |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["kind"], -r["bytes"])):
        ratio_q95 = f"{r['bytes'] / q95['bytes']:.2f}" if q95 else "-"
        fb = str(r.get("fallback_frames", "-"))
        lines.append(
            f"| {r['name']} | {r['bytes']:,.0f} | {r['bytes'] / ghnd8['bytes']:.2f} | {ratio_q95} | "
            f"{100 * r['ap']:.1f} | {fb} |"
        )
    lines += [""]
    tuned8 = next((r for r in rows if r["name"] == "GHND 3 ch 8-bit+zstd, tail fine-tuned"), None)
    series = [
        ("entropic", "40 training steps", ghnd8, "the GHND 3-channel 8-bit AP"),
        ("entropic-long", "500 training steps", ghnd8, "the GHND 3-channel 8-bit AP"),
        ("entropic-finetuned", "500 steps, tail fine-tuned", ghnd8, "the GHND 3-channel 8-bit AP"),
    ]
    if tuned8 is not None:
        like = "the AP of the GHND 3-channel 8-bit student fine-tuned the same way"
        series.append(("entropic-finetuned", "500 steps, tail fine-tuned", tuned8, like))
    for kind, what, goal, goal_name in series:
        ent = [(r["bytes"], r["ap"]) for r in rows if r["kind"] == kind and " 3 ch" in r["name"]]
        if not ent:
            continue
        at = interpolate_bytes(ent, goal["ap"])
        if at is not None and all(a > goal["ap"] for _, a in ent):
            lines.append(
                f"- Every entropic 3-channel point ({what}) scores above {goal_name} ({100 * goal['ap']:.1f}); "
                f"the smallest sends {at:,.0f} B per frame: {at / goal['bytes']:.2f}× that GHND student's bytes"
                + (f", {at / q95['bytes']:.2f}× JPEG q95." if q95 else ".")
            )
        elif at is not None:
            lines.append(
                f"- At {goal_name} ({100 * goal['ap']:.1f}) the entropic 3-channel curve ({what}) "
                f"needs about {at:,.0f} B per frame: {at / goal['bytes']:.2f}× that GHND student's bytes"
                + (f", {at / q95['bytes']:.2f}× JPEG q95." if q95 else ".")
            )
        else:
            best = max(ent, key=lambda p: p[1])
            lines.append(
                f"- No entropic 3-channel point ({what}) reaches {goal_name} "
                f"({100 * goal['ap']:.1f}); the best is {100 * best[1]:.1f} at {best[0]:,.0f} B."
            )
    entropic = [r for r in rows if r["kind"].startswith("entropic")]
    for r in sorted((r for r in rows if r["kind"] == "jpeg"), key=lambda r: -r["bytes"]):
        cheaper = [e for e in entropic if e["bytes"] <= r["bytes"]]
        best = max(cheaper, key=lambda e: e["ap"]) if cheaper else None
        lines.append(
            f"- {r['name']} ({r['bytes']:,.0f} B, AP {100 * r['ap']:.1f}): "
            + (
                f"{best['name']} sends {best['bytes']:,.0f} B at AP {100 * best['ap']:.1f}: "
                + ("more AP for no more bytes." if best["ap"] > r["ap"] else "not more AP.")
                if best
                else "no entropic point is as small."
            )
        )
    lines += [
        "",
        "Encode (device: encode_frame + serialize) and decode (server: parse + decode_frame) per frame, median:",
    ]
    lines += ["", "| codec | encode ms | decode ms |", "| --- | --- | --- |"]
    for name, t in report["timings_ms"].items():
        lines.append(f"| {name} | {t['encode_ms']:.2f} | {t['decode_ms']:.2f} |")
    if report["fallback"]:
        lines += ["", "Noise and out-of-distribution photos (160x160): bytes sent vs 8-bit + zstd of the same latent:"]
        lines += ["", "| checkpoint | images | count | sent B | 8-bit+zstd B | max sent/zstd | fallback frames |"]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["fallback"]:
            lines.append(
                f"| {r['checkpoint']} | {r['images']} | {r['count']} | {r['sent_bytes']:,.0f} | "
                f"{r['zstd_bytes']:,.0f} | {r['max_sent_over_zstd']:.2f} | {r['fallback_frames']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
