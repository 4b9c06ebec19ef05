"""The neural filter: a small CNN on the stem output that predicts whether a frame holds an object of interest."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.bottleneck import STEM_CHANNELS

DEFAULT_THRESHOLD = 0.01


class NeuralFilter(nn.Module):
    """Binary classifier (no object / object) on the 64-channel stem output; the seed's layer layout."""

    def __init__(self) -> None:
        super().__init__()
        self.extractor = nn.Sequential(
            nn.AdaptiveAvgPool2d((64, 64)),
            nn.Conv2d(STEM_CHANNELS, 64, kernel_size=4, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 32, kernel_size=3, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, kernel_size=2),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((8, 8)),
        )
        self.linear = nn.Linear(16 * 8 * 8, 2)

    def forward(self, stem: Tensor) -> Tensor:
        """Logits ``[N, 2]``: index 1 is "holds an object of interest"."""
        return self.linear(torch.flatten(self.extractor(stem), 1))

    def object_probability(self, stem: Tensor) -> Tensor:
        """P(object) per image, ``[N]``."""
        return torch.softmax(self(stem), dim=1)[:, 1]
