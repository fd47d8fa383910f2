"""PerCS-DINO training losses: flow MSE, same-type BCE and the cell-level supervised contrastive loss.

    total = flow_weight * flow + same_type_weight * same_type + contrastive_weight * contrastive

The paper's equation (2) sums the three terms; its weights are not legible in the text, so all default to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from percs.flows import FLOW_SCALE
from percs.model.percs_dino import PerCSOutput
from percs.model.reference import label_coverage, pool_features


CONTRASTIVE_SOURCES = ("fused", "backbone")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the three terms, the contrastive temperature (0.1, the paper's) and the weight of positive
    pixels in the same-type BCE (1 = the paper's plain BCE). The reference's type often covers a few percent of a
    crop (a pasted type with one or two cells), so plain BCE can settle on "no" everywhere; a larger
    `same_type_pos_weight` counters that imbalance.

    contrastive_on: the features pooled per cell by the contrastive loss: "fused" (the paper's: after the
    reference-guided transformer) or "backbone" (the backbone's own features, which the reference similarity is
    computed on: a backbone trained from scratch then learns type-discriminative features directly, instead of
    through the fusion; with a frozen backbone it has nothing to train)."""

    flow_weight: float = 1.0
    same_type_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.1
    same_type_pos_weight: float = 1.0
    contrastive_on: str = "fused"

    def __post_init__(self) -> None:
        if self.contrastive_on not in CONTRASTIVE_SOURCES:
            raise ValueError(f"loss.contrastive_on must be one of {CONTRASTIVE_SOURCES}, got {self.contrastive_on!r}")
        for key in ("flow_weight", "same_type_weight", "contrastive_weight", "same_type_pos_weight"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"loss.{key} must be >= 0, got {getattr(self, key)!r}")
        if not self.temperature > 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature!r}")


@dataclass
class LossTerms:
    """The weighted total (backpropagate this) and the three unweighted terms, all scalar tensors.

    n_cells: cells that entered the contrastive loss; n_anchors: those among them with at least one positive.
    """

    total: torch.Tensor
    flow: torch.Tensor
    same_type: torch.Tensor
    contrastive: torch.Tensor
    n_cells: int
    n_anchors: int

    def as_floats(self) -> dict[str, float]:
        """The terms as Python floats, for logs (synchronises with the device)."""
        values = {name: float(getattr(self, name).detach()) for name in ("total", "flow", "same_type", "contrastive")}
        return values | {"n_cells": self.n_cells, "n_anchors": self.n_anchors}


