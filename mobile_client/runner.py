"""What ``mobile-client`` does once its command line is checked: open the source, load the head, connect, and
stream every frame through :class:`splitdet.mobile_client.pipeline.Pipeline`, writing one JSON line per frame.

With ``--runtime onnx`` nothing on this path imports torch: the head is
:class:`splitdet.mobile_client.onnx_head.OnnxHead`; the torch head (:mod:`splitdet.mobile_client.torch_head`) and
``--save-vis`` (drawn by torchvision) load only when used."""

from __future__ import annotations

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
from splitdet.mobile_client.settings import Options, RunOptions, SetupError
from splitdet.mobile_client.sources import Source, SourceError
from splitdet.proto import splitdet_pb2 as pb

DEFAULT_FPS = 30.0  # a video file that does not say its frame rate plays at this one with --live


def open_source(opts: RunOptions) -> Source:
    if opts.camera is not None:
        source = sources.camera(opts.camera)
    elif opts.video is not None:
        source = sources.video(opts.video)
    elif opts.images is not None:
        source = sources.images(opts.images)
    else:
        source = sources.synthetic(opts.synthetic, opts.seed, static_ratio=opts.static_ratio)
    if opts.max_frames is not None:
        total = opts.max_frames if source.total is None else min(source.total, opts.max_frames)
        source = Source(itertools.islice(source.frames, opts.max_frames), total, source.fps)
    if is_live(opts):
        source = sources.live(source, fps=(source.fps or DEFAULT_FPS) if opts.live else None)
    return source


def is_live(opts: RunOptions) -> bool:
    """A camera, or a video file played at its own rate (``live``): latency matters more than completeness."""
    return opts.is_live


def load_model(opts: RunOptions) -> DeviceModel:
    runtime = opts.runtime
    if runtime == "onnx":
        from splitdet.mobile_client.onnx_head import OnnxHead

        model = OnnxHead.load(opts.head, opts.filter_threshold, opts.threads)
        path = Path(opts.head)
    else:
        import torch

        from splitdet.common.checkpoint import CheckpointError
        from splitdet.mobile_client.torch_head import ClientModel

        if opts.threads is not None:
            torch.set_num_threads(opts.threads)
        path = Path(opts.ckpt) if opts.ckpt else demo_checkpoint()
        try:
            model = ClientModel.load(path, opts.filter_threshold)
        except CheckpointError as e:
            raise SetupError(str(e)) from None
    if opts.ckpt is None and runtime == "torch" and opts.synthetic is None:
        names = ", ".join(model.class_names[1:])
        _log(
            f"mobile-client: note: the bundled demo checkpoint knows only the synthetic scenes' classes ({names}); "
            "pass --ckpt with a model trained for these images"
        )
    if opts.filter and not model.has_filter:
        raise SetupError(f"{path} has no neural filter; run without --filter")
    return model


def connect(opts: RunOptions, model: DeviceModel | None, quantization: str) -> tuple[Link, pb.ModelInfo]:
    """Open the channel and do the handshake; refuse a server running another model."""
    for name, path in (("CA certificate", opts.tls_ca), ("certificate", opts.tls_cert), ("key", opts.tls_key)):
        if path is not None and not Path(path).is_file():
            raise SetupError(f"TLS {name} not found: {path}")
    config = LinkConfig(
        target=with_default_port(opts.server),
        tls_ca=Path(opts.tls_ca) if opts.tls_ca else None,
        token=read_token(opts.token_file) if opts.token_file else None,
        tls_cert=Path(opts.tls_cert) if opts.tls_cert else None,
        tls_key=Path(opts.tls_key) if opts.tls_key else None,
        allow_insecure_token=opts.allow_insecure_token,
        timeout_s=opts.timeout_s,
        attempts=opts.attempts,
    )
    sends_bottlenecks = model is not None and opts.mode != "offload"
    return handshake.connect(
        config,
        fingerprint=model.fingerprint if sends_bottlenecks else None,
        quantization=quantization if model is not None else None,
    )


def build_pipeline(opts: RunOptions) -> tuple[Pipeline, list[str], Source]:
    """Source, model, link and pipeline options for the run ``opts`` describes; raises the setup errors (exit 2)."""
    source = open_source(opts)
    model = load_model(opts) if opts.mode != "offload" else None
    codec = model.codec if model is not None else CodecSettings()
    if opts.quantization is not None:
        codec = replace(codec, quantization=opts.quantization)
    if codec.quantization == "entropy" and (model is None or model.entropy_tables is None):
        raise SetupError("--quantization entropy needs an entropic checkpoint (one with entropy tables)")
    link, info = (None, None) if opts.mode == "local" else connect(opts, model, codec.quantization)
    use_filter = model is not None and (model.has_filter if opts.filter is None else opts.filter)
    size_rule = model.size_rule if model is not None else (info.min_size, info.max_size)
    options = Options(
        mode=opts.mode,
        use_filter=use_filter,
        codec=codec,
        jpeg_quality=opts.jpeg_quality,
        score_threshold=opts.score_threshold,
        window=opts.window,
        live=is_live(opts),
        offload_format=opts.offload_format,
        offload_size=size_rule if opts.offload_resize == "model" else None,
        skip_static=opts.skip_static,
        skip_static_max=opts.skip_static_max,
        background_filter=opts.background_filter,
        background_rate=opts.background_rate,
        background_max_skipped=opts.background_max_skipped,
    )
    policy = None
    if opts.mode == "auto":
        choices = ("split", "offload") if opts.runtime == "onnx" else CHOICES  # no tail: no local
        policy = AutoPolicy(every=opts.auto_every, probe_every=30, use_filter=use_filter, log=_log, choices=choices)
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


def stream(pipeline: Pipeline, source: Source, out: TextIO, opts: RunOptions, keypoints: list[str]) -> int:
    """Run every frame, write its line (and picture), print the summary; the exit status."""
    report = Report(out, opts.mode)
    if opts.save_vis:
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
            if opts.save_vis:
                visualize.save(result, Path(opts.save_vis), skeleton)
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


def run(opts: RunOptions) -> int:
    """Stream the frames ``opts`` names; the exit status."""
    try:
        pipeline, keypoints, source = build_pipeline(opts)
    except (SetupError, SourceError, TokenFileError, FileNotFoundError) as e:
        _log(f"mobile-client: error: {e}")
        return 2
    try:
        if opts.save_vis:
            Path(opts.save_vis).mkdir(parents=True, exist_ok=True)
        out = open(opts.jsonl, "w") if opts.jsonl else sys.stdout  # noqa: SIM115 (closed below)
    except OSError as e:
        pipeline.close()
        _log(f"mobile-client: error: cannot write {e.filename}: {e.strerror}")
        return 2
    quota = None
    try:
        if opts.device_cpu is not None:  # the model is loaded: from here on this process is the weak device
            try:
                quota = DeviceQuota(detect(opts.device_quota), opts.device_cpu)
                quota.add(os.getpid())
            except (SetupError, OSError) as e:
                _log(f"mobile-client: error: cannot hold the device to {opts.device_cpu:g} core(s): {e}")
                return 2
            _log(f"mobile-client: device held to {opts.device_cpu:g} core(s): {quota.description}")
        return stream(pipeline, source, out, opts, keypoints)
    finally:
        if quota is not None:
            quota.close()
        pipeline.close()
        if out is not sys.stdout:
            out.close()
