"""Split a bottleneck-injected R-CNN into the mobile head and the edge tail.

Head: the model's own transform (normalize, resize, batch) -> stem -> optional neural filter -> encoder.
Tail: decoder -> layer2..4 -> FPN -> RPN -> RoI heads -> postprocess to original image coordinates.
Both halves share the model's modules (no copies); ``out = head(images); tail(out.bottleneck, out.meta)`` equals
``model(images)``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from splitdet.common.filter import DEFAULT_THRESHOLD
from splitdet.common.shapes import BatchMeta, Size, bottleneck_shape  # noqa: F401 (re-exported: the head/tail API)
from splitdet.common.timing import timed


@dataclass
class HeadOutput:
    """The head's result for a batch. ``bottleneck`` and ``meta`` cover only the ``kept`` images."""

    bottleneck: Tensor | None
    meta: BatchMeta
    kept: list[int]
    num_images: int
    object_prob: Tensor | None = field(default=None)
    stem: Tensor | None = field(default=None)  #: the stem output of the kept images (the background filter's input)

    @property
    def skipped(self) -> list[bool]:
        kept = set(self.kept)
        return [i not in kept for i in range(self.num_images)]


def image_tensor(rgb: np.ndarray) -> Tensor:
    """RGB uint8 ``H x W x 3`` -> float ``3 x H x W`` in [0, 1], as torchvision detection models take."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes, values; floats compared as float32)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


class Head(nn.Module):
    """Mobile side: images -> bottleneck (or "skipped" per image when the filter rejects it)."""

    def __init__(self, model: GeneralizedRCNN, filter_threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        body = model.backbone.body
        self.transform = model.transform
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.encoder = body.layer1.encoder
        self.neural_filter = getattr(model, "neural_filter", None)
        self.filter_threshold = filter_threshold
        self.channels = body.layer1.channels

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, BatchMeta]:
        """Normalize, resize and pad into one batch tensor, exactly as the whole model does."""
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, _ = self.transform(images)
        meta = BatchMeta(
            original_sizes=original,
            image_sizes=[(int(h), int(w)) for h, w in batch.image_sizes],
            batch_shape=(int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1])),
        )
        return batch.tensors, meta

    def object_probability(self, stem: Tensor) -> Tensor:
        if self.neural_filter is None:
            raise RuntimeError("this model has no neural filter")
        return self.neural_filter.object_probability(stem)

    def forward(
        self, images: list[Tensor], use_filter: bool | None = None, timing: dict[str, float] | None = None
    ) -> HeadOutput:
        """Run the head; ``use_filter=None`` uses the filter when the model has one.

        With ``timing``, the seconds spent are added under ``"head"`` (preprocess, stem, encoder) and ``"filter"``.
        """
        with timed(timing, "head"):
            x, meta = self.preprocess(images)
            stem = self.stem(x)
        use_filter = self.neural_filter is not None if use_filter is None else use_filter
        prob = None
        kept = list(range(len(images)))
        if use_filter:
            with timed(timing, "filter"):
                prob = self.object_probability(stem)
            kept = [i for i in kept if float(prob[i]) >= self.filter_threshold]
            if not kept:
                return HeadOutput(None, meta.select([]), [], len(images), prob)
            if len(kept) < len(images):
                stem = stem[kept]
                meta = meta.select(kept)
        with timed(timing, "head"):
            bottleneck = self.encoder(stem)
        return HeadOutput(bottleneck, meta, kept, len(images), prob, stem)

    def digest(self) -> str:
        """Digest of the weights that shape the bottleneck (stem + encoder; the filter does not)."""
        return state_digest(nn.ModuleDict({"stem": self.stem, "encoder": self.encoder}))


class Tail(nn.Module):
    """Edge side: bottleneck + :class:`BatchMeta` -> detections in original image coordinates."""

    def __init__(self, model: GeneralizedRCNN) -> None:
        super().__init__()
        body = model.backbone.body
        self.decoder = body.layer1.decoder
        self.layers = nn.ModuleDict({name: getattr(body, name) for name in ("layer2", "layer3", "layer4")})
        self.return_layers = dict(body.return_layers)
        self.fpn = model.backbone.fpn
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.transform = model.transform
        self.channels = body.layer1.channels

    def features(self, bottleneck: Tensor) -> OrderedDict[str, Tensor]:
        """FPN features, as ``model.backbone`` computes them from the image batch."""
        x = self.decoder(bottleneck)
        out = OrderedDict([(self.return_layers["layer1"], x)])
        for name, layer in self.layers.items():
            x = layer(x)
            out[self.return_layers[name]] = x
        return self.fpn(out)

    def forward(self, bottleneck: Tensor, meta: BatchMeta) -> list[dict[str, Tensor]]:
        if bottleneck.shape[0] != len(meta.image_sizes):
            raise ValueError(f"bottleneck holds {bottleneck.shape[0]} images, meta {len(meta.image_sizes)}")
        features = self.features(bottleneck)
        # The RPN's anchor generator reads only the shape, dtype and device of the padded image batch, so a
        # zero-stride view stands in for the images the tail never sees (no allocation).
        placeholder = bottleneck.new_empty(()).expand(bottleneck.shape[0], 3, *meta.batch_shape)
        images = ImageList(placeholder, list(meta.image_sizes))
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        return self.transform.postprocess(detections, images.image_sizes, list(meta.original_sizes))

    def digest(self) -> str:
        """Digest of every weight after the bottleneck."""
        return state_digest(self)


def split(model: GeneralizedRCNN, filter_threshold: float = DEFAULT_THRESHOLD) -> tuple[Head, Tail]:
    """Split a student built by :func:`splitdet.common.models.build_model` into ``(head, tail)``."""
    layer1 = getattr(model.backbone.body, "layer1", None)
    if not hasattr(layer1, "encoder"):
        raise ValueError("only a bottleneck-injected student can be split; this model has an ordinary layer1")
    return Head(model, filter_threshold), Tail(model)
