"""What the head's codec can be set to: quantization, compression and zstd level (no torch, so CLIs parse fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Quantization = Literal["per_tensor", "per_channel", "float16", "none", "entropy"]
#: "entropy": integer symbols rANS-coded with the checkpoint's learned tables (``common/entropy.py``); a frame
#: that would code larger than 8-bit per tensor + zstd (``compression``, ``level``) is sent as that instead
QUANTIZATIONS: tuple[str, ...] = ("per_tensor", "per_channel", "float16", "none", "entropy")
COMPRESSIONS: tuple[str, ...] = ("zstd", "raw")


def check_level(level: int) -> None:
    """Refuse a zstd level outside 1..22."""
    if not 1 <= level <= 22:
        raise ValueError(f"zstd level must be in 1..22, got {level}")


@dataclass(frozen=True)
class CodecSettings:
    """How the head encodes a bottleneck for the wire."""

    quantization: str = "per_tensor"
    compression: str = "zstd"
    level: int = 3
    bits: int = 8  #: per_tensor / per_channel: levels 0..2^bits-1 (still one byte each on the wire before zstd)

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in 2..8, got {self.bits}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        check_level(self.level)
