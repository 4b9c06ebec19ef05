"""Skipping what has not changed (``--skip-static``): a split frame whose bottleneck is close to that of the last
frame sent is not sent; it reports that frame's detections instead, marked as reused.

The change measure is :func:`change`: the mean absolute difference between the two bottlenecks divided by the mean
absolute value of the reference (the last frame sent), over the whole float32 bottleneck. It is scale-free (the
same for any scaling of both bottlenecks), so one threshold fits any checkpoint's bottleneck range, and it is
measured against the last frame *sent*, not the previous frame, so a slow drift adds up until it crosses the
threshold. The gate needs only the numpy bottleneck, so the torch and the ONNX head use it alike.
"""

from __future__ import annotations

import threading

import numpy as np

from splitdet.mobile_client.settings import DEFAULT_MAX_REUSED


def change(reference: np.ndarray, current: np.ndarray) -> float:
    """``mean |current - reference| / mean |reference|``; infinite when the shapes differ or the reference is all
    zeros (and the current frame is not)."""
    if reference.shape != current.shape:
        return float("inf")
    diff = float(np.mean(np.abs(current - reference), dtype=np.float64))
    scale = float(np.mean(np.abs(reference), dtype=np.float64))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


class StaticGate:
    """Decides, frame by frame, whether a split frame is sent or reuses the answer of the last frame sent.

    :meth:`check` and :meth:`reset` run where frames are prepared, :meth:`forget` where their answers are collected:
    another thread in the pipelined path, hence the lock."""

    def __init__(self, threshold: float, max_reused: int = DEFAULT_MAX_REUSED) -> None:
        if not threshold >= 0.0 or max_reused < 1:
            raise ValueError(f"need threshold >= 0 and max_reused >= 1, got {threshold} and {max_reused}")
        self.threshold = threshold
        self.max_reused = max_reused
        self._reference: np.ndarray | None = None
        self._reference_index: int | None = None
        self._reused_in_row = 0
        self._lock = threading.Lock()

    def check(self, index: int, bottleneck: np.ndarray) -> int | None:
        """The index of the frame whose answer frame ``index`` reuses, or None: send it (it becomes the
        reference)."""
        with self._lock:
            if (
                self._reference is not None
                and self._reused_in_row < self.max_reused
                and change(self._reference, bottleneck) < self.threshold
            ):
                self._reused_in_row += 1
                return self._reference_index
            self._reference, self._reference_index, self._reused_in_row = bottleneck, index, 0
            return None

    def forget(self, index: int) -> None:
        """Frame ``index`` was not answered (it failed): when it is the reference, the next frame is sent."""
        with self._lock:
            if self._reference_index == index:
                self._reference, self._reference_index = None, None

    def reset(self) -> None:
        """No reference: the next split frame is sent (e.g. after a frame went in another mode)."""
        with self._lock:
            self._reference, self._reference_index = None, None