def flow_loss(flows: torch.Tensor, unit_flows: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels and both channels between predicted flows (B, 2, H, W), in
    FLOW_SCALE x unit units, and FLOW_SCALE x the true unit flows (B, 2, H, W) (0 on background)."""
    if flows.shape != unit_flows.shape:
        raise ValueError(f"unit_flows has shape {tuple(unit_flows.shape)}, expected {tuple(flows.shape)}")
    return F.mse_loss(flows.float(), FLOW_SCALE * unit_flows.float())


def same_type_loss(same_type_logits: torch.Tensor, same_type: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all pixels: logits (B, H, W), target (B, H, W) bool or {0, 1};
    positive pixels weighted by pos_weight."""
    if same_type_logits.shape != same_type.shape:
        raise ValueError(f"same_type has shape {tuple(same_type.shape)}, expected {tuple(same_type_logits.shape)}")
    weight = torch.tensor(float(pos_weight), device=same_type_logits.device)
    return F.binary_cross_entropy_with_logits(same_type_logits.float(), same_type.float(), pos_weight=weight)


def cell_embeddings(
    fused: torch.Tensor, labels: torch.Tensor, instance_types: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length embedding and type of every cell of a batch.

    fused: (B, D, h, w) fused features. labels: (B, 14 h, 14 w) integer instance labels, 0 background (cut
    from the full image: absent labels are skipped, labels need not be consecutive). instance_types: B
    integer tensors, entry l - 1 the type id of label l (the dataset's `instance_types`, mapped to ids).
    Each cell's embedding is the fused features pooled with its patch coverage (`label_coverage`), then
    L2-normalised. Returns (embeddings (N, D) float32, types (N,) int64), cells in batch then label order.
    """
    if labels.ndim != 3 or labels.shape[0] != fused.shape[0]:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected ({fused.shape[0]}, H, W)")
    if len(instance_types) != labels.shape[0]:
        raise ValueError(
            f"instance_types has {len(instance_types)} entries, expected one per image ({labels.shape[0]})"
        )
    embeddings, types = [], []
    for b in range(labels.shape[0]):
        cells, coverage = label_coverage(labels[b])
        table = torch.as_tensor(instance_types[b], device=labels.device).long()
        if len(cells) and int(cells.max()) > table.numel():
            raise ValueError(
                f"labels[{b}] has label {int(cells.max())}, but instance_types[{b}] has {table.numel()} entries"
            )
        embeddings.append(pool_features(fused[b : b + 1].float(), coverage[None])[0])
        types.append(table[cells - 1])
    return F.normalize(torch.cat(embeddings), dim=1), torch.cat(types)


def supervised_contrastive_loss(
    embeddings: torch.Tensor, types: torch.Tensor, temperature: float = 0.1
) -> tuple[torch.Tensor, int]:
    """SupCon (Khosla et al. 2020, L_out) over N unit-length embeddings (N, D) with integer types (N,).

    For anchor i with positives P(i) = {p != i : types[p] == types[i]} and A(i) = all cells but i:

        l_i = -1 / |P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) )

    The loss is the mean of l_i over the anchors that have a positive. Anchors without a positive are left
    out of that mean (they still appear in other anchors' denominators as negatives). When no anchor has a
    positive (fewer than 2 cells, or all types distinct) the loss is 0, still connected to `embeddings` so
    that every parameter gets a (zero) gradient. Returns (loss, number of anchors with a positive).
    """
    if embeddings.ndim != 2 or types.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and types {tuple(types.shape)} must be (N, D) and (N,)")
    n = embeddings.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    positives = (types[:, None] == types[None, :]) & ~eye
    n_positives = positives.sum(1)
    anchors = n_positives > 0
    n_anchors = int(anchors.sum())
    if n_anchors == 0:
        return embeddings.sum() * 0.0, 0
    # At least float32 (half precision under autocast would lose the 1 / temperature = 10 scale's accuracy).
    z = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    logits = z @ z.T / temperature
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    # masked_fill rather than multiplying: log_prob's diagonal is finite, but keep it out of every sum anyway.
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    per_anchor = -positive_log_prob[anchors] / n_positives[anchors]
    return per_anchor.mean(), n_anchors


def percs_loss(
    output: PerCSOutput,
    unit_flows: torch.Tensor,
    same_type: torch.Tensor,
    labels: torch.Tensor,
    instance_types: Sequence[torch.Tensor],
    config: LossConfig = LossConfig(),
) -> LossTerms:
    """All three terms for a batch.

    output: the model's `PerCSOutput` for B windows of H x W. unit_flows: (B, 2, H, W) true unit flows
    (`masks_to_flows` of labels). same_type: (B, H, W) target of channel 3 (cells of the reference's type; any
    cell in generic mode). labels, instance_types: as `cell_embeddings` takes them; the cells of all B images
    form one contrastive batch (positives across images too, so type ids must be global). Under
    DistributedDataParallel each rank contrasts its own cells only.
    """
    flow = flow_loss(output.flows, unit_flows)
    same = same_type_loss(output.same_type_logits, same_type, config.same_type_pos_weight)
    pooled = output.fused if config.contrastive_on == "fused" else output.features
    if pooled is None:
        raise ValueError("loss.contrastive_on is 'backbone', but the output carries no backbone features")
    embeddings, types = cell_embeddings(pooled, labels, instance_types)
    contrastive, n_anchors = supervised_contrastive_loss(embeddings, types, config.temperature)
    total = config.flow_weight * flow + config.same_type_weight * same + config.contrastive_weight * contrastive
    return LossTerms(total, flow, same, contrastive, n_cells=len(types), n_anchors=n_anchors)
