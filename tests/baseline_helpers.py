"""Stand-ins for the baselines' tests: a SAM-shaped fake whose geometry is known, tiny percs checkpoints, and
an image of red and green disks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from percs.baselines.sam_backends import SamParts
from train_helpers import tiny_config


class MeanColour(nn.Module):
    """Image encoder stand-in: (B, 3, S, S) -> (B, 3, g, g), the mean colour of each cell."""

    def __init__(self, cell: int):
        super().__init__()
        self.cell = cell

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.cell)


class FirstPoint(nn.Module):
    """Prompt encoder stand-in: passes on the first point (or the box centre) as (B, 1, 2) (x, y)."""

    def __init__(self, grid: int, size: int):
        super().__init__()
        self.image_embedding_size, self.input_image_size = (grid, grid), (size, size)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 3, *self.image_embedding_size)

    def forward(self, points, boxes, masks):
        centre = boxes.view(-1, 2, 2).mean(1) if boxes is not None else points[0][:, 0].float()
        return centre[:, None], None


class Disk(nn.Module):
    """Mask decoder stand-in: logits radius - distance (input pixels) around the prompt, on a (4 g)^2 grid;
    with multimask, three masks of predicted IoU 0.5, 0.9, 0.7 of which only the second is the disk."""

    def __init__(self, radius: float, size: int):
        super().__init__()
        self.radius, self.size = radius, size

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output):
        side = 4 * image_embeddings.shape[-1]
        centres = (torch.arange(side) + 0.5) * (self.size / side)  # continuous input coordinates
        point = sparse_prompt_embeddings[:, 0] + 0.5  # pixel index -> continuous, as SAM's prompt encoder
        distance = torch.hypot(centres[None, :, None] - point[:, 1, None, None],
                               centres[None, None, :] - point[:, 0, None, None])
        disk = (self.radius - distance)[:, None]
        if not multimask_output:
            return disk, torch.full((len(disk), 1), 0.9)
        empty = torch.full_like(disk, -1.0)
        return torch.cat((empty, disk, empty), 1), torch.tensor([[0.5, 0.9, 0.7]]).expand(len(disk), -1)


def fake_sam_parts(input_size: int, grid: int, radius: float) -> SamParts:
    """SamParts of the stand-ins: input_size S, a g x g embedding grid, disks of `radius` input pixels."""
    return SamParts(MeanColour(input_size // grid), FirstPoint(grid, input_size), Disk(radius, input_size),
                    input_size, torch.zeros(3, 1, 1), torch.ones(3, 1, 1), "fake SAM")


def generic_checkpoint(bench: Path, path: Path, generic: bool = True) -> Path:
    """A `percs train`-style checkpoint of a random tiny model (generic or personalized)."""
    from percs.train.checkpoint import save_checkpoint
    from percs.train.config import config_to_dict
    from percs.train.setup import build_model

    head = {"dim": 32, "depth": 1, "num_heads": 4, "decoder_channels": [16, 8], "generic": generic}
    config = tiny_config(bench, model={"backbone": "vits14", "backbone_depth": 1, "backbone_embed_dim": 32,
                                       "backbone_num_heads": 2, "head": head})
    torch.manual_seed(0)
    save_checkpoint({"model": build_model(config.model).state_dict(), "config": config_to_dict(config)}, path)
    return path


def scored_checkpoint(folder: Path, threshold: float) -> tuple[Path, Path]:
    """(model, generic): folder/generic.pt, a random tiny generic checkpoint (`generic_checkpoint` on the
    `make_benchmark` benchmark folder/bench), and folder/model.pt, the same with an untrained CellScorer of its
    first block (seed 0, folder/scorer.pt) attached at `threshold`."""
    from percs.api import load_model
    from percs.model.instance import CellScorer
    from percs.train.scorer import ScorerTraining, attach_scorer, backbone_fingerprint, save_scorer
    from train_helpers import make_benchmark

    generic = generic_checkpoint(make_benchmark(folder), folder / "generic.pt", generic=True)
    backbone = load_model(generic, "cpu")[0].backbone
    torch.manual_seed(0)
    save_scorer(folder / "scorer.pt", CellScorer(1, 32).eval(), ScorerTraining(layers=(1,), epochs=1), "vits14",
                {"dataset": "tiny"}, 0.0, backbone_fingerprint(backbone))
    attach_scorer(generic, folder / "scorer.pt", threshold, folder / "model.pt")
    return folder / "model.pt", generic


def red_and_green_disks(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (96, 128, 3) uint8, red (96, 128) int32 labels 1..4, green labels 1..4): disks of radius 6 on
    black, at jittered grid positions 32 pixels apart."""
    rng = np.random.default_rng(seed)
    image = np.zeros((96, 128, 3), np.uint8)
    red, green = np.zeros((96, 128), np.int32), np.zeros((96, 128), np.int32)
    ys, xs = np.mgrid[:96, :128]
    spots = [(16 + 32 * row, 16 + 32 * col) for row in range(3) for col in range(4)]
    for k, index in enumerate(rng.permutation(len(spots))[:8]):
        cy, cx = np.asarray(spots[index]) + rng.integers(-3, 4, 2)
        disk = np.hypot(ys - cy, xs - cx) < 6
        labels, channel = (red, 0) if k < 4 else (green, 1)
        labels[disk] = k % 4 + 1
        image[disk, channel] = 200
    return image, red, green
