"""What the user chose for the client, checked where it is defined (no torch, so a command line is checked before
the model loads).

:class:`Options` are the pipeline's options and :class:`RunOptions` the whole run's (source, server, TLS, head,
device quota, outputs); each checks its own values in ``__post_init__`` and raises :class:`OptionsError` naming the
field. A command line maps its flags onto these fields (``--`` + the field with ``-``) and adds the flag to the
message; nothing here knows about flags."""

from __future__ import annotations

import argparse
import importlib.util
import math
from dataclasses import dataclass, field

from splitdet.common.codec_settings import QUANTIZATIONS, CodecSettings
from splitdet.common.onnx_format import ONNX_QUANTIZATIONS
from splitdet.common.options import check
from splitdet.mobile_client.background import DEFAULT_MAX_SKIPPED, DEFAULT_RATE

OFFLOAD_FORMATS = ("jpeg", "webp")
OFFLOAD_RESIZE = ("model", "source")
CLIENT_MODES = ("split", "offload", "local", "auto")
RUNTIMES = ("torch", "onnx")  #: what runs the head on the device
QUOTA_MECHANISMS = ("auto", "cgroup1", "cgroup2", "cpulimit")  #: how a device CPU quota is enforced
DEFAULT_MAX_REUSED = 30  #: skip_static_max: frames in a row that may reuse one answer (one second at 30 fps)
DEFAULT_WINDOW = 4
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 5


class SetupError(RuntimeError):
    """The client cannot start; the message is one line for the user."""


