"""The background filter (``--background-filter``): a fixed camera's frame that looks like its empty background is
not sent and reports no detections, marked skipped.

The device keeps the *empty background* as the stem averaged over cells of :data:`CELL` x :data:`CELL` stem pixels
(16 x 16 input pixels), learnt from the server's answers: a frame the server answered with no detection of interest
is folded into it (exponential moving average, ``rate``), and so is every frame the filter skipped, so that the
background follows the camera's drift and lighting between answers. A frame's score is the largest mean squared
difference over channels between its cells and the background's; below the threshold it is skipped. The filter
learns only from answers, never from the ground truth, and needs no training: the threshold is chosen on a
calibration clip of the same camera (``python -m studies.filter_background``).

Guards: until the first empty answer there is no background and every frame is sent; at most ``max_skipped``
frames in a row are skipped, then one is sent whatever its score; when a frame that scored below the threshold (sent
only by that rule) comes back with objects, the background has absorbed them and is dropped, to be learnt again
from the next empty answer.
"""

from __future__ import annotations

import threading

import numpy as np

CELL = 4  #: stem pixels per side of a cell (the stem is 1/4 of the input: 16 x 16 input pixels)
DEFAULT_RATE = 0.5
DEFAULT_MAX_SKIPPED = 30  #: one second at 30 fps


def stem_cells(stem: np.ndarray, cell: int = CELL) -> np.ndarray:
    """The mean of a ``[C, H, W]`` stem over ``cell`` x ``cell`` cells: ``[C, ceil(H / cell), ceil(W / cell)]``
    (the last row and column of cells average what is left)."""
    if stem.ndim != 3:
        raise ValueError(f"stem_cells needs a [C, H, W] stem, got shape {stem.shape}")
    rows, cols = np.arange(0, stem.shape[1], cell), np.arange(0, stem.shape[2], cell)
    sums = np.add.reduceat(np.add.reduceat(stem.astype(np.float64), rows, axis=1), cols, axis=2)
    heights = np.diff(np.append(rows, stem.shape[1]))
    widths = np.diff(np.append(cols, stem.shape[2]))
    return (sums / (heights[:, None] * widths[None, :])).astype(np.float32)


def background_score(cells: np.ndarray, background: np.ndarray) -> float:
    """Largest mean squared difference over channels between a frame's cells and the background's; infinite when
    their shapes differ (another frame size)."""
    if cells.shape != background.shape:
        return float("inf")
    return float(((cells - background) ** 2).mean(axis=0).max())


class BackgroundFilter:
    """Decides, frame by frame, whether a frame is skipped as empty background; learns from the server's answers.

    :meth:`check` runs where frames are prepared, :meth:`answer` and :meth:`forget` where their answers are
    collected: another thread in the pipelined path, hence the lock."""

    def __init__(self, threshold: float, rate: float = DEFAULT_RATE, max_skipped: int = DEFAULT_MAX_SKIPPED) -> None:
        if not threshold > 0.0 or not 0.0 < rate <= 1.0 or max_skipped < 1:
            raise ValueError(
                f"need threshold > 0, 0 < rate <= 1 and max_skipped >= 1, got {threshold}, {rate}, {max_skipped}"
            )
        self.threshold = threshold
        self.rate = rate
        self.max_skipped = max_skipped
        self.background: np.ndarray | None = None
        self._pending: dict[int, tuple[np.ndarray, bool]] = {}  # sent frame -> (its cells, scored below threshold)
        self._skipped_in_row = 0
        self._lock = threading.Lock()

    def score(self, cells: np.ndarray) -> float:
        """The frame's score against the current background (infinite without one)."""
        with self._lock:
            return float("inf") if self.background is None else background_score(cells, self.background)

    def check(self, index: int, cells: np.ndarray) -> bool:
        """True: skip frame ``index`` (it looks like the empty background). False: send it; its answer is expected
        through :meth:`answer` or :meth:`forget`."""
        with self._lock:
            quiet = self.background is not None and background_score(cells, self.background) < self.threshold
            if quiet and self._skipped_in_row < self.max_skipped:
                self._skipped_in_row += 1
                self._fold(cells)
                return True
            self._skipped_in_row = 0
            self._pending[index] = (cells, quiet)
            return False

    def answer(self, index: int, empty: bool) -> None:
        """The server answered frame ``index``: ``empty`` when it found no object of interest."""
        with self._lock:
            if index not in self._pending:
                return
            cells, quiet = self._pending.pop(index)
            if empty:
                self._fold(cells)
            elif quiet:  # it looked like the background but holds objects: the background has absorbed them
                self.background = None

    def forget(self, index: int) -> None:
        """Frame ``index`` got no answer (it failed): nothing is learnt from it."""
        with self._lock:
            self._pending.pop(index, None)

    def _fold(self, cells: np.ndarray) -> None:
        if self.background is None or self.background.shape != cells.shape:
            self.background = cells.copy()
        else:
            self.background += self.rate * (cells - self.background)
