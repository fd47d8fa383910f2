"""PerCS-DINO model: the DINOv2 backbone and its pretrained weights, the head and the losses.

The predictor (sliding windows, post-processing) is outside the module, in `percs.predict`.
"""

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
from percs.model.losses import LossConfig, LossTerms, percs_loss
from percs.model.percs_dino import HeadConfig, ModelConfig, PerCSDino, PerCSOutput, build_percs_dino

__all__ = [
    "PATCH_SIZE",
    "VARIANTS",
    "BackboneOutput",
    "BackboneSpec",
    "DinoVisionTransformer",
    "HeadConfig",
    "LossConfig",
    "LossTerms",
    "ModelConfig",
    "PerCSDino",
    "PerCSOutput",
    "backbone_spec",
    "build_backbone",
    "build_percs_dino",
    "checkpoint_url",
    "interpolate_pos_embed",
    "load_backbone",
    "percs_loss",
    "read_state_dict",
]
