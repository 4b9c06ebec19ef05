"""HND / GHND: train the student's bottleneck to reproduce the teacher's backbone outputs.

HND matches ``layer1``; GHND matches ``layer1``..``layer4`` (summed MSE). Only the backbone up to the deepest
matched layer runs; the RPN and RoI heads run only when the optional detection-loss weight is non-zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from splitdet.distill.config import Term

TRAINABLE_PREFIX = "backbone.body.layer1."


def backbone_outputs(model: GeneralizedRCNN, x: Tensor, upto: int) -> list[Tensor]:
    """Outputs of ``layer1``..``layer{upto}`` for a normalized, batched image tensor."""
    body = model.backbone.body
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    outs = []
    for i in range(1, upto + 1):
        x = getattr(body, f"layer{i}")(x)
        outs.append(x)
    return outs


def freeze_all_but_bottleneck(student: GeneralizedRCNN) -> list[nn.Parameter]:
    """Freeze every student parameter except the bottleneck (``layer1``); return the trainable ones."""
    trainable = []
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith(TRAINABLE_PREFIX))
        if p.requires_grad:
            trainable.append(p)
    return trainable


class HeadMimic(nn.Module):
    """``forward(images, targets)`` -> dict of losses for one distillation step."""

    def __init__(
        self,
        student: GeneralizedRCNN,
        teacher: GeneralizedRCNN,
        terms: Sequence[Term],
        reduction: str = "sum",
        detection_loss: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval()
        self.terms = list(terms)
        self.upto = max(t.layer for t in self.terms)
        self.mse = nn.MSELoss(reduction=reduction)
        self.detection_loss = detection_loss
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        freeze_all_but_bottleneck(student)

    def train(self, mode: bool = True) -> HeadMimic:
        """Only the bottleneck ever trains; frozen parts and the teacher stay in eval mode."""
        super().train(False)
        self.student.backbone.body.layer1.train(mode)
        return self

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        batch, _ = self.teacher.transform(images)
        with torch.no_grad():
            wanted = backbone_outputs(self.teacher, batch.tensors, self.upto)
        got = backbone_outputs(self.student, batch.tensors, self.upto)
        losses = {f"layer{t.layer}": t.factor * self.mse(got[t.layer - 1], wanted[t.layer - 1]) for t in self.terms}
        if self.detection_loss > 0:
            if targets is None:
                raise ValueError("a detection-loss weight needs targets")
            self.student.train()
            detection = self.student(images, targets)
            self.train(self.student.backbone.body.layer1.training)
            losses["detection"] = self.detection_loss * sum(detection.values())
        return losses
