"""The HND/GHND bottleneck that replaces ResNet ``layer1``: encoder (mobile side) and decoder (edge side).

The layer order and indices follow the seed's published checkpoints, so their state dicts map one to one.
"""

from __future__ import annotations

from torch import Tensor, nn

STEM_CHANNELS = 64


def _conv(in_ch: int, out_ch: int, padding: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, padding=padding, bias=False)


def build_encoder(channels: int) -> nn.Sequential:
    """Encoder: 64-channel stem output (H/4 x W/4) -> ``channels`` x (H/4+4) x (W/4+4)."""
    return nn.Sequential(
        _conv(STEM_CHANNELS, 64, 1),
        nn.BatchNorm2d(64),
        _conv(64, 256, 1),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        _conv(256, 64, 1),
        nn.BatchNorm2d(64),
        _conv(64, channels, 1),
    )


def build_decoder(channels: int, out_channels: int) -> nn.Sequential:
    """Decoder: bottleneck -> ``out_channels`` x H/4 x W/4, the shape of the replaced ``layer1`` output.

    ``out_channels`` is 256 for ResNet-50 and 64 for ResNet-18/34; the last two convs narrow accordingly.
    """
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        _conv(channels, 64, 0),
        nn.BatchNorm2d(64),
        _conv(64, 128, 0),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        _conv(128, out_channels, 0),
        nn.BatchNorm2d(out_channels),
        _conv(out_channels, out_channels, 0),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """Drop-in replacement for ResNet ``layer1``: ``decoder(encoder(x))``."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        if not 1 <= channels <= 64:
            raise ValueError(f"bottleneck channels must be in 1..64, got {channels}")
        self.channels = channels
        self.encoder = build_encoder(channels)
        self.decoder = build_decoder(channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
