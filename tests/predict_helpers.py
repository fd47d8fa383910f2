"""Models with known outputs and tiny checkpoints for the Segmenter and `percs predict` tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.measure import label as connected_components
from torch import nn

from percs.flows import FLOW_SCALE, masks_to_flows
from percs.model.percs_dino import PerCSOutput
from percs.train.checkpoint import save_checkpoint
from percs.train.config import config_to_dict
from percs.train.setup import build_model


class FieldModel(nn.Module):
    """Returns its (normalised) input as output: channels 0, 1 the flows, channel 2 the same-type logit. A
    (3, H, W) tensor image is then the field the predictor stitches, so tests choose the cells exactly."""

    generic = False

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def embed_reference(self, images, masks):
        return masks.flatten(1).float().mean(1, keepdim=True).expand(-1, 4)  # (B, 4) from the mask's area

    def forward(self, images, reference_embedding):
        return PerCSOutput(flows=images[:, :2], same_type_logits=images[:, 2], fused=images.new_zeros(0))


class ThresholdModel(nn.Module):
    """Segments bright blobs: the same-type logit is 4 x the first normalised channel (positive above about
    the 49th percentile between the image's 1st and 99th), the flows are those of its connected components."""

    generic = False

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def embed_reference(self, images, masks):
        return torch.ones(images.shape[0], 4)

    def forward(self, images, reference_embedding):
        logits = 4 * images[:, 0]
        components = np.stack([connected_components(window.numpy() > 0) for window in logits])
        flows = FLOW_SCALE * torch.from_numpy(masks_to_flows(components))
        return PerCSOutput(flows=flows, same_type_logits=logits, fused=images.new_zeros(0))


def cell_field(labels: np.ndarray, cell_logits: dict[int, float], background: float = -6.0) -> torch.Tensor:
    """(3, H, W) field for FieldModel: the true flows of labels (H, W) and, over cell l, logit cell_logits[l]."""
    logits = np.full(labels.shape, background, np.float32)
    for cell, logit in cell_logits.items():
        logits[labels == cell] = logit
    flows = FLOW_SCALE * masks_to_flows(labels.astype(np.int32))
    return torch.from_numpy(np.concatenate((flows, logits[None])).astype(np.float32))


def checkpoint_config(folder: Path, generic: bool = False, **predict):
    """The TrainConfig of `write_tiny_checkpoint`: a one-block, 32-wide random backbone under a one-layer,
    32-wide head; `predict` updates its predict section (default 56-pixel windows, stride 42, 50 Euler steps)."""
    from train_helpers import tiny_config

    head = {"dim": 32, "depth": 1, "num_heads": 4, "decoder_channels": [16, 8], "generic": generic}
    return tiny_config(Path(folder) / "no-dataset", model={"head": head},
                       predict={"window": 56, "stride": 42, "niter": 50, **predict})


def write_tiny_checkpoint(path: Path, generic: bool = False, trained_on: dict | None = None, **predict) -> Path:
    """A `percs train`-style checkpoint of a random model of `checkpoint_config(path.parent, ...)` (seed 0);
    without trained_on (a `TrainingData.to_record()`), as checkpoints were before percs recorded it."""
    config = checkpoint_config(path.parent, generic, **predict)
    torch.manual_seed(0)
    model = build_model(config.model)
    state = {"format": 1, "config": config_to_dict(config), "model": model.state_dict()}
    if trained_on is not None:
        state["trained_on"] = trained_on
    save_checkpoint(state, path)
    return path


class DistanceScorer(nn.Module):
    """A metric in a CellScorer's place: logit = offset - the squared distance of a cell's vectors to its
    reference's (every cell matches itself best)."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, cells, references, cell_descriptors, reference_descriptors, groups=None):
        return self.offset - ((cells - references.expand_as(cells)) ** 2).sum((1, 2))


def instance_threshold_model(threshold: float = 0.5) -> ThresholdModel:
    """ThresholdModel as a generic model (every bright blob, whatever the reference) with an instance-level
    decision: each found cell embedded by a tiny random backbone (seed 0), compared by DistanceScorer."""
    from percs.model.backbone import BackboneSpec, DinoVisionTransformer
    from percs.model.instance import InstanceScorer

    torch.manual_seed(0)
    model = ThresholdModel()
    model.generic = True
    backbone = DinoVisionTransformer(BackboneSpec(embed_dim=32, depth=1, num_heads=2, ffn="mlp")).eval()
    model.instance = InstanceScorer(backbone, DistanceScorer(), layers=(1,), threshold=threshold)
    return model
