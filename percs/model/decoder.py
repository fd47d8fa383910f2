"""Flow decoder: fused patch tokens back to full resolution, three channels (dy, dx, same-type logit)."""

from __future__ import annotations

import math

import torch
from torch import nn

from percs.model.backbone import PATCH_SIZE

OUTPUT_CHANNELS = 3  # dy, dx (FLOW_SCALE x unit flows of all cells), logit of "a cell of the reference's type"


class FlowDecoder(nn.Module):
    """(B, dim, h, w) -> (B, 3, 14 h, 14 w).

    Transposed convolutions with kernel = stride (strides multiplying to the patch size 14, by default 2 then
    7), each followed by GELU, then a 3 x 3 convolution to the three output channels. Kernel = stride gives no
    checkerboard overlap, but each upsampled pixel depends on one token only, so neighbouring 7 x 7 blocks
    cannot agree at their borders; the final 3 x 3 convolution lets them, where flows must be continuous.
    """

    def __init__(self, dim: int = 256, channels: tuple[int, ...] = (128, 64), strides: tuple[int, ...] = (2, 7)):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {channels} and strides {strides} must be non-empty and of equal length")
        if math.prod(strides) != PATCH_SIZE:
            raise ValueError(
                f"strides {strides} multiply to {math.prod(strides)}, expected the patch size {PATCH_SIZE}"
            )
        layers: list[nn.Module] = []
        previous = dim
        for width, stride in zip(channels, strides):
            layers += [nn.ConvTranspose2d(previous, width, kernel_size=stride, stride=stride), nn.GELU()]
            previous = width
        layers.append(nn.Conv2d(previous, OUTPUT_CHANNELS, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.layers(fused)
