"""Pretrained DINOv2 weights: from a local file, or from the official address through torch's download cache."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from urllib.error import URLError

import torch

from percs.model.backbone import DinoVisionTransformer, backbone_spec, build_backbone

DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/dinov2"
_LISTED_KEYS = 8  # how many keys an error message names before summarising the rest


def checkpoint_url(name: str) -> str:
    """The official address of a variant's pretrained state dict.

    The register variants sit in the folder of their plain model: `dinov2_vits14/dinov2_vits14_reg4_pretrain.pth`.
    """
    spec = backbone_spec(name)
    base = "dinov2_" + name.removesuffix("_reg")
    full = base + (f"_reg{spec.num_register_tokens}" if spec.num_register_tokens else "")
    return f"{DOWNLOAD_ROOT}/{base}/{full}_pretrain.pth"


def load_backbone(name: str, weights: str | os.PathLike | None = None) -> DinoVisionTransformer:
    """A pretrained DINOv2 variant (`VARIANTS` key) on the CPU, loaded with `strict=True`.

    weights: a local `.pth` file holding the state dict in the official key format (or a checkpoint that
    wraps exactly one such state dict in one of its entries); None downloads the official checkpoint once
    into torch's hub cache ($TORCH_HOME/hub/checkpoints) and reads it from there afterwards.
    """
    model = build_backbone(name, device="meta")  # no random init for weights that are overwritten
    expected = model.state_dict()
    if weights is None:
        state_dict = _checked(_download_state_dict(name), expected, checkpoint_url(name))
    else:
        state_dict = read_state_dict(weights, expected)
    # assign=True takes the loaded tensors as the parameters; requires_grad stays as the model set it.
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def read_state_dict(weights: str | os.PathLike, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict in file `weights` that matches `expected` (names and shapes), as float32 CPU tensors.

    Raises FileNotFoundError when the file is missing and ValueError naming the file and the offending keys
    when it does not hold exactly one state dict with `expected`'s keys and shapes.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"weights file {path} could not be read as a torch state dict: {error}") from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"weights file {path} holds a {type(checkpoint).__name__}, expected a state dict")
    return _checked(_unwrap(checkpoint, expected, path), expected, str(path))


def _unwrap(checkpoint: Mapping, expected: Mapping, path: Path) -> Mapping:
    """The checkpoint itself, or the one entry of it whose keys are exactly the model's (e.g. 'model')."""
    candidates = {"": checkpoint}
    candidates.update((str(key), value) for key, value in checkpoint.items() if isinstance(value, Mapping))
    matching = [where for where, entry in candidates.items() if set(entry) == set(expected)]
    if len(matching) > 1:
        entries = " and ".join("the top level" if where == "" else repr(where) for where in matching)
        raise ValueError(f"weights file {path} is ambiguous: {entries} all hold a backbone state dict")
    if matching:
        return candidates[matching[0]]
    # No exact match: report against the entry that shares the most keys with the model.
    return max(candidates.values(), key=lambda entry: len(set(entry) & set(expected)))


def _checked(state_dict: Mapping, expected: Mapping, source: str) -> dict[str, torch.Tensor]:
    """`state_dict` as float32 tensors, or ValueError naming `source` and every missing, extra or misshapen key."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshapen = [
        f"{key} {_shape(state_dict[key])} (model: {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and _shape(state_dict[key]) != tuple(expected[key].shape)
    ]
    problems = [
        f"{label} {_listed(keys)}"
        for label, keys in (("missing keys:", missing), ("unexpected keys:", unexpected), ("wrong shapes:", misshapen))
        if keys
    ]
    if problems:
        raise ValueError(f"weights from {source} do not match this backbone: " + "; ".join(problems))
    return {key: value.to(torch.float32).contiguous() for key, value in state_dict.items()}


def _shape(value) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else "")


def _download_state_dict(name: str) -> Mapping[str, torch.Tensor]:
    """The official state dict through torch's download-and-cache helper; an error saying how to go offline."""
    url = checkpoint_url(name)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (URLError, ConnectionError, TimeoutError) as error:
        file_name = url.rsplit("/", 1)[1]
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not download the DINOv2 {name} weights from {url} ({error}). Without network, fetch that "
            f"file elsewhere and pass it: load_backbone({name!r}, weights='path/to/{file_name}') from Python, "
            f"--weights PATH on the command line, or copy it to {cache / file_name}"
        ) from error
