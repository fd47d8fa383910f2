"""What a run is built from: the model of a config, its optimizer (head and backbone groups), the LR schedule."""

from __future__ import annotations

import dataclasses

import torch

from percs.model.backbone import DinoVisionTransformer, backbone_spec
from percs.model.backbone_weights import load_backbone
from percs.model.percs_dino import OFFICIAL_WEIGHTS, PerCSDino
from percs.train.config import ModelSection, OptimSection, ScheduleSection


def build_model(config: ModelSection) -> PerCSDino:
    """PerCS-DINO on the CPU as the model section describes (random head; backbone random or pretrained,
    reduced to backbone_depth blocks when that is set)."""
    spec = backbone_spec(config.backbone)
    if config.backbone_weights:
        weights = None if config.backbone_weights == OFFICIAL_WEIGHTS else config.backbone_weights
        backbone = load_backbone(config.backbone, weights)
        if config.backbone_depth and config.backbone_depth < spec.depth:
            backbone.blocks = backbone.blocks[: config.backbone_depth]
            backbone.spec = dataclasses.replace(spec, depth=config.backbone_depth)
    else:
        changes = {k: getattr(config, f"backbone_{k}") for k in ("depth", "embed_dim", "num_heads")}
        backbone = DinoVisionTransformer(dataclasses.replace(spec, **{k: v for k, v in changes.items() if v}))
    return PerCSDino(backbone, config.head)


def set_backbone_frozen(model: PerCSDino, frozen: bool) -> None:
    """Freezes (no gradients, eval mode kept by `train_mode`) or unfreezes the backbone."""
    model.backbone.requires_grad_(not frozen)


def train_mode(model: PerCSDino, frozen_backbone: bool) -> None:
    """Training mode for the head; a frozen backbone stays in eval mode (its features must not change)."""
    model.train()
    if frozen_backbone:
        model.backbone.eval()


def build_optimizer(model: PerCSDino, config: OptimSection) -> torch.optim.Optimizer:
    """Adam or AdamW over two groups: the head (lr, weight_decay) and, when trained, the backbone
    (backbone_lr, backbone_weight_decay). Group 0 is the head; each group's "initial_lr" is its base rate."""
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
    groups = [{"params": head, "lr": config.lr, "weight_decay": config.weight_decay, "initial_lr": config.lr}]
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_lr, "weight_decay": config.backbone_weight_decay,
                       "initial_lr": config.backbone_lr})
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, betas=tuple(config.betas))


def lr_factor(epoch: int, schedule: ScheduleSection) -> float:
    """The factor on every base LR in `epoch` (0-based): lr_drop_factor in the last lr_drop_epochs, else 1."""
    return schedule.lr_drop_factor if epoch >= schedule.epochs - schedule.lr_drop_epochs else 1.0


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, schedule: ScheduleSection) -> float:
    """Sets every group's LR for `epoch`; returns the head's."""
    factor = lr_factor(epoch, schedule)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
