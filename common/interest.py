"""What counts as an object of interest, on both sides: an object at least :data:`MIN_OBJECT_FRACTION` of the
image's shorter side across (the square root of its area). Smaller objects are ones the teacher finds less than
40 % of the time (``studies/results/filter_curve.md``); a frame holding only such objects counts as empty for
the filters, in training, evaluation and on the device alike. No torch: the device client imports it."""

from __future__ import annotations

from collections.abc import Sequence

#: 16 px at 160x160, 48 px at 640x480
MIN_OBJECT_FRACTION = 0.1


def box_of_interest(box: Sequence[float], image_size: tuple[int, int]) -> bool:
    """Whether a detected ``[x0, y0, x1, y1]`` box in an image of ``image_size`` (h, w) is large enough to be of
    interest (its area stands for the object's)."""
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    return area**0.5 >= MIN_OBJECT_FRACTION * min(image_size)
