"""PerCS-DINO model: the DINOv2 backbone and its pretrained weights (the head, losses and predictor follow)."""

from percs.model.backbone import (
    PATCH_SIZE,
    VARIANTS,
    BackboneOutput,
    BackboneSpec,
    DinoVisionTransformer,
    backbone_spec,
    build_backbone,
    interpolate_pos_embed,
)
from percs.model.backbone_weights import checkpoint_url, load_backbone, read_state_dict

__all__ = [
    "PATCH_SIZE",
    "VARIANTS",
    "BackboneOutput",
    "BackboneSpec",
    "DinoVisionTransformer",
    "backbone_spec",
    "build_backbone",
    "checkpoint_url",
    "interpolate_pos_embed",
    "load_backbone",
    "read_state_dict",
]
