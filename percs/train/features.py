"""Training examples as the head sees them, and the cache of frozen-backbone features.

With a frozen backbone, the backbone is a fixed function of the (augmented) input, so its features can be
computed once. `FeatureCache` stores, for each item index of this process's shard, the backbone features and
reference embeddings of `variants` augmented versions of the item (the Dataset's items of "epochs"
0..variants-1), with their targets. Epoch e then shows item i as version `variant_of(seed, e, i)`.

This is a finite-augmentation approximation: a run sees at most `variants` distinct crops / flips / pastes /
references per item instead of fresh ones every epoch. Memory per stored version: C x (S/14)^2 float32
features (ViT-L, S = 224: 1 MiB) plus the targets (about 7 bytes per pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from percs.data.dataset import Batch, TrainDataset, collate
from percs.model.percs_dino import PerCSDino, PerCSOutput


@dataclass
class HeadBatch:
    """What one training step consumes, B examples: either images (B, 3, S, S) with reference windows
    (B, 3, R, R) and masks (B, R, R), or cached features (B, C, S/14, S/14) with reference embeddings (B, C);
    targets: unit_flows (B, 2, S, S), same_type (B, S, S), instances (B, S, S) int64, instance_types B tensors."""

    unit_flows: torch.Tensor
    same_type: torch.Tensor
    instances: torch.Tensor
    instance_types: list[torch.Tensor]
    images: torch.Tensor | None = None
    reference_images: torch.Tensor | None = None
    reference_masks: torch.Tensor | None = None
    features: torch.Tensor | None = None
    reference_embedding: torch.Tensor | None = None

    def to(self, device: torch.device) -> HeadBatch:
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        moved["instance_types"] = [t.to(device) for t in self.instance_types]
        return HeadBatch(**moved)


def head_batch(batch: Batch, generic: bool) -> HeadBatch:
    """A HeadBatch from the Dataset's Batch; generic: the target of channel 3 is every cell."""
    same_type = (batch.instances > 0).float() if generic else batch.same_type
    types = [row for row in batch.instance_types]
    return HeadBatch(batch.flows, same_type, batch.instances, types, images=batch.image,
                     reference_images=batch.reference_image, reference_masks=batch.reference_mask)


class TrainStep(nn.Module):
    """The model's training forward pass as one module (so DistributedDataParallel wraps all of it).

    forward(batch) -> (flows, same_type_logits, fused, features), the fields of `PerCSOutput`. Cached features skip the
    backbone; otherwise the reference window goes through the backbone too (without gradients when frozen).
    """

    def __init__(self, model: PerCSDino, frozen_backbone: bool):
        super().__init__()
        self.model = model
        self.frozen_backbone = frozen_backbone

    def forward(self, batch: HeadBatch) -> tuple[torch.Tensor, ...]:
        model = self.model
        if batch.features is not None:
            output = model.decode_features(batch.features, None if model.generic else batch.reference_embedding,
                                           batch.images)
            return output.flows, output.same_type_logits, output.fused, output.features
        embedding = None
        if not model.generic:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
                embedding = model.embed_reference(batch.reference_images, batch.reference_masks)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            features = model.backbone(batch.images).features
        output = model.decode_features(features, embedding, batch.images)
        return output.flows, output.same_type_logits, output.fused, output.features


def as_output(fields: tuple[torch.Tensor, ...]) -> PerCSOutput:
    return PerCSOutput(*fields)


def variant_of(seed: int, epoch: int, index: int, variants: int) -> int:
    """The cached version of item `index` shown in `epoch` (deterministic, so resuming replays it)."""
    return int(np.random.default_rng([seed, epoch, index, 7]).integers(variants))


class FeatureCache:
    """Backbone features, reference embeddings and targets of `variants` versions of the items `indices`."""

    def __init__(self, dataset: TrainDataset, model: PerCSDino, indices: list[int], variants: int,
                 device: torch.device, progress: bool = False):
        self.variants = variants
        self.keep_images = model.head_config.detail_channels > 0  # the decoder's detail branch reads them
        self.seed = dataset.seed
        self.entries: dict[tuple[int, int], HeadBatch] = {}
        generic = model.generic
        was_training = model.training
        model.eval()
        steps = [(v, i) for v in range(variants) for i in sorted(set(indices))]
        iterator = _progress(steps, "caching backbone features") if progress else steps
        with torch.no_grad():
            for variant, index in iterator:
                dataset.set_epoch(variant)
                batch = head_batch(collate([dataset[index]]), generic).to(device)
                features = model.backbone(batch.images).features
                embedding = None if generic else model.embed_reference(batch.reference_images, batch.reference_masks)
                self.entries[index, variant] = _compact(batch, features, embedding, self.keep_images)
        model.train(was_training)

    def batch(self, indices: list[int], epoch: int) -> HeadBatch:
        """The cached versions of `indices` for `epoch`, stacked."""
        entries = [self.entries[i, variant_of(self.seed, epoch, i, self.variants)] for i in indices]
        embeddings = [e.reference_embedding for e in entries]
        return HeadBatch(
            unit_flows=torch.cat([e.unit_flows for e in entries]).float(),
            same_type=torch.cat([e.same_type for e in entries]).float(),
            instances=torch.cat([e.instances for e in entries]).long(),
            instance_types=[t for e in entries for t in e.instance_types],
            features=torch.cat([e.features for e in entries]),
            reference_embedding=None if embeddings[0] is None else torch.cat(embeddings),
            images=torch.cat([e.images for e in entries]).float() if self.keep_images else None,
        )


def _compact(batch: HeadBatch, features: torch.Tensor, embedding: torch.Tensor | None, keep_images: bool) -> HeadBatch:
    """One cached version in compact dtypes (unit flows in float16: |error| < 5e-4 on values in [-1, 1]; the
    image, kept only for a detail branch, in float16 too: 3 x 2 bytes per pixel)."""
    return HeadBatch(batch.unit_flows.half(), batch.same_type.bool(), batch.instances.int(),
                     [t[t >= 0] for t in batch.instance_types], features=features.float(),
                     reference_embedding=None if embedding is None else embedding.float(),
                     images=batch.images.half() if keep_images else None)


def _progress(items, description: str):
    from tqdm import tqdm

    return tqdm(items, desc=description, leave=False)
