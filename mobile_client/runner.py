"""What ``mobile-client`` does once its command line is checked: open the source, load the head, connect, and
stream every frame through :class:`mobile_client.pipeline.Pipeline`, writing one JSON line per frame."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch
from tqdm import tqdm

from common.checkpoint import CheckpointError
from common.codec_settings import CodecSettings
from common.demo import demo_checkpoint
from common.endpoint import with_default_port
from common.token_file import TokenFileError, read_token
from mobile_client import handshake, sources, visualize
from mobile_client.auto import AutoPolicy
from mobile_client.device_cpu import DeviceQuota, detect
from mobile_client.link import Link, LinkConfig
from mobile_client.pipeline import ClientModel, Pipeline
from mobile_client.report import Report
from mobile_client.settings import Options, SetupError
from mobile_client.sources import Source, SourceError
from proto import splitdet_pb2 as pb


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
    if args.ckpt is None and args.synthetic is None:
        names = ", ".join(model.checkpoint.class_names[1:])
        _log(
            f"mobile-client: note: the bundled demo checkpoint knows only the synthetic scenes' classes ({names}); "
            "pass --ckpt with a model trained for these images"
        )
    if args.filter and not model.has_filter:
        raise SetupError(f"{path} has no neural filter; run without --filter")
    return model


def connect(args: argparse.Namespace, model: ClientModel | None, quantization: str) -> tuple[Link, pb.ModelInfo]:
    """Open the channel and do the handshake; refuse a server running another model."""
    if args.tls_ca is not None and not Path(args.tls_ca).is_file():
        raise SetupError(f"CA certificate not found: {args.tls_ca}")
    config = LinkConfig(
        target=with_default_port(args.server),
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
    source = open_source(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(args) if args.mode != "offload" else None
    codec = model.checkpoint.codec if model is not None else CodecSettings()
    if args.quantization is not None:
        codec = replace(codec, quantization=args.quantization)
    link, info = (None, None) if args.mode == "local" else connect(args, model, codec.quantization)
    use_filter = model is not None and (model.has_filter if args.filter is None else args.filter)
    sizes = model.checkpoint.config if model is not None else info
    options = Options(
        mode=args.mode,
        use_filter=use_filter,
        codec=codec,
        jpeg_quality=args.jpeg_quality,
        score_threshold=args.score_threshold,
        window=args.window,
        offload_format=args.offload_format,
        offload_size=(sizes.min_size, sizes.max_size) if args.offload_resize == "model" else None,
    )
    policy = None
    if args.mode == "auto":
        policy = AutoPolicy(every=args.auto_every, probe_every=30, use_filter=use_filter, log=_log)
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


def run(args: argparse.Namespace) -> int:
    """Stream the frames the checked ``args`` name; the exit status."""
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
    quota = None
    try:
        if args.device_cpu is not None:  # the model is loaded: from here on this process is the weak device
            try:
                quota = DeviceQuota(detect(args.device_quota), args.device_cpu)
                quota.add(os.getpid())
            except (SetupError, OSError) as e:
                _log(f"mobile-client: error: cannot hold the device to {args.device_cpu:g} core(s): {e}")
                return 2
            _log(f"mobile-client: device held to {args.device_cpu:g} core(s): {quota.description}")
        return stream(pipeline, source, out, args, keypoints)
    finally:
        if quota is not None:
            quota.close()
        pipeline.close()
        if out is not sys.stdout:
            out.close()
