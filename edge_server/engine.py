"""The model side of the server: load a checkpoint once, pick the device, run batches of bottlenecks or images."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from splitdet.common.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from splitdet.common.split import BatchMeta, Tail, bottleneck_shape, split
from splitdet.common.wire import FrameLimits

MAX_IMAGES_PER_FRAME = 32
MAX_IMAGE_PIXELS = 4096 * 4096  # a 12 MP photo fits; the model runs on ~30 bytes/pixel (500 MB at the limit)
SIZE_DIVISIBLE = 32  # torchvision's GeneralizedRCNNTransform pads batches to multiples of this

Detections = dict[str, Tensor]


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


class ImageError(ValueError):
    """Image bytes that cannot be decoded or are too large."""


class BatchKey(NamedTuple):
    """Requests with equal keys are batched together: same kind and same tensor shape."""

    kind: str  # "bottleneck" or "image"
    shape: tuple[int, ...]

    @classmethod
    def for_bottleneck(cls, bottleneck: Tensor, meta: BatchMeta) -> BatchKey:
        """Channels and padded batch shape (which fixes the bottleneck's spatial size and the anchors)."""
        return cls("bottleneck", (int(bottleneck.shape[1]), *meta.batch_shape))

    @classmethod
    def for_image(cls, image: Tensor) -> BatchKey:
        """Images of one size are resized and padded alike, so batching them changes nothing."""
        return cls("image", tuple(image.shape))


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def describe_device(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """JPEG, PNG or WebP bytes -> uint8 RGB tensor ``[3, H, W]``; :class:`ImageError` when it cannot be.

    The size in the header is checked before any pixel is decoded; images stay uint8 (a quarter of the float
    size) until their batch runs.
    """
    if not data:
        raise ImageError("the image frame carries no image bytes")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG", "WEBP"]) as im:
            if im.width * im.height > max_pixels:
                raise ImageError(f"image of {im.width}x{im.height} pixels exceeds the limit of {max_pixels} pixels")
            rgb = np.array(im.convert("RGB"))
    except ImageError:
        raise
    except Exception as e:  # PIL raises many types on bad input; all mean "not a decodable image"
        raise ImageError(f"cannot decode the image (JPEG, PNG or WebP expected): {e}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _to_cpu(detections: list[Detections]) -> list[Detections]:
    return [{k: v.cpu() for k, v in d.items()} for d in detections]


@dataclass
class Engine:
    """One checkpoint on one device: the tail for bottleneck frames, the whole model for images (shared weights)."""

    checkpoint: Checkpoint
    model: GeneralizedRCNN
    tail: Tail
    device: torch.device
    fingerprint: str
    limits: FrameLimits

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Engine:
        """Load ``path`` (a bottleneck student) onto ``device``; raises CheckpointError or DeviceError."""
        target = resolve_device(device)
        ckpt = load_checkpoint(path)
        if not ckpt.config.is_student:
            raise CheckpointError(f"{path} holds a teacher; the edge server needs a bottleneck-injected student")
        model = ckpt.build_model()
        _, tail = split(model, ckpt.filter_threshold)
        fingerprint = ckpt.side_fingerprint(tail=tail)
        model.to(target)
        return cls(ckpt, model, tail, target, fingerprint, frame_limits(ckpt))

    @property
    def description(self) -> str:
        return describe_device(self.device)

    def decode_image(self, data: bytes) -> Tensor:
        """:func:`decode_image`, also refusing images that the model's resize would squash to zero pixels."""
        image = decode_image(data)
        h, w = (int(v) for v in image.shape[-2:])
        transform = self.model.transform
        scale = min(transform.min_size[-1] / min(h, w), transform.max_size / max(h, w))  # as torchvision resizes
        if math.floor(min(h, w) * scale) < 1:
            raise ImageError(
                f"image of {w}x{h} pixels is too elongated: resized to at most {transform.max_size} pixels per side "
                "for the model, it would be 0 pixels across"
            )
        return image

    def run_batch(self, key: BatchKey, items: list[Any]) -> list[list[Detections]]:
        """The batcher's entry point: each item's detections (a list with one dict per image)."""
        if key.kind == "bottleneck":
            return self.infer_bottlenecks(items)
        return [[d] for d in self.infer_images(items)]

    def infer_bottlenecks(self, frames: list[tuple[Tensor, BatchMeta]]) -> list[list[Detections]]:
        """One tail call for frames of one bottleneck shape and batch shape; each frame's detections."""
        meta = BatchMeta(
            [s for _, m in frames for s in m.original_sizes],
            [s for _, m in frames for s in m.image_sizes],
            frames[0][1].batch_shape,
        )
        with torch.inference_mode(), self._autocast():
            x = torch.cat([b for b, _ in frames]).to(self.device)
            detections = _to_cpu(self.tail(x, meta))
        out, start = [], 0
        for _, m in frames:
            out.append(detections[start : start + len(m.image_sizes)])
            start += len(m.image_sizes)
        return out

    def infer_images(self, images: list[Tensor]) -> list[Detections]:
        """The whole model (pure offloading) on decoded uint8 images; one detections dict per image."""
        with torch.inference_mode(), self._autocast():
            return _to_cpu(self.model([im.to(self.device).float().div_(255) for im in images]))

    def _autocast(self) -> torch.autocast:
        """fp16 autocast on CUDA (convolutions and matmuls in half precision, boxes and NMS in fp32); off on CPU."""
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")


def frame_limits(ckpt: Checkpoint) -> FrameLimits:
    """Refuse frames bigger than any head of this checkpoint makes: at most ``max_size`` pixels per padded side."""
    channels = ckpt.config.bottleneck_channels
    side = -(-ckpt.config.max_size // SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    c, h, w = bottleneck_shape(channels, (side, side))
    return FrameLimits(
        channels=channels,
        max_images=MAX_IMAGES_PER_FRAME,
        max_elements=MAX_IMAGES_PER_FRAME * c * h * w,
        entropy=ckpt.entropy,
    )
