"""What the user chose for the client (no torch, so the command line is checked before the model loads)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from splitdet.common.codec_settings import CodecSettings
from splitdet.mobile_client.background import DEFAULT_MAX_SKIPPED, DEFAULT_RATE

OFFLOAD_FORMATS = ("jpeg", "webp")
OFFLOAD_RESIZE = ("model", "source")
CLIENT_MODES = ("split", "offload", "local", "auto")
RUNTIMES = ("torch", "onnx")  #: what runs the head on the device
DEFAULT_MAX_REUSED = 30  #: --skip-static-max: frames in a row that may reuse one answer (one second at 30 fps)


class SetupError(RuntimeError):
    """The client cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class Options:
    mode: str = "split"
    use_filter: bool = False
    codec: CodecSettings = field(default_factory=CodecSettings)
    jpeg_quality: int = 95
    score_threshold: float = 0.5
    window: int = 4  #: most frames in flight (file sources; the flow-control window adapts below it)
    live: bool = False  #: a live source: one frame in flight, the latest wins, older ones are dropped
    offload_format: str = "jpeg"  #: jpeg or webp (quality: jpeg_quality)
    offload_size: tuple[int, int] | None = None  #: (min_size, max_size) of the model: resize to its input first
    skip_static: float = 0.0  #: split frames changed less than this from the last frame sent reuse its answer; 0 off
    skip_static_max: int = DEFAULT_MAX_REUSED  #: most frames in a row that reuse one answer
    background_filter: float = 0.0  #: split frames scoring below this against the empty background are skipped; 0 off
    background_rate: float = DEFAULT_RATE  #: how fast the background follows the frames it learns from
    background_max_skipped: int = DEFAULT_MAX_SKIPPED  #: most frames in a row the background filter skips


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
