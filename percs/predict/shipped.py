"""The model that ships with percs, and head-only model files in general.

A head-only file is a percs checkpoint without its frozen DINOv2 backbone, whose weights are public and large
(ViT-S/14: 88 MB): the head (fusion and decoder) and the instance scorer in float16, the config, the training
record and the backbone's fingerprint (`percs.train.scorer.backbone_fingerprint`). `percs export-model` writes
one; `load_model` reads one and takes the backbone from, in this order,

1. `backbone_weights`: a file given by the caller (`--backbone-weights FILE`);
2. `$PERCS_SHARED/weights/<official file name>` when PERCS_SHARED is set and the file is there;
3. the official download, once, into torch's hub cache,

and refuses weights whose fingerprint is not the one the head was trained on. `DEFAULT_MODEL` is the package's
own head-only model, used when no checkpoint is given.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

DEFAULT_MODEL_NAME = "percs_mini_instance_vits14.pt"
HEAD_ONLY = "head_only"


def default_model() -> Path:
    """The path of the model shipped inside the package (percs/models/)."""
    return Path(str(resources.files("percs") / "models" / DEFAULT_MODEL_NAME))


def export_head(checkpoint: str | Path, out: str | Path) -> dict:
    """Writes `out`: the model of `checkpoint` (a `percs train` checkpoint, with or without an instance scorer)
    without its backbone, the rest in float16, with the backbone's fingerprint. Returns the head-only record.
    ValueError when the backbone was trained (a fine-tuned backbone is part of the model) or cut to fewer blocks."""
    from percs.predict.api import load_model
    from percs.train.checkpoint import load_checkpoint, save_checkpoint
    from percs.train.scorer import backbone_fingerprint

    model, config = load_model(checkpoint, "cpu")
    if not config.optim.freeze_backbone:
        raise ValueError(f"{checkpoint}: its backbone was fine-tuned (optim.freeze_backbone false); only a frozen "
                         "pretrained backbone can be left out of the file")
    if config.model.backbone_weights and config.model.backbone_depth:
        raise ValueError(f"{checkpoint}: its backbone is cut to {config.model.backbone_depth} blocks; the official "
                         "weights would not fit it")
    state = load_checkpoint(checkpoint)
    head = {k: _half(v) for k, v in state["model"].items() if not k.startswith("backbone.")}
    record = {"backbone": config.model.backbone, "backbone_fingerprint": backbone_fingerprint(model.backbone),
              "source_checkpoint": Path(checkpoint).name}
    exported = {"format": state.get("format"), "config": state["config"], "model": head,
                "trained_on": state.get("trained_on"), HEAD_ONLY: record}
    if state.get("instance") is not None:
        instance = dict(state["instance"])
        instance["scorer"] = half_state(instance["scorer"])
        exported["instance"] = instance
    save_checkpoint(exported, out)
    return record


def half_state(state: dict) -> dict:
    """A state dict with its floating-point tensors in float16 (how head-only files store the head and scorer)."""
    return {k: _half(v) for k, v in state.items()}


def _half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half() if tensor.is_floating_point() else tensor


def given_weights_file(given: str | Path | None) -> Path | None:
    """`given` (--backbone-weights) as a Path, None when not given; ValueError naming the option when the file
    does not exist (the command lines check it before a model loads)."""
    if not given:
        return None
    path = Path(given)
    if not path.is_file():
        raise ValueError(f"--backbone-weights {path} does not exist")
    return path


def backbone_weights_file(name: str, given: str | Path | None = None) -> Path | None:
    """The backbone weights file to read (see the module docstring), or None for the official download.
    ValueError naming the option when `given` does not exist."""
    from percs.model.backbone_weights import checkpoint_url

    if given:
        return given_weights_file(given)
    shared = os.environ.get("PERCS_SHARED")
    if shared:
        path = Path(shared) / "weights" / checkpoint_url(name).rsplit("/", 1)[1]
        if path.is_file():
            return path
    return None


def load_head_backbone(model, record: dict, given: str | Path | None, checkpoint: Path) -> None:
    """Fills model.backbone (built randomly) with the weights `backbone_weights_file` finds; ValueError naming
    the file when they are not the backbone the head was trained on, or when none can be found."""
    from percs.model.backbone_weights import _checked, _download_state_dict, read_state_dict
    from percs.train.scorer import backbone_fingerprint

    name = record["backbone"]
    path = backbone_weights_file(name, given)
    expected = model.backbone.state_dict()
    if path is None:
        try:
            state = _checked(_download_state_dict(name), expected, f"the official {name} weights")
        except RuntimeError as error:
            raise ValueError(f"model {checkpoint} needs the DINOv2 {name} backbone weights, and none was found: "
                             f"pass --backbone-weights FILE (Python: backbone_weights=), or set PERCS_SHARED to a "
                             f"folder with weights/, or allow the download. {error}") from None
    else:
        state = read_state_dict(path, expected)
    model.backbone.load_state_dict(state, strict=True)
    if backbone_fingerprint(model.backbone) != record["backbone_fingerprint"]:
        source = path or f"the official {name} download"
        raise ValueError(f"backbone weights {source} are not the ones model {checkpoint} was trained with "
                         "(fingerprints differ)")
