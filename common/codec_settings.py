"""What the head's codec can be set to: quantization, compression and zstd level (no torch, so CLIs parse fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Quantization = Literal["per_tensor", "per_channel", "float16", "none"]
QUANTIZATIONS: tuple[str, ...] = ("per_tensor", "per_channel", "float16", "none")
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

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        check_level(self.level)
