"""Generic (class-agnostic) instance masks for the "filter" baseline: every cell of an image, whatever its type.

A source is called as `source(image, scale) -> (H, W) int32 labels` (0 background, 1..N in raster order) on a
raw image as the dataset stores it, with `scale = source.scale_of(reference_mask)`, the factor the reference sets
(`percs.data.scale`), and has a `name` for the method's name.

- `PercsGenericMasks`: a `percs train` checkpoint trained with `model.head.generic=true` (channel 3 learnt as
  "any cell", the reference ignored), through `percs.predict.Predictor` with the checkpoint's predict settings.
- `CellposeMasks`: Cellpose 4 (Cellpose-SAM, the paper's generic segmenter) from a user-given model file,
  through the `cellpose` package (the `baselines` extra), imported only here.

A missing file or package raises `MethodUnavailable` saying what to pass or install; a file that is not the
expected kind of model a ValueError naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from percs.baselines.common import INSTALL_HINT, read_state_dict
from percs.evaluate.methods import MethodUnavailable
from percs.flows import renumber


def generic_overrides(args) -> dict:
    """The predict settings `percs eval` options give a generic model (--flow-threshold, --flips,
    --reference-diameter), when set."""
    return {key: getattr(args, key) for key in ("flow_threshold", "flips", "reference_diameter")
            if getattr(args, key, None) is not None}


class PercsGenericMasks:
    """Masks of every cell from a generic percs checkpoint (see the module docstring)."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto",
                 backbone_weights: str | Path | None = None, predict: dict | None = None):
        """predict: PredictorConfig fields that replace the checkpoint's (flow_threshold, flips, ...)."""
        import dataclasses

        from percs.api import load_model
        from percs.predict import Predictor

        path = Path(checkpoint)
        if not path.is_file():
            raise MethodUnavailable(f"--generic-checkpoint {path} does not exist (or is not a file)")
        model, config = load_model(path, device, backbone_weights)  # backbone_weights: for a head-only file
        if not model.generic:
            raise ValueError(f"--generic-checkpoint {path} is a personalized model (model.head.generic=false); "
                             "the filter baseline needs one trained with --set model.head.generic=true")
        self.predictor = Predictor(model, dataclasses.replace(config.predict, **(predict or {})))
        self.backbone_name = config.model.backbone
        self.name = f"percs generic {_describe(config.model)}"

    def scale_of(self, reference_mask: np.ndarray) -> float:
        """The factor the reference cell sets (the model's predict.reference_diameter; 1.0 when it is 0)."""
        return self.predictor.scale_of(reference_mask)

    def __call__(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """(H, W) int32 labels of every cell in image (H, W) or (H, W, C), the network run at `scale`."""
        return self.predictor.predict(image, None, scale).labels.cpu().numpy().astype(np.int32, copy=False)


def _describe(model) -> str:
    """"vits14", with what differs from a full pretrained backbone: "vits14, random-init backbone, depth 1"."""
    details = [model.backbone] + ([] if model.backbone_weights else ["random-init backbone"])
    details += [f"{key} {value}" for key, value in (("depth", model.backbone_depth),
                                                      ("width", model.backbone_embed_dim)) if value]
    return ", ".join(details)


class CellposeMasks:
    """Masks of every cell from a Cellpose 4 model file (Cellpose-SAM's `cpsam`, or a fine-tuned one)."""

    def __init__(self, model_file: str | Path, device: str | torch.device = "cpu"):
        path = Path(model_file)
        if not path.is_file():
            raise MethodUnavailable(f"--cellpose-model {path} does not exist (or is not a file)")
        state = _cellpose_state(path)
        try:
            from cellpose.models import CellposeModel
        except ImportError:
            raise MethodUnavailable(f"--cellpose-model needs the cellpose package: {INSTALL_HINT}") from None
        device = torch.device(device)
        try:
            self.model = CellposeModel(gpu=device.type == "cuda", pretrained_model=str(path), device=device)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"--cellpose-model {path} could not be loaded by Cellpose: {error}") from None
        missing = sorted(set(self.model.net.state_dict()) - {key.removeprefix("module.") for key in state})
        if missing:
            raise ValueError(f"--cellpose-model {path} does not fit Cellpose's {self.model.backbone} network: "
                             f"{len(missing)} weights missing, e.g. {', '.join(missing[:4])}")
        kind = "Cellpose-SAM" if self.model.backbone == "sam_vitl" else f"Cellpose {self.model.backbone}"
        self.name = f"{kind} {path.name}"

    def scale_of(self, reference_mask: np.ndarray) -> float:
        """1.0: Cellpose-SAM runs at the image's own scale, whatever the reference's size."""
        return 1.0

    def __call__(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """(H, W) int32 labels of every cell; Cellpose normalises the image itself (channels last)."""
        if scale != 1:
            raise ValueError(f"scale must be 1 for Cellpose masks (scale_of), got {scale!r}")
        channel_axis = None if image.ndim == 2 else -1
        masks = self.model.eval(image, channel_axis=channel_axis)[0]
        return renumber(np.asarray(masks))


def _cellpose_state(path: Path) -> Mapping:
    """The state dict of a Cellpose 4 model file, memory-mapped; ValueError naming the file otherwise."""
    state = read_state_dict(path, "--cellpose-model", mmap=True)
    if "W2" not in state:
        raise ValueError(f"--cellpose-model {path} is not a Cellpose 4 model (no 'W2' weight; Cellpose 3 and "
                         "other models do not fit Cellpose-SAM)")
    return state
