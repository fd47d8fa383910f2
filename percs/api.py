"""The notebook-facing API: load a trained PerCS-DINO checkpoint once, then segment images with a reference cell.

    from percs.api import load_model
    model, config = load_model("runs/mini/best.pt")          # checksum verified, weights restored

`percs.api.Segmenter` (below) wraps a loaded model with the predictor for many images and one reference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from percs.model.percs_dino import PerCSDino


class ModelLoadError(ValueError):
    """A checkpoint that is not a trained percs model (wrong kind of file, or incompatible weights); names it."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" / None: CUDA when available, else the CPU; anything else as torch.device takes it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device}, but CUDA is not available on this machine")
    return device


def load_model(checkpoint: str | Path, device: str | torch.device | None = "auto"):
    """(model, config): the PerCS-DINO model of a `percs train` checkpoint (last.pt / best.pt), in eval mode on
    `device`, and its resolved `percs.train.TrainConfig`.

    The file's SHA-256 is checked (`percs.train.CheckpointError` when missing or corrupt); a file that is not a
    percs training checkpoint, or whose weights do not fit the model its config describes, raises
    ModelLoadError naming the file. No backbone weight file is read: the checkpoint holds the whole model.
    """
    from percs.train.checkpoint import load_checkpoint
    from percs.train.config import config_from_dict
    from percs.train.setup import build_model

    path = Path(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ModelLoadError(f"checkpoint {path} is not a percs training checkpoint (no 'model' and 'config')")
    try:
        config = config_from_dict(state["config"])
    except ValueError as error:
        raise ModelLoadError(f"checkpoint {path} has an unreadable config: {error}") from None
    model_section = dataclasses.replace(config.model, backbone_weights="")
    if config.model.backbone_weights and config.model.backbone_depth:
        model_section = dataclasses.replace(model_section, backbone_embed_dim=0, backbone_num_heads=0)
    model: PerCSDino = build_model(model_section)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"checkpoint {path}: its weights do not fit its config's model: {error}") from None
    return model.to(resolve_device(device)).eval(), config
