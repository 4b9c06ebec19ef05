"""Low-level raster helpers: fixed-point coordinates for cv2, colours, value noise, ramps and stripes."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

FIXED_SHIFT = 4
FIXED_ONE = 1 << FIXED_SHIFT


def fixed_point(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> int32 fixed point for cv2 drawing with ``shift=FIXED_SHIFT``."""
    return np.round(np.asarray(pts, dtype=np.float64) * FIXED_ONE).astype(np.int32)


def random_color(
    rng: np.random.Generator, sat: tuple[float, float] = (0.05, 0.85), val: tuple[float, float] = (0.15, 0.95)
) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], dtype=np.float32) * 255.0


# Speed notes (2-core CPU budget of a few ms per 160x160 image): numpy broadcasting of (h, w, 1) or
# (3,) operands against (h, w, 3) runs an inner loop of length 3 and is ~10x slower than same-shape
# arithmetic, so single-channel maps are expanded with ``gray_to_rgb`` and colour vectors are applied with
# OpenCV scalar arithmetic (``cv_scalar``).


def gray_to_rgb(m: np.ndarray) -> np.ndarray:
    """(h, w) float32 map -> (h, w, 3) with the map in every channel."""
    return cv2.cvtColor(np.ascontiguousarray(m, dtype=np.float32), cv2.COLOR_GRAY2RGB)


def cv_scalar(c: np.ndarray) -> tuple[float, float, float, float]:
    """Colour vector -> OpenCV scalar."""
    return (float(c[0]), float(c[1]), float(c[2]), 0.0)


def upsampled_grid(rng: np.random.Generator, gy: int, gx: int, channels: int, h: int, w: int) -> np.ndarray:
    """Random (gy, gx, channels) grid bicubically upsampled to float32 in ~[0, 1]; (h, w) if one channel.

    The grid is uint8 on purpose: OpenCV's bicubic resize is SIMD-fast for uint8 and several times
    slower for float (and BLAS-based separable products hit thread start-up costs on small CPUs).
    """
    grid = rng.integers(0, 256, size=(gy, gx, channels), dtype=np.uint8)
    up = cv2.resize(grid if channels > 1 else grid[..., 0], (w, h), interpolation=cv2.INTER_CUBIC)
    return up.astype(np.float32) * np.float32(1.0 / 255.0)


def value_noise(
    rng: np.random.Generator, h: int, w: int, channels: int, cells: float, octaves: int = 1, persistence: float = 0.5
) -> np.ndarray:
    """Multi-octave value noise in ~[0, 1], shape (h, w, channels) or (h, w) for one channel;
    ``cells`` = grid cells on the long side of the coarsest octave.

    The octaves are summed on the finest octave's small grid (coarser grids bicubically upsampled to
    it), so only one full-size resize is needed.
    """
    long_side = max(h, w)

    def grid_shape(c: float) -> tuple[int, int]:
        return max(2, math.ceil(c * h / long_side) + 1), max(2, math.ceil(c * w / long_side) + 1)

    gy, gx = grid_shape(cells * 2 ** (octaves - 1))
    acc = np.zeros((gy, gx, channels), dtype=np.float32)
    total = 0.0
    amp = 1.0
    for _ in range(octaves):
        oy, ox = grid_shape(cells)
        grid = rng.random((oy, ox, channels), dtype=np.float32)
        if (oy, ox) != (gy, gx):
            grid = cv2.resize(grid, (gx, gy), interpolation=cv2.INTER_CUBIC).reshape(gy, gx, channels)
        acc += np.float32(amp) * grid
        total += amp
        amp *= persistence
        cells *= 2.0
    q = np.clip(acc * np.float32(255.0 / total) + np.float32(0.5), 0, 255).astype(np.uint8)
    up = cv2.resize(q if channels > 1 else q[..., 0], (w, h), interpolation=cv2.INTER_CUBIC)
    return up.astype(np.float32) * np.float32(1.0 / 255.0)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ramp(h: int, w: int, angle: float) -> np.ndarray:
    """Linear ramp in [-1, 1] along direction ``angle`` (radians), shape (h, w)."""
    gx = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    gy = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    return gx[None, :] * np.float32(math.cos(angle)) + gy[:, None] * np.float32(math.sin(angle))


def stripes(h: int, w: int, angle: float, period: float, phase: float, hardness: float) -> np.ndarray:
    """Stripe pattern in [-1, 1] with ``period`` pixels; ``hardness`` > 1 makes it square-ish."""
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    t = xs[None, :] * np.float32(math.cos(angle)) + ys[:, None] * np.float32(math.sin(angle))
    s = np.sin(t * np.float32(2 * math.pi / period) + np.float32(phase))
    return np.tanh(hardness * s) / np.float32(math.tanh(hardness))
