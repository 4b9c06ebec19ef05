"""What the user chose for the client (no torch, so the command line is checked before the model loads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.codec_settings import CodecSettings

CLIENT_MODES = ("split", "offload", "local", "auto")
RUNTIMES = ("torch", "onnx")  #: what runs the head on the device


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
