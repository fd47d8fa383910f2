"""Pooling features under masks on the patch grid: the reference embedding and the per-cell embeddings.

A mask at full resolution (H, W) weighs each patch of the (H/14, W/14) grid by the fraction of the patch's
14 x 14 pixels it covers, so a cell smaller than a patch, or one straddling four patches, still gets an
embedding, weighted by where its pixels really are. The reference embedding (training and inference alike)
and the cell embeddings of the contrastive loss are both `pool_features` over such coverages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from percs.model.backbone import PATCH_SIZE


def patch_coverage(masks: torch.Tensor) -> torch.Tensor:
    """Covered fraction of every patch: (B, H, W) bool or float masks -> (B, H/14, W/14) float32 in [0, 1].

    Average pooling with kernel = stride = 14, i.e. the mean of the mask over each patch's pixels.
    """
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        raise ValueError(f"masks must be a (B, H, W) tensor, got {_describe(masks)}")
    _check_grid(masks.shape[-2:], "masks")
    return F.avg_pool2d(masks[:, None].float(), PATCH_SIZE, PATCH_SIZE)[:, 0]


def label_coverage(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Covered fraction of every patch by every cell of a label image, without building one-hot masks.

    labels: (H, W) integer, 0 background. Returns (cells (N,) int64, the labels present in ascending order;
    coverage (N, H/14, W/14) float32), where coverage[i] equals `patch_coverage(labels == cells[i])`: pixels
    are counted per (cell, patch) pair with an integer bincount, which is exact and deterministic on any device.
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
        raise ValueError(f"labels must be an (H, W) tensor, got {_describe(labels)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels has dtype {labels.dtype}, expected an integer dtype")
    rows, cols = _check_grid(labels.shape, "labels")
    n_patches = rows * cols
    ys = torch.arange(labels.shape[0], device=labels.device) // PATCH_SIZE
    xs = torch.arange(labels.shape[1], device=labels.device) // PATCH_SIZE
    patch_index = (ys[:, None] * cols + xs[None, :])[labels > 0]
    cells, cell_index = torch.unique(labels[labels > 0], return_inverse=True)
    counts = torch.bincount(cell_index * n_patches + patch_index, minlength=len(cells) * n_patches)
    coverage = counts.float().div_(PATCH_SIZE * PATCH_SIZE).reshape(len(cells), rows, cols)
    return cells.long(), coverage


def pool_features(features: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted mean of the features: (B, C, h, w) and (B, K, h, w) -> (B, K, C).

    Entry (b, k) is sum_p coverage[b, k, p] * features[b, :, p] / sum_p coverage[b, k, p]. Every mask must cover
    at least one pixel (callers check, naming their own argument); computed in the features' dtype.
    """
    if features.ndim != 4 or coverage.ndim != 4 or features.shape[0] != coverage.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and coverage {tuple(coverage.shape)} do not match")
    if features.shape[-2:] != coverage.shape[-2:]:
        raise ValueError(f"features grid {tuple(features.shape[-2:])} != coverage grid {tuple(coverage.shape[-2:])}")
    weights = coverage.flatten(2).to(features.dtype)  # (B, K, P)
    with torch.autocast(features.device.type, enabled=False):  # the dtype asked for, also inside inference autocast
        summed = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # (B, K, C)
    return summed / weights.sum(-1, keepdim=True)


def embed_reference(features: torch.Tensor, reference_masks: torch.Tensor) -> torch.Tensor:
    """Reference embedding: backbone features (B, C, h, w) pooled under reference_masks (B, 14 h, 14 w) -> (B, C).

    The one function that turns a reference cell into an embedding, in training and in inference.
    """
    if reference_masks.ndim != 3 or tuple(reference_masks.shape[-2:]) != tuple(
        PATCH_SIZE * s for s in features.shape[-2:]
    ):
        raise ValueError(
            f"reference_masks has shape {tuple(reference_masks.shape)}, expected (B, {PATCH_SIZE} h, "
            f"{PATCH_SIZE} w) for features {tuple(features.shape)}"
        )
    coverage = patch_coverage(reference_masks)
    empty = coverage.flatten(1).sum(1) == 0
    if empty.any():
        raise ValueError(f"reference_masks is empty for batch entries {empty.nonzero().flatten().tolist()}")
    return pool_features(features, coverage[:, None])[:, 0]


def reference_window(image: torch.Tensor, mask: torch.Tensor, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """The size x size window of a reference image centred on its cell, as the backbone sees the reference.

    image: (3, H, W) normalised float; mask: (H, W) bool, the reference cell (non-empty). The image is
    zero-padded at the bottom and right up to at least `size` (0 is the normalised mean colour, as the
    predictor pads query images), then the window is centred on the centre of the cell's bounding box and
    shifted to lie inside the image. Training crops query windows of the same size, so the reference is seen
    with the same amount of context in both. Returns (window (3, size, size), window_mask (size, size) bool);
    a cell larger than the window is cut to it.
    """
    if size <= 0 or size % PATCH_SIZE:
        raise ValueError(f"size must be a positive multiple of {PATCH_SIZE}, got {size}")
    if image.ndim != 3 or image.shape[0] != 3 or mask.shape != image.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} must be (3, H, W) and (H, W)")
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("reference_mask is empty")
    height, width = max(size, image.shape[1]), max(size, image.shape[2])
    pad = (0, width - image.shape[2], 0, height - image.shape[1])
    image, mask = F.pad(image, pad), F.pad(mask.bool(), pad)
    top = _window_start(int(rows.min()), int(rows.max()), size, height)
    left = _window_start(int(cols.min()), int(cols.max()), size, width)
    return image[:, top : top + size, left : left + size], mask[top : top + size, left : left + size]


def _window_start(first: int, last: int, size: int, extent: int) -> int:
    return min(max((first + last + 1) // 2 - size // 2, 0), extent - size)


def _check_grid(shape, name: str) -> tuple[int, int]:
    height, width = (int(s) for s in shape)
    if height == 0 or width == 0 or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(f"{name} has spatial shape ({height}, {width}), expected positive multiples of {PATCH_SIZE}")
    return height // PATCH_SIZE, width // PATCH_SIZE


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
