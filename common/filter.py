"""Neural filters: small CNNs on the stem output that say whether a frame holds an object of interest.

Two layouts, one API (``object_probability(stem) -> [N]``):

* :class:`PresenceFilter` (``filter_arch="presence"``, what ``split-distill`` trains): a fully convolutional
  presence map at 1/16 of the input resolution, trained densely (which cells hold the centre of an object of
  interest) and read out as its maximum, so it works at any input size and an object anywhere counts;
* :class:`NeuralFilter` (``filter_arch="seed"``): the seed's classifier layout, kept so that the seed's published
  checkpoints load and run unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from splitdet.common.bottleneck import STEM_CHANNELS

DEFAULT_THRESHOLD = 0.01
FILTER_ARCHS = ("seed", "presence")
PRESENCE_STRIDE = 4  #: the presence map's cell size in stem pixels (16 input pixels)


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


def _block(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=padding, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class PresenceFilter(nn.Module):
    """Presence map on the 64-channel stem output; P(object) of a frame is the sigmoid of the map's maximum.

    About 38 M multiply-adds on a 40x40 stem (a 160x160 input): 12 % of the 3-channel head (stem + encoder).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_block(STEM_CHANNELS, 48, kernel_size=1),
            *_block(48, width, stride=2),
            *_block(width, width),
            *_block(width, width, stride=2),
            *_block(width, width, dilation=2),
        )
        self.classifier = nn.Conv2d(width, 1, kernel_size=1)

    def presence_map(self, stem: Tensor) -> Tensor:
        """Logits ``[N, h, w]`` per cell of ``PRESENCE_STRIDE`` stem pixels: "the centre of an object is here"."""
        return self.classifier(self.body(stem))[:, 0]

    def forward(self, stem: Tensor) -> Tensor:
        """Frame logits ``[N]``: the presence map's maximum."""
        return self.presence_map(stem).amax(dim=(1, 2))

    def object_probability(self, stem: Tensor) -> Tensor:
        """P(object) per image, ``[N]``."""
        return torch.sigmoid(self(stem))


def build_filter(arch: str) -> nn.Module:
    """The neural filter of layout ``arch`` (one of :data:`FILTER_ARCHS`)."""
    if arch == "presence":
        return PresenceFilter()
    if arch == "seed":
        return NeuralFilter()
    raise ValueError(f"filter_arch must be one of {', '.join(FILTER_ARCHS)}, got {arch!r}")
