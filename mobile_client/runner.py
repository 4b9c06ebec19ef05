"""What ``mobile-client`` does once its command line is checked: open the source, load the head, connect, and
stream every frame through :class:`splitdet.mobile_client.pipeline.Pipeline`, writing one JSON line per frame.

With ``--runtime onnx`` nothing on this path imports torch: the head is
:class:`splitdet.mobile_client.onnx_head.OnnxHead`; the torch head (:mod:`splitdet.mobile_client.torch_head`) and
``--save-vis`` (drawn by torchvision) load only when used."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from splitdet.common.codec_settings import CodecSettings
from splitdet.common.demo import demo_checkpoint
from splitdet.common.endpoint import with_default_port
from splitdet.common.token_file import TokenFileError, read_token
from splitdet.mobile_client import handshake, sources
from splitdet.mobile_client.auto import CHOICES, AutoPolicy
from splitdet.mobile_client.device_cpu import DeviceQuota, detect
from splitdet.mobile_client.link import Link, LinkConfig
from splitdet.mobile_client.pipeline import DeviceModel, Pipeline
from splitdet.mobile_client.report import Report
from splitdet.mobile_client.settings import Options, SetupError
from splitdet.mobile_client.sources import Source, SourceError
from splitdet.proto import splitdet_pb2 as pb

DEFAULT_FPS = 30.0  # a video file that does not say its frame rate plays at this one with --live


def open_source(args: argparse.Namespace) -> Source:
    if args.camera is not None:
        source = sources.camera(args.camera)
    elif args.video is not None:
        source = sources.video(args.video)
    elif args.images is not None:
        source = sources.images(args.images)
    else:
        source = sources.synthetic(args.synthetic, args.seed, static_ratio=args.static_ratio)
    if args.max_frames is not None:
        total = args.max_frames if source.total is None else min(source.total, args.max_frames)
        source = Source(itertools.islice(source.frames, args.max_frames), total, source.fps)
    if is_live(args):
        source = sources.live(source, fps=(source.fps or DEFAULT_FPS) if args.live else None)
    return source


def is_live(args: argparse.Namespace) -> bool:
    """A camera, or a video file played at its own rate (``--live``): latency matters more than completeness."""
    return args.camera is not None or args.live


def load_model(args: argparse.Namespace) -> DeviceModel:
    runtime = getattr(args, "runtime", "torch")
    if runtime == "onnx":
        from splitdet.mobile_client.onnx_head import OnnxHead

        model = OnnxHead.load(args.head, args.filter_threshold, args.threads)
        path = Path(args.head)
    else:
        import torch

        from splitdet.common.checkpoint import CheckpointError
        from splitdet.mobile_client.torch_head import ClientModel

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        path = Path(args.ckpt) if args.ckpt else demo_checkpoint()
        try:
            model = ClientModel.load(path, args.filter_threshold)
        except CheckpointError as e:
            raise SetupError(str(e)) from None
    if args.ckpt is None and runtime == "torch" and args.synthetic is None:
        names = ", ".join(model.class_names[1:])
        _log(
            f"mobile-client: note: the bundled demo checkpoint knows only the synthetic scenes' classes ({names}); "
            "pass --ckpt with a model trained for these images"
        )
    if args.filter and not model.has_filter:
        raise SetupError(f"{path} has no neural filter; run without --filter")
    return model


def connect(args: argparse.Namespace, model: DeviceModel | None, quantization: str) -> tuple[Link, pb.ModelInfo]:
    """Open the channel and do the handshake; refuse a server running another model."""
    for name, path in (("CA certificate", args.tls_ca), ("certificate", args.tls_cert), ("key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise SetupError(f"TLS {name} not found: {path}")
    config = LinkConfig(
        target=with_default_port(args.server),
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        token=read_token(args.token_file) if args.token_file else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        allow_insecure_token=args.allow_insecure_token,
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
    model = load_model(args) if args.mode != "offload" else None
    codec = model.codec if model is not None else CodecSettings()
    if args.quantization is not None:
        codec = replace(codec, quantization=args.quantization)
    if codec.quantization == "entropy" and (model is None or model.entropy_tables is None):
        raise SetupError("--quantization entropy needs an entropic checkpoint (one with entropy tables)")
    link, info = (None, None) if args.mode == "local" else connect(args, model, codec.quantization)
    use_filter = model is not None and (model.has_filter if args.filter is None else args.filter)
    size_rule = model.size_rule if model is not None else (info.min_size, info.max_size)
    options = Options(
        mode=args.mode,
        use_filter=use_filter,
        codec=codec,
        jpeg_quality=args.jpeg_quality,
        score_threshold=args.score_threshold,
        window=args.window,
        live=is_live(args),
        offload_format=args.offload_format,
        offload_size=size_rule if args.offload_resize == "model" else None,
        skip_static=args.skip_static,
        skip_static_max=args.skip_static_max,
        background_filter=args.background_filter,
        background_rate=args.background_rate,
        background_max_skipped=args.background_max_skipped,
    )
    policy = None
    if args.mode == "auto":
        choices = ("split", "offload") if getattr(args, "runtime", "torch") == "onnx" else CHOICES  # no tail: no local
        policy = AutoPolicy(every=args.auto_every, probe_every=30, use_filter=use_filter, log=_log, choices=choices)
    class_names = list(model.class_names) if model is not None else list(info.class_names)
    keypoints = list(model.keypoint_names) if model is not None else list(info.keypoint_names)
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
    if args.save_vis:
        from splitdet.mobile_client import visualize  # draws with torchvision

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
    except (SetupError, SourceError, TokenFileError, FileNotFoundError) as e:
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
