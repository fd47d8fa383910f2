"""PerCS-DINO: DINOv2 backbone, reference embedding, reference-guided fusion and flow decoder in one module.

Data flow for a query window (B, 3, H, W) and a reference (a window of the same size with one cell's mask):

    reference window --backbone--> (B, C, h, w) --pool under the mask--> reference embedding (B, C)
    query window     --backbone--> (B, C, h, w) --ReferenceFusion(., embedding)--> fused (B, 256, h, w)
    fused --FlowDecoder--> (B, 3, H, W): dy, dx (FLOW_SCALE x unit flows), same-type logit

The predictor (sliding windows, flows -> masks) lives in `percs.predict`, the losses in `percs.model.losses`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from percs.model.backbone import DinoVisionTransformer, backbone_spec, build_backbone
from percs.model.backbone_weights import load_backbone
from percs.model.decoder import FlowDecoder, check_dilations
from percs.model.fusion import ReferenceFusion
from percs.model.reference import embed_reference

OFFICIAL_WEIGHTS = "official"  # backbone_weights value that loads the official checkpoint through torch's cache


@dataclass(frozen=True)
class HeadConfig:
    """The head on top of the backbone; defaults are the paper's where it gives them.

    dim, depth, num_heads: fusion transformer width (256), layers (2) and heads (4), as in the paper.
    decoder_channels, decoder_strides: the transposed convolutions (the paper gives none; strides must multiply
    to 14; 128 then 64 channels keep the full-resolution activations small next to the backbone's).
    generic: the "filter" baseline's class-agnostic mode: the reference is ignored and channel 3 is trained
    as "pixel belongs to any cell" (the trainer builds that target); same parameters, no extra architecture.
    detail_channels: width of the decoder's full-resolution detail branch on the input image (not in the
    paper; 0 = the paper's decoder; see `FlowDecoder`); detail_dilations: the dilation of each of its 3 x 3
    convolutions (default two of dilation 1). similarity_scale: gain on the cosine-similarity
    channel (1 = the paper's; see `ReferenceFusion` for why a larger one learns faster).
    similarity_logit: also add a learned affine map of the cosine similarity, a * (s - b), upsampled
    bilinearly to full resolution, to the same-type logit (not in the paper; False = the paper's head). The
    decision then depends on the reference from the first step, as PerSAM's similarity prior does, instead of
    waiting for the transformer to learn to route the similarity through; and the BCE's gradient reaches the
    backbone's features through the cosine, which trains a backbone learned from scratch to tell types apart.
    """

    dim: int = 256
    depth: int = 2
    num_heads: int = 4
    decoder_channels: tuple[int, ...] = (128, 64)
    decoder_strides: tuple[int, ...] = (2, 7)
    generic: bool = False
    detail_channels: int = 0
    detail_dilations: tuple[int, ...] = (1, 1)
    similarity_scale: float = 1.0
    similarity_logit: bool = False

    def __post_init__(self) -> None:
        for key in ("dim", "depth", "num_heads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"head.{key} must be a positive integer, got {value!r}")
        if isinstance(self.detail_channels, bool) or not isinstance(self.detail_channels, int) \
                or self.detail_channels < 0:
            raise ValueError(f"head.detail_channels must be an integer >= 0, got {self.detail_channels!r}")
        check_dilations(self.detail_dilations, "head.detail_dilations")
        object.__setattr__(self, "detail_dilations", tuple(self.detail_dilations))
        if not self.similarity_scale > 0:
            raise ValueError(f"head.similarity_scale must be > 0, got {self.similarity_scale!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"head.num_heads {self.num_heads} does not divide head.dim {self.dim}")
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        object.__setattr__(self, "decoder_strides", tuple(self.decoder_strides))


@dataclass(frozen=True)
class ModelConfig:
    """A PerCS-DINO model: backbone variant (a key of `percs.model.VARIANTS`; the paper uses ViT-L) and head."""

    backbone: str = "vitl14"
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)  # names the bad value


@dataclass
class PerCSOutput:
    """What PerCS-DINO returns for B query windows of H x W pixels.

    flows: (B, 2, H, W) dy, dx in FLOW_SCALE x unit-flow units, for every cell whatever its type.
    same_type_logits: (B, H, W) logit of "this pixel belongs to a cell of the reference's type" (generic: any cell).
    fused: (B, dim, H/14, W/14) the fusion transformer's output, pooled per cell by the contrastive loss.
    features: (B, C, H/14, W/14) the backbone's features the head ran on (None where not kept).
    """

    flows: torch.Tensor
    same_type_logits: torch.Tensor
    fused: torch.Tensor
    features: torch.Tensor | None = None


class PerCSDino(nn.Module):
    """PerCS-DINO around a given backbone (see the module docstring for the data flow)."""

    def __init__(self, backbone: DinoVisionTransformer, head: HeadConfig = HeadConfig()):
        super().__init__()
        self.head_config = head
        self.backbone = backbone
        self.fusion = ReferenceFusion(backbone.spec.embed_dim, head.dim, head.depth, head.num_heads, head.generic,
                                      head.similarity_scale)
        self.decoder = FlowDecoder(head.dim, head.decoder_channels, head.decoder_strides,
                                   head.detail_channels, head.detail_dilations)
        if head.similarity_logit and not head.generic:
            # a = 10, b = 0.5 at the start: a cosine 0.1 above b adds one unit of logit.
            self.similarity_gain = nn.Parameter(torch.tensor(10.0))
            self.similarity_bias = nn.Parameter(torch.tensor(0.5))

    @property
    def generic(self) -> bool:
        """True when the reference is ignored (class-agnostic "filter" baseline)."""
        return self.head_config.generic

    def embed_reference(self, reference_images: torch.Tensor, reference_masks: torch.Tensor) -> torch.Tensor:
        """Reference embeddings (B, C): windows (B, 3, H, W) through the backbone, pooled under masks (B, H, W)."""
        return embed_reference(self.backbone(reference_images).features, reference_masks)

    def forward(self, images: torch.Tensor, reference_embedding: torch.Tensor | None = None) -> PerCSOutput:
        """Query windows (B, 3, H, W), normalised, sides multiples of 14; reference_embedding (B, C) (None or
        ignored when generic)."""
        return self.decode_features(self.backbone(images).features, reference_embedding, images)

    def decode_features(self, features: torch.Tensor, reference_embedding: torch.Tensor | None,
                        images: torch.Tensor | None = None) -> PerCSOutput:
        """The head alone, on backbone features (B, C, h, w), e.g. cached ones of a frozen backbone; images
        (B, 3, 14 h, 14 w), the query windows, are needed when the decoder has a detail branch."""
        fused = self.fusion(features, reference_embedding)
        output = self.decoder(fused, images)
        logits = output[:, 2]
        if hasattr(self, "similarity_gain"):
            similarity = F.cosine_similarity(features, reference_embedding[:, :, None, None], dim=1)[:, None]
            prior = F.interpolate(similarity, size=logits.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            logits = logits + self.similarity_gain * (prior - self.similarity_bias)
        return PerCSOutput(flows=output[:, :2], same_type_logits=logits, fused=fused, features=features)


def build_percs_dino(
    config: ModelConfig = ModelConfig(),
    backbone_weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> PerCSDino:
    """A PerCS-DINO model on `device` (default CPU).

    backbone_weights: None for a randomly initialised backbone (tests, or before loading a whole percs
    checkpoint); a path to an official DINOv2 state dict; or "official" to load the official checkpoint from
    torch's download cache (downloading it once when online). The head is always randomly initialised.
    """
    if backbone_weights is None:
        backbone = build_backbone(config.backbone)
    elif str(backbone_weights) == OFFICIAL_WEIGHTS:
        backbone = load_backbone(config.backbone)
    else:
        backbone = load_backbone(config.backbone, backbone_weights)
    model = PerCSDino(backbone, config.head)
    return model if device is None else model.to(device)
