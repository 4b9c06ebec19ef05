"""Stage two of Entropic Student training: the device's half fixed, the server's half trained on what it receives.

Entropic Student (Matsubara et al., WACV 2022) trains in two stages: first the bottleneck and its entropy model
(feature loss + beta x rate, :mod:`splitdet.distill.entropic`), then, with the encoder and the entropy model frozen, the
decoder and everything after it with the task's own loss. Here the task loss is torchvision's detection losses on
the ground truth, and the decoder is fed exactly what the edge server decodes: every image's bottleneck goes through
:func:`splitdet.common.wire.encode_frame` and :func:`splitdet.common.wire.decode_frame` with the checkpoint's own codec
(rANS with its tables, or 8-bit + zstd for a GHND student). The stem, the encoder and the codec do not change, so the
bytes on the wire and the client stay exactly as they were; only the tail (and the tail's digest) does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from splitdet.common.checkpoint import Checkpoint
from splitdet.common.shapes import BatchMeta
from splitdet.common.split import split
from splitdet.common.wire import FrameLimits, decode_frame, encode_frame

#: parameters of these modules stay fixed: what the device computes (the neural filter reads the stem too)
DEVICE_SIDE = ("backbone.body.conv1.", "backbone.body.bn1.", "backbone.body.layer1.encoder.", "neural_filter.")


class TailFinetune(nn.Module):
    """``forward(images, targets)`` -> torchvision's detection losses, the tail run on the decoded bottleneck."""

    def __init__(self, model: GeneralizedRCNN, checkpoint: Checkpoint) -> None:
        super().__init__()
        if not model.config.is_student:
            raise ValueError("fine-tuning the tail needs a student (a model with a bottleneck)")
        self.model = model
        self.head, self.tail = split(model)
        self.codec = checkpoint.codec
        self.tables = checkpoint.entropy
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(DEVICE_SIDE))

    def train(self, mode: bool = True) -> TailFinetune:
        """The device's half stays in eval mode; the tail trains."""
        super().train(mode)
        self.head.eval()
        return self

    def received(self, bottleneck: Tensor, meta: BatchMeta) -> Tensor:
        """What the edge server decodes for each image's bottleneck, one frame per image as the client sends.

        Same-size images (every synthetic set) get exactly the client's bottleneck; in a batch of mixed sizes
        (COCO) the smaller ones are padded to the batch, as in torchvision's own training, which the client, running
        one frame at a time, does not do."""
        decoded = []
        for i in range(bottleneck.shape[0]):
            one = meta.select([i])
            frame = encode_frame(bottleneck[i : i + 1].cpu().numpy(), one, self.codec, entropy_tables=self.tables)
            x, _ = decode_frame(frame, FrameLimits(entropy=self.tables))
            decoded.append(x)
        return torch.cat(decoded).to(bottleneck.device)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.model.transform(images, targets)
        sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        meta = BatchMeta(original, sizes, (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1])))
        with torch.no_grad():
            bottleneck = self.head.encoder(self.head.stem(batch.tensors))
        features = self.tail.features(self.received(bottleneck, meta))
        # GeneralizedRCNN.forward with the backbone replaced by head -> wire -> tail; the RPN and RoI heads are
        # torchvision's own, with their training losses.
        proposals, rpn_losses = self.tail.rpn(ImageList(batch.tensors, batch.image_sizes), features, targets)
        _, roi_losses = self.tail.roi_heads(features, proposals, batch.image_sizes, targets)
        return {**rpn_losses, **roi_losses}
