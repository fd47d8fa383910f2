"""Flow decoder: fused patch tokens back to full resolution, three channels (dy, dx, same-type logit)."""

from __future__ import annotations

import math

import torch
from torch import nn

from percs.model.backbone import PATCH_SIZE

OUTPUT_CHANNELS = 3  # dy, dx (FLOW_SCALE x unit flows of all cells), logit of "a cell of the reference's type"


class LayoutGELU(nn.GELU):
    """Exact GELU that keeps a channels-last input's layout and speed: torch's element-wise kernel walks a
    channels-last (N, C, H, W) tensor as a strided one, 2x slower in bfloat16 than on the same memory seen as a
    contiguous (N, H, W, C) tensor, which is what it is given here. The same function as `nn.GELU` (the two
    kernels may round differently in the last bit of a bfloat16)."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        if channels_last and not tensor.is_contiguous():
            return super().forward(tensor.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(tensor)


class FlowDecoder(nn.Module):
    """(B, dim, h, w) -> (B, 3, 14 h, 14 w).

    Transposed convolutions with kernel = stride (strides multiplying to the patch size 14, by default 2 then
    7), each followed by GELU, then a 3 x 3 convolution to the three output channels. Kernel = stride gives no
    checkerboard overlap, but each upsampled pixel depends on one token only, so neighbouring 7 x 7 blocks
    cannot agree at their borders; the final 3 x 3 convolution lets them, where flows must be continuous.

    detail_channels > 0 (not in the paper; 0 by default): a detail branch, two 3 x 3 convolutions of that
    width on the normalised input image at full resolution, concatenated with the upsampled tokens before the
    final convolution. The paper names the cost of its 14-pixel tokens itself (masks "lack refinement", AP
    drops from IoU 0.3 to 0.5); the branch gives the output layer the pixel edges the tokens cannot carry,
    which matters for cells smaller than a patch. It sees only the query window, never the reference.
    detail_dilations: the dilation of each of the branch's 3 x 3 convolutions, one per convolution (default two
    of dilation 1, receptive field 5 px); (1, 2, 4, 8) sees 31 px, a whole small nucleus and its neighbours' edges.
    """

    def __init__(self, dim: int = 256, channels: tuple[int, ...] = (128, 64), strides: tuple[int, ...] = (2, 7),
                 detail_channels: int = 0, detail_dilations: tuple[int, ...] = (1, 1)):
        super().__init__()
        check_dilations(detail_dilations)
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {channels} and strides {strides} must be non-empty and of equal length")
        if math.prod(strides) != PATCH_SIZE:
            raise ValueError(
                f"strides {strides} multiply to {math.prod(strides)}, expected the patch size {PATCH_SIZE}"
            )
        layers: list[nn.Module] = []
        previous = dim
        for width, stride in zip(channels, strides):
            layers += [nn.ConvTranspose2d(previous, width, kernel_size=stride, stride=stride), LayoutGELU()]
            previous = width
        self.layers = nn.Sequential(*layers)
        self.detail = None
        if detail_channels:
            detail: list[nn.Module] = []
            for index, dilation in enumerate(detail_dilations):
                detail += [nn.Conv2d(3 if index == 0 else detail_channels, detail_channels, 3, padding=dilation,
                                     dilation=dilation), LayoutGELU()]
            self.detail = nn.Sequential(*detail)
        self.output = nn.Conv2d(previous + detail_channels, OUTPUT_CHANNELS, kernel_size=3, padding=1)

    def forward(self, fused: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """fused (B, dim, h, w), images (B, 3, 14 h, 14 w) (needed with a detail branch) -> (B, 3, 14 h, 14 w).

        With a detail branch, eval mode decodes one window at a time: the full-resolution concatenation of
        upsampled tokens and detail channels of one window is reused from the CPU's cache, a batch's (150 MB at
        8 windows of 224) is not; this makes the decoder 1.4x faster on a 2-core CPU (bench/README.md), and
        makes no difference without the branch. Each window's output is the batch's up to rounding. Training
        decodes the batch at once (its backward pass holds every activation anyway). Each window goes through
        in channels-last layout, which oneDNN's convolutions take without reordering (1.3x on this decoder in
        bfloat16 and float32, with `LayoutGELU`; docs/large_images.md); the output is contiguous."""
        if not self.training and self.detail is not None:
            return torch.cat([self._decode(_channels_last(fused, i), _channels_last(images, i))
                              for i in range(len(fused))]).contiguous()
        return self._decode(fused, images)

    def _decode(self, fused: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        upsampled = self.layers(fused)
        if self.detail is not None:
            if images is None or images.shape[-2:] != upsampled.shape[-2:]:
                shape = None if images is None else tuple(images.shape)
                raise ValueError(f"images has shape {shape}, the decoder's detail branch needs (B, 3, "
                                 f"{upsampled.shape[-2]}, {upsampled.shape[-1]})")
            upsampled = torch.cat((upsampled, self.detail(images.to(upsampled.dtype))), dim=1)
        return self.output(upsampled)


def check_dilations(dilations, name: str = "detail_dilations") -> None:
    """Raises a ValueError naming `name` unless dilations is a non-empty sequence of integers >= 1."""
    if isinstance(dilations, (str, bytes)) or not hasattr(dilations, "__len__") or not len(dilations) or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
        raise ValueError(f"{name} must be a non-empty list of integers >= 1, got {dilations!r}")


def _channels_last(tensor: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Window `index` of tensor (kept 4-D) in channels-last layout; None stays None."""
    return None if tensor is None else tensor[index : index + 1].contiguous(memory_format=torch.channels_last)
