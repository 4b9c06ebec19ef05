"""``mobile-client``: run a frame source through the split (or offload, local, auto) pipeline.

Exit status: 0 at the normal end, 1 when every frame failed, 2 for usage and setup errors (one line on
stderr), 130 after Ctrl-C (the summary is printed all the same).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch
from tqdm import tqdm

from common.checkpoint import CheckpointError
from common.codec_settings import QUANTIZATIONS, CodecSettings
from common.demo import demo_checkpoint
from common.token_file import TokenFileError, read_token
from mobile_client import handshake, sources, visualize
from mobile_client.auto import AutoPolicy
from mobile_client.link import Link, LinkConfig
from mobile_client.pipeline import MODES, ClientModel, Options, Pipeline, SetupError
from mobile_client.report import Report
from mobile_client.sources import Source, SourceError
from proto import splitdet_pb2 as pb


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobile-client", description="Stream frames to a splitdet edge server.")
    p.add_argument("--server", metavar="HOST:PORT", help="edge server (dns:///HOST:PORT balances over replicas)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index")
    src.add_argument("--video", metavar="PATH", help="video file")
    src.add_argument("--images", metavar="PATH|DIR|GLOB", help="one image, a directory of images, or a glob")
    src.add_argument("--synthetic", type=int, metavar="N", help="N frames of the synthetic video")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default 0)")
    p.add_argument("--ckpt", metavar="PATH", help="client checkpoint (default: the bundled demo checkpoint)")
    p.add_argument("--mode", choices=MODES, default="split", help="where the model runs (default split)")
    p.add_argument(
        "--filter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip frames the neural filter rejects (default: on when the checkpoint has a filter)",
    )
    p.add_argument("--filter-threshold", type=float, metavar="P", help="keep frames with P(object) >= P")
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="bottleneck quantization (default: checkpoint's)")
    p.add_argument("--jpeg-quality", type=int, default=95, metavar="Q", help="offload JPEG quality (default 95)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="report detections scoring >= this")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--window", type=int, default=4, metavar="N", help="frames in flight; 1 = unary, no pipelining")
    p.add_argument("--jsonl", metavar="OUT", help="write the per-frame JSON lines here instead of stdout")
    p.add_argument("--save-vis", metavar="DIR", help="write annotated frames into DIR")
    p.add_argument("--tls-ca", metavar="F", help="CA certificate (PEM) to verify the server; enables TLS")
    p.add_argument("--token-file", metavar="F", help="file holding the bearer token the server expects")
    p.add_argument("--timeout-s", type=float, default=10.0, metavar="T", help="per-frame deadline (default 10)")
    p.add_argument("--attempts", type=int, default=5, metavar="N", help="tries per frame on a broken call (default 5)")
    p.add_argument("--auto-every", type=int, default=10, metavar="N", help="auto mode: re-evaluate every N frames")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for the on-device model (default: torch's)")
    return p


def _check(args: argparse.Namespace) -> None:
    checks = [
        (args.mode == "local" or args.server, f"--server HOST:PORT is required in {args.mode} mode"),
        (args.filter_threshold is None or 0.0 <= args.filter_threshold <= 1.0, "--filter-threshold must be in [0, 1]"),
        (1 <= args.jpeg_quality <= 100, "--jpeg-quality must be in 1..100"),
        (0.0 <= args.score_threshold <= 1.0, "--score-threshold must be in [0, 1]"),
        (args.max_frames is None or args.max_frames >= 1, "--max-frames must be >= 1"),
        (args.window >= 1, "--window must be >= 1"),
        (args.timeout_s > 0, "--timeout-s must be positive"),
        (args.attempts >= 1, "--attempts must be >= 1"),
        (args.auto_every >= 1, "--auto-every must be >= 1"),
        (args.threads is None or args.threads >= 1, "--threads must be >= 1"),
        (not (args.mode == "offload" and args.filter), "--filter needs the head on the device (not offload mode)"),
    ]
    for ok, message in checks:
        if not ok:
            raise SetupError(message)


def open_source(args: argparse.Namespace) -> Source:
    if args.camera is not None:
        source = sources.camera(args.camera)
    elif args.video is not None:
        source = sources.video(args.video)
    elif args.images is not None:
        source = sources.images(args.images)
    else:
        source = sources.synthetic(args.synthetic, args.seed)
    if args.max_frames is not None:
        total = args.max_frames if source.total is None else min(source.total, args.max_frames)
        source = Source(itertools.islice(source.frames, args.max_frames), total)
    return source


def load_model(args: argparse.Namespace) -> ClientModel:
    path = Path(args.ckpt) if args.ckpt else demo_checkpoint()
    model = ClientModel.load(path, args.filter_threshold)
    if args.filter and not model.has_filter:
        raise SetupError(f"{path} has no neural filter; run without --filter")
    return model


def connect(args: argparse.Namespace, model: ClientModel | None, quantization: str) -> tuple[Link, pb.ModelInfo]:
    """Open the channel and do the handshake; refuse a server running another model."""
    if args.tls_ca is not None and not Path(args.tls_ca).is_file():
        raise SetupError(f"CA certificate not found: {args.tls_ca}")
    config = LinkConfig(
        target=args.server,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        token=read_token(args.token_file) if args.token_file else None,
        timeout_s=args.timeout_s,
        attempts=args.attempts,
    )
    sends_bottlenecks = model is not None and args.mode != "offload"
    return handshake.connect(
        config,
        fingerprint=model.fingerprint if sends_bottlenecks else None,
        quantization=quantization if model is not None else None,
    )


def build_pipeline(args: argparse.Namespace) -> tuple[Pipeline, list[str], Source]:
    """Source, model, link and options from the command line; raises the setup errors that exit with 2."""
    _check(args)
    source = open_source(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(args) if args.mode != "offload" else None
    codec = model.checkpoint.codec if model is not None else CodecSettings()
    if args.quantization is not None:
        codec = replace(codec, quantization=args.quantization)
    link, info = (None, None) if args.mode == "local" else connect(args, model, codec.quantization)
    use_filter = model is not None and (model.has_filter if args.filter is None else args.filter)
    options = Options(
        mode=args.mode,
        use_filter=use_filter,
        codec=codec,
        jpeg_quality=args.jpeg_quality,
        score_threshold=args.score_threshold,
        window=args.window,
    )
    policy = None
    if args.mode == "auto":
        policy = AutoPolicy(every=args.auto_every, probe_every=3 * args.auto_every, use_filter=use_filter, log=_log)
    class_names = list(model.checkpoint.class_names) if model is not None else list(info.class_names)
    keypoints = list(model.checkpoint.keypoint_names) if model is not None else list(info.keypoint_names)
    pipeline = Pipeline(
        options,
        class_names,
        model=model,
        link=link,
        choose_mode=policy.choose if policy else None,
        observe=policy.observe if policy else None,
    )
    return pipeline, keypoints, source


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stream(pipeline: Pipeline, source: Source, out: TextIO, args: argparse.Namespace, keypoints: list[str]) -> int:
    """Run every frame, write its line (and picture), print the summary; the exit status."""
    report = Report(out, args.mode)
    skeleton = visualize.skeleton_for(keypoints)
    tty = sys.stderr.isatty()
    progress = tqdm(
        total=source.total,
        unit="frame",
        file=sys.stderr,
        disable=not (tty or (source.total or 0) > 50),
        mininterval=0.1 if tty else 5.0,
        leave=False,
    )
    interrupted = False
    results = pipeline.run(source.frames)
    try:
        for result in results:
            report.add(result)
            if args.save_vis:
                visualize.save(result, Path(args.save_vis), skeleton)
            progress.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()
        progress.close()
    _log(report.summary(interrupted))
    if interrupted:
        return 130
    return 1 if report.all_failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        pipeline, keypoints, source = build_pipeline(args)
    except (SetupError, SourceError, CheckpointError, TokenFileError, FileNotFoundError) as e:
        _log(f"mobile-client: error: {e}")
        return 2
    try:
        if args.save_vis:
            Path(args.save_vis).mkdir(parents=True, exist_ok=True)
        out = open(args.jsonl, "w") if args.jsonl else sys.stdout  # noqa: SIM115 (closed below)
    except OSError as e:
        pipeline.close()
        _log(f"mobile-client: error: cannot write {e.filename}: {e.strerror}")
        return 2
    try:
        return stream(pipeline, source, out, args, keypoints)
    finally:
        pipeline.close()
        if out is not sys.stdout:
            out.close()
