"""A teacher's ``layer1`` rebuilt from a student: when only a trained HND/GHND student is kept, its stem, layer2..4,
FPN and heads are still the teacher's (distillation froze them), and its decoder was trained to reproduce the
teacher's ``layer1`` output. A fresh ResNet ``layer1`` trained to reproduce that decoder output gives back a plain
teacher backbone in a few hundred small steps, instead of training the teacher again from scratch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from splitdet.common.split import Head


def _stem(body: nn.Module, x: Tensor) -> Tensor:
    return body.maxpool(body.relu(body.bn1(body.conv1(x))))


def recover_layer1(
    model: nn.Module,
    student: nn.Module,
    dataset: Dataset,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
) -> tuple[float, float]:
    """Train ``model.backbone.body.layer1`` so that it maps the stem output to what ``student``'s bottleneck
    (encoder, decoder) does, on images of ``dataset`` in order; the rest of ``model`` is untouched. Returns the mean
    squared error of the first and the last step."""
    if steps < 1:
        raise ValueError(f"layer1 recovery needs steps >= 1, got {steps}")
    body, source = model.backbone.body, student.backbone.body
    head = Head(student.eval())
    layer1 = body.layer1
    was_training = layer1.training
    flags = [p.requires_grad for p in layer1.parameters()]
    for p in layer1.parameters():
        p.requires_grad_(True)
    layer1.train()
    optimizer = torch.optim.Adam(layer1.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses: list[float] = []
    index = 0
    for _ in range(steps):
        images = []
        for _ in range(batch_size):
            images.append(dataset[index % len(dataset)][0])
            index += 1
        with torch.no_grad():
            batch, _ = head.preprocess(images)
            stem = _stem(source, batch)
            target = source.layer1(stem)
        loss = nn.functional.mse_loss(layer1(stem), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    for p, flag in zip(layer1.parameters(), flags, strict=True):
        p.requires_grad_(flag)
    layer1.train(was_training)
    return losses[0], losses[-1]
