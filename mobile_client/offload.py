"""Fair offloading: the image the server's model would see, encoded as JPEG or WebP, and detections mapped back.

The detector's transform scales every image by ``min(min_size / short side, max_size / long side)`` before the
backbone. A device that offloads the full source frame sends pixels the model throws away; a sensible deployment
resizes to the model's input size first (:func:`model_input_size`, the transform's rule), so the server's own
resize is a no-op. Boxes (and keypoints, masks) then come back in the sent image's coordinates and are scaled to
the source frame's (:func:`to_frame_coordinates`).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from splitdet.mobile_client.settings import OFFLOAD_FORMATS


def model_input_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` resizes a ``height`` x ``width`` image to: scale =
    min(min_size / short side, max_size / long side), each side floored (``interpolate`` with
    ``recompute_scale_factor``)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95, size: tuple[int, int] | None = None) -> bytes:
    """``rgb`` (uint8 H x W x 3), resized to ``size`` (height, width; bilinear, as the model resizes) when given,
    as JPEG (OpenCV, 4:2:0) or WebP (Pillow, lossy) at ``quality``."""
    if size is not None and size != rgb.shape[:2]:
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if fmt == "jpeg":
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return data.tobytes()
    if fmt == "webp":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="WEBP", quality=quality, method=4)
        return buf.getvalue()
    raise ValueError(f"unknown offload format {fmt!r} (use {', '.join(OFFLOAD_FORMATS)})")


def to_frame_coordinates(det: dict, sent: tuple[int, int], frame: tuple[int, int]) -> dict:
    """Detections (:func:`splitdet.common.wire.decode_detections`) of an image sent at ``sent`` (height, width) in the
    coordinates of the ``frame`` (height, width) it was resized from: boxes and keypoints scaled, masks resized."""
    if sent == frame:
        return det
    sy, sx = frame[0] / sent[0], frame[1] / sent[1]
    out = dict(det)
    out["boxes"] = det["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
    if "keypoints" in det:
        kps = det["keypoints"].copy()
        kps[..., 0] *= sx
        kps[..., 1] *= sy
        out["keypoints"] = kps
    if "masks" in det:
        from pycocotools import mask as mask_utils  # only mask models need it

        masks = []
        for rle in det["masks"]:
            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            m = cv2.resize(m, (frame[1], frame[0]), interpolation=cv2.INTER_NEAREST)
            enc = mask_utils.encode(np.asfortranarray(m))
            masks.append({"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")})
        out["masks"] = masks
    return out
