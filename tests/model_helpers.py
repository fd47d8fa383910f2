"""Small randomly initialised PerCS-DINO models for fast CPU tests."""

from __future__ import annotations

import torch

from percs.model.backbone import BackboneSpec, DinoVisionTransformer
from percs.model.percs_dino import HeadConfig, PerCSDino


def tiny_model(generic: bool = False, seed: int = 0, detail_channels: int = 0,
               detail_dilations: tuple[int, ...] = (1, 1)) -> PerCSDino:
    """A one-block, 32-wide backbone under a 32-wide, 2-layer, 4-head head: the real code, a fraction of the cost."""
    torch.manual_seed(seed)
    backbone = DinoVisionTransformer(BackboneSpec(embed_dim=32, depth=1, num_heads=2, ffn="mlp"))
    head = HeadConfig(dim=32, depth=2, num_heads=4, decoder_channels=(16, 8), generic=generic,
                      detail_channels=detail_channels, detail_dilations=detail_dilations)
    return PerCSDino(backbone, head)