def _finite_at_least(value: float, low: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= low


def _check_pipeline_values(o: Options | RunOptions) -> None:
    """The rules :class:`Options` and :class:`RunOptions` share (the same field names in both)."""
    check(o.mode in CLIENT_MODES, "mode", f"must be one of {', '.join(CLIENT_MODES)}, got {o.mode!r}")
    check(1 <= o.jpeg_quality <= 100, "jpeg_quality", f"must be in 1..100, got {o.jpeg_quality}")
    check(0.0 <= o.score_threshold <= 1.0, "score_threshold", f"must be in [0, 1], got {o.score_threshold:g}")
    check(o.window >= 1, "window", f"must be >= 1, got {o.window}")
    check(
        o.offload_format in OFFLOAD_FORMATS,
        "offload_format",
        f"must be one of {', '.join(OFFLOAD_FORMATS)}, got {o.offload_format!r}",
    )
    check(_finite_at_least(o.skip_static, 0.0), "skip_static", f"must be a finite number >= 0, got {o.skip_static}")
    check(o.skip_static_max >= 1, "skip_static_max", f"must be >= 1, got {o.skip_static_max}")
    check(
        _finite_at_least(o.background_filter, 0.0),
        "background_filter",
        f"must be a finite number >= 0, got {o.background_filter}",
    )
    check(0.0 < o.background_rate <= 1.0, "background_rate", f"must be in (0, 1], got {o.background_rate:g}")
    check(o.background_max_skipped >= 1, "background_max_skipped", f"must be >= 1, got {o.background_max_skipped}")
    check(
        o.skip_static == 0.0 or o.mode in ("split", "auto"),
        "skip_static",
        f"compares the bottlenecks sent to the server: needs mode split or auto, not {o.mode}",
    )
    check(
        o.background_filter == 0.0 or o.mode in ("split", "auto"),
        "background_filter",
        f"learns from the server's answers to split frames: needs mode split or auto, not {o.mode}",
    )


@dataclass(frozen=True)
class Options:
    """The pipeline's options; refused values raise :class:`OptionsError`."""

    mode: str = "split"
    use_filter: bool = False
    codec: CodecSettings = field(default_factory=CodecSettings)
    jpeg_quality: int = 95
    score_threshold: float = 0.5
    window: int = DEFAULT_WINDOW  #: most frames in flight (file sources; the flow-control window adapts below it)
    live: bool = False  #: a live source: one frame in flight, the latest wins, older ones are dropped
    offload_format: str = "jpeg"  #: jpeg or webp (quality: jpeg_quality)
    offload_size: tuple[int, int] | None = None  #: (min_size, max_size) of the model: resize to its input first
    skip_static: float = 0.0  #: split frames changed less than this from the last frame sent reuse its answer; 0 off
    skip_static_max: int = DEFAULT_MAX_REUSED  #: most frames in a row that reuse one answer
    background_filter: float = 0.0  #: split frames scoring below this against the empty background are skipped; 0 off
    background_rate: float = DEFAULT_RATE  #: how fast the background follows the frames it learns from
    background_max_skipped: int = DEFAULT_MAX_SKIPPED  #: most frames in a row the background filter skips

    def __post_init__(self) -> None:
        _check_pipeline_values(self)
        check(
            self.offload_size is None or (len(self.offload_size) == 2 and min(self.offload_size) >= 1),
            "offload_size",
            f"must be (min_size, max_size) of positive sizes or None, got {self.offload_size!r}",
        )


@dataclass(frozen=True)
class RunOptions:
    """A whole client run: exactly one source (``camera``, ``video``, ``images`` or ``synthetic`` with ``seed`` and
    ``static_ratio``), the server, TLS and token files, the head (``runtime`` torch with ``ckpt``, or onnx with
    ``head``), the pipeline's options, the device's threads and CPU quota, and the outputs. Values that cannot work,
    alone or together, raise :class:`OptionsError` naming the field."""

    camera: int | None = None  #: OpenCV camera index
    video: str | None = None  #: video file
    images: str | None = None  #: one image, a directory of images, or a glob
    synthetic: int | None = None  #: frames of the synthetic video
    live: bool = False  #: play the video at its own frame rate, like a camera
    seed: int = 0  #: seed of the synthetic video
    static_ratio: float = 0.0  #: share of the synthetic video's frames in static stretches
    max_frames: int | None = None  #: stop after this many frames
    server: str | None = None  #: edge server target; required except in local mode
    ckpt: str | None = None  #: client checkpoint (runtime torch); None: the bundled demo checkpoint
    runtime: str = "torch"
    head: str | None = None  #: ONNX head file (runtime onnx)
    mode: str = "split"
    filter: bool | None = None  #: the neural filter; None: on when the checkpoint has one
    filter_threshold: float | None = None
    quantization: str | None = None  #: None: the checkpoint's
    jpeg_quality: int = 95
    offload_format: str = "jpeg"
    offload_resize: str = "model"
    score_threshold: float = 0.5
    skip_static: float = 0.0
    skip_static_max: int = DEFAULT_MAX_REUSED
    background_filter: float = 0.0
    background_rate: float = DEFAULT_RATE
    background_max_skipped: int = DEFAULT_MAX_SKIPPED
    window: int = DEFAULT_WINDOW
    jsonl: str | None = None  #: per-frame JSON lines go here; None: stdout
    save_vis: str | None = None  #: annotated frames go into this folder
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    allow_insecure_token: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS
    auto_every: int = 1
    threads: int | None = None
    device_cpu: float | None = None  #: hold the process to this many cores once the model is loaded
    device_quota: str = "auto"

    @property
    def source(self) -> str:
        """Which source: camera, video, images or synthetic."""
        return next(name for name in ("camera", "video", "images", "synthetic") if getattr(self, name) is not None)

    @property
    def is_live(self) -> bool:
        """A camera, or a video file played at its own rate: latency matters more than completeness."""
        return self.camera is not None or self.live

    def __post_init__(self) -> None:
        given = [name for name in ("camera", "video", "images", "synthetic") if getattr(self, name) is not None]
        check(len(given) == 1, "source", f"give exactly one of camera, video, images, synthetic, got {given}")
        check(
            self.mode == "local" or bool(self.server), "server", f"a HOST[:PORT] target is required in {self.mode} mode"
        )
        _check_pipeline_values(self)
        check(self.runtime in RUNTIMES, "runtime", f"must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check(
            self.offload_resize in OFFLOAD_RESIZE,
            "offload_resize",
            f"must be one of {', '.join(OFFLOAD_RESIZE)}, got {self.offload_resize!r}",
        )
        check(
            self.quantization is None or self.quantization in QUANTIZATIONS,
            "quantization",
            f"must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}",
        )
        check(
            self.device_quota in QUOTA_MECHANISMS,
            "device_quota",
            f"must be one of {', '.join(QUOTA_MECHANISMS)}, got {self.device_quota!r}",
        )
        check(
            self.filter_threshold is None or 0.0 <= self.filter_threshold <= 1.0,
            "filter_threshold",
            f"must be in [0, 1], got {self.filter_threshold}",
        )
        check(self.max_frames is None or self.max_frames >= 1, "max_frames", f"must be >= 1, got {self.max_frames}")
        check(0.0 <= self.static_ratio <= 1.0, "static_ratio", f"must be in [0, 1], got {self.static_ratio:g}")
        check(
            self.static_ratio == 0.0 or self.synthetic is not None,
            "static_ratio",
            f"is for the synthetic video, not a {self.source} source",
        )
        check(
            self.skip_static == 0.0 or self.images is None,
            "skip_static",
            "is for video sources (video, camera, synthetic), not images",
        )
        check(
            self.background_filter == 0.0 or self.images is None,
            "background_filter",
            "is for a fixed camera's frames (video, camera, synthetic), not images",
        )
        check(not self.live or self.video is not None, "live", "needs a video source (a camera is always live)")
        check(
            _finite_at_least(self.timeout_s, 0.0) and self.timeout_s > 0,
            "timeout_s",
            f"must be positive, got {self.timeout_s:g}",
        )
        check(self.attempts >= 1, "attempts", f"must be >= 1, got {self.attempts}")
        check(self.auto_every >= 1, "auto_every", f"must be >= 1, got {self.auto_every}")
        check(self.threads is None or self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        check(
            self.device_cpu is None or (_finite_at_least(self.device_cpu, 0.0) and self.device_cpu > 0),
            "device_cpu",
            f"must be a positive number of cores, got {self.device_cpu}",
        )
        check(
            not (self.mode == "offload" and self.filter),
            "filter",
            "needs the head on the device, not mode offload",
        )
        check(
            self.tls_key is None or self.tls_cert is not None,
            "tls_cert",
            "mutual TLS needs both tls_cert and tls_key; tls_key is given alone",
        )
        check(
            self.tls_cert is None or self.tls_key is not None,
            "tls_key",
            "mutual TLS needs both tls_cert and tls_key; tls_cert is given alone",
        )
        check(
            self.token_file is None
            or self.tls_ca is not None
            or self.tls_cert is not None
            or self.allow_insecure_token,
            "token_file",
            "needs TLS (tls_ca): the token would travel in plaintext; allow_insecure_token allows it (loopback tests)",
        )
        if self.runtime == "onnx":
            check(
                self.head is not None or self.mode == "offload",
                "head",
                "runtime onnx needs a head file (from `split-model export CKPT --format onnx`)",
            )
            check(self.ckpt is None, "ckpt", "is for runtime torch; runtime onnx reads the head file")
            check(
                self.mode != "local",
                "mode",
                "local runs the tail on the device, which needs torch: use runtime torch",
            )
            check(
                self.quantization is None or self.quantization in ONNX_QUANTIZATIONS,
                "quantization",
                f"runtime onnx encodes {', '.join(ONNX_QUANTIZATIONS)} bottlenecks, not {self.quantization}",
            )
            check(
                not self.save_vis or importlib.util.find_spec("torch") is not None,
                "save_vis",
                "draws with torchvision, which this install lacks",
            )
        else:
            check(self.head is None, "head", "is for runtime onnx; runtime torch reads the checkpoint (ckpt)")


def add_offload_arguments(parser: argparse.ArgumentParser) -> None:
    """The offload options of mobile-client and split-bench: quality, format and resize."""
    parser.add_argument(
        "--jpeg-quality", type=int, default=95, metavar="Q", help="offload JPEG or WebP quality (default: %(default)s)"
    )
    parser.add_argument(
        "--offload-format", choices=OFFLOAD_FORMATS, default="jpeg", help="offload image format (default: %(default)s)"
    )
    parser.add_argument(
        "--offload-resize",
        choices=OFFLOAD_RESIZE,
        default="model",
        help="offload resizes each frame to the model's input size (boxes are scaled back) or sends it as it is "
        "(default: %(default)s)",
    )
