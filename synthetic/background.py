"""Natural-looking cluttered backgrounds."""

from __future__ import annotations

import math

import cv2
import numpy as np

from splitdet.synthetic.raster import cv_scalar, gray_to_rgb, ramp, random_color, smoothstep, stripes, value_noise


def render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Natural-looking clutter: coloured multi-scale noise regions, lighting, stripes, soft blobs."""
    c0, c1, c2 = (random_color(rng) for _ in range(3))
    n1 = value_noise(rng, h, w, 1, cells=rng.uniform(1.5, 4.0), octaves=3)
    t1 = smoothstep((n1 - 0.5) * rng.uniform(1.5, 4.0) + 0.5)
    img = cv2.add(cv2.multiply(gray_to_rgb(t1), cv_scalar(c1 - c0)), cv_scalar(c0))
    n2 = value_noise(rng, h, w, 1, cells=rng.uniform(2.0, 5.0), octaves=2)
    m2 = gray_to_rgb(smoothstep((n2 - rng.uniform(0.5, 0.7)) * rng.uniform(4.0, 20.0)))
    img -= m2 * img
    img += cv2.multiply(m2, cv_scalar(c2))
    a_d, a_l = rng.uniform(10, 50), rng.uniform(10, 70)
    img += value_noise(rng, h, w, 3, cells=rng.uniform(5.0, 14.0), octaves=3) * np.float32(a_d)
    lum = value_noise(rng, h, w, 1, cells=rng.uniform(8.0, 24.0), octaves=2) * np.float32(a_l)
    lum -= np.float32(0.5 * (a_d + a_l))
    if rng.random() < 0.5:  # textured stripe region (fabric, floor boards, tiles...)
        region = smoothstep((value_noise(rng, h, w, 1, cells=rng.uniform(1.5, 3.0)) - rng.uniform(0.35, 0.6)) * 8)
        pat = stripes(h, w, rng.uniform(0, math.pi), rng.uniform(3.0, 16.0), rng.uniform(0, 6.3), rng.uniform(0.5, 5.0))
        if rng.random() < 0.3:  # checker / tiles
            pat = pat * stripes(h, w, rng.uniform(0, math.pi), rng.uniform(4.0, 16.0), 0.0, 5.0)
        col = rng.uniform(-1, 1, size=3).astype(np.float32) * np.float32(rng.uniform(15, 55))
        if rng.random() < 0.5:
            img += cv2.multiply(gray_to_rgb(region * pat), cv_scalar(col))
        else:  # achromatic pattern
            lum += region * pat * np.float32(col[0])
    img += gray_to_rgb(lum)
    for _ in range(int(rng.integers(0, 5))):  # soft blobs, blended in their own window only
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        # elongated and clearly soft, so that a blob never passes for an (unannotated) disc
        ax = rng.uniform(0.08, 0.35) * min(h, w) + 1
        ay = ax / rng.uniform(1.4, 3.0)
        angle, col = rng.uniform(0, 180), random_color(rng)
        sigma = max(3.0, rng.uniform(0.15, 0.5) * ay)
        r = max(ax, ay) + 3 * sigma
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        m = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(m, (round(cx - x0), round(cy - y0)), (round(ax), round(ay)), angle, 0, 360, 0.8, -1)
        m3 = gray_to_rgb(cv2.GaussianBlur(m, (0, 0), sigma))
        win = img[y0:y1, x0:x1]
        win -= m3 * win
        win += cv2.multiply(m3, cv_scalar(col))
    img *= gray_to_rgb(1.0 + rng.uniform(0, 0.45) * ramp(h, w, rng.uniform(0, 2 * math.pi)))
    return img
