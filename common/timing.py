"""Per-stage timing shared by the torch and the ONNX head (no torch)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(timing: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timing[stage]`` (nothing when ``timing`` is None)."""
    if timing is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[stage] = timing.get(stage, 0.0) + time.perf_counter() - start
