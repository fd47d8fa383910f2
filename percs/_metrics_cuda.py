"""CUDA path of percs.metrics.label_overlaps, called after its input checks.

Label images stay on the GPU: consecutive images of one shape are stacked (on the device) and counted in one
launch, one hash table per image; only the compacted (image, true label, pred label, count) rows come back, and
overlaps_from_counts turns them into the Overlaps arrays on the host (tested on the CPU against label_overlaps).
Labels must be below 2^31 here (they are packed into 64-bit keys); larger ones raise a ValueError.
"""

from __future__ import annotations

import numpy as np
import torch

from percs import _backend

INT32_MAX = 2**31 - 1
# Bounds the table memory of one launch: 2^24 slots of two uint64 = 256 MiB.
MAX_SLOTS_PER_LAUNCH = 1 << 24


def table_capacity(n_pixels: int) -> int:
    """Hash slots per image: a power of two >= 2 * n_pixels, so the table is never more than half full."""
    return 1 << max(1, 2 * n_pixels - 1).bit_length()


def label_overlaps(true_images: list[torch.Tensor], pred_images: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """The Overlaps arrays of (H_b, W_b) integer CUDA tensor pairs (all on one device)."""
    kernels = _backend.cuda("true_labels")
    rows = [np.zeros((4, 0), np.int64)]
    for start, stop in _launch_groups(true_images):
        with torch.cuda.device(true_images[start].device):
            rows.append(_count_group(kernels, true_images, pred_images, start, stop))
    image, true, pred, count = np.concatenate(rows, axis=1)
    return overlaps_from_counts(image, true, pred, count, len(true_images))


def _launch_groups(images: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive same-shape images whose tables fit MAX_SLOTS_PER_LAUNCH (<= 65535 images)."""
    groups = []
    start = 0
    for b in range(1, len(images) + 1):
        capacity = table_capacity(images[start].numel())
        full = (b - start + 1) * capacity > MAX_SLOTS_PER_LAUNCH or b - start >= 65535
        if b == len(images) or images[b].shape != images[start].shape or full:
            groups.append((start, b))
            start = b
    return groups


def _as_int32(image: torch.Tensor, name: str) -> torch.Tensor:
    """int32 contiguous labels; other dtypes are range-checked (one host sync) and converted on the device."""
    if image.dtype == torch.int32:
        return image.contiguous()
    if image.numel():
        if bool((image < 0).any()):
            raise ValueError(f"{name} has negative labels")
        if int(image.max()) > INT32_MAX:
            raise ValueError(f"{name} has labels >= 2^31, which the CUDA overlap counting cannot pack; pass it on the CPU")
    return image.to(torch.int32).contiguous()


def _count_group(kernels, true_images, pred_images, start: int, stop: int) -> np.ndarray:
    """(4, K) int64 rows (image, true label, pred label, count) of images [start, stop), on the host."""
    device = true_images[start].device
    true = torch.stack([_as_int32(true_images[b], f"true_labels[{b}]") for b in range(start, stop)])
    pred = torch.stack([_as_int32(pred_images[b], f"pred_labels[{b}]") for b in range(start, stop)])
    B, n_pixels = stop - start, true[0].numel()
    capacity = table_capacity(n_pixels)
    keys = torch.empty(B * capacity, dtype=torch.int64, device=device)
    counts = torch.empty(B * capacity, dtype=torch.int64, device=device)
    n_keys = torch.empty(1, dtype=torch.int64, device=device)
    negative = torch.empty((B, 2), dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    table = (keys.data_ptr(), counts.data_ptr(), capacity)
    kernels.label_overlaps_count(true.data_ptr(), pred.data_ptr(), B, n_pixels, table, n_keys.data_ptr(),
                                 negative.data_ptr(), stream)
    bad = np.argwhere(negative.cpu().numpy())
    if len(bad):
        b, column = bad[0]
        raise ValueError(f"{('true_labels', 'pred_labels')[column]}[{start + b}] has negative labels")
    K = int(n_keys.item())
    rows = torch.empty((4, K), dtype=torch.int64, device=device)
    cursor = torch.empty(1, dtype=torch.int64, device=device)
    kernels.label_overlaps_compact(table, B, K, rows.data_ptr(), cursor.data_ptr(), stream)
    rows = rows.cpu().numpy()
    rows[0] += start
    return rows


def overlaps_from_counts(image, true_label, pred_label, count, n_images: int) -> dict[str, np.ndarray]:
    """The Overlaps arrays from (K,) int64 rows (image, true label, pred label, pixel count), one row per
    distinct label pair of an image other than (0, 0), in any order; labels < 2^31."""
    image, true_label, pred_label, count = (np.asarray(x, np.int64) for x in (image, true_label, pred_label, count))
    out = {}
    instances = {}  # side -> sorted (image << 32 | label) of its instances
    for side, labels in (("true", true_label), ("pred", pred_label)):
        present = labels > 0
        unique, inverse = np.unique((image[present] << 32) | labels[present], return_inverse=True)
        out[f"{side}_labels"] = unique & 0xFFFFFFFF
        out[f"{side}_areas"] = np.bincount(inverse, weights=count[present], minlength=len(unique)).astype(np.int64)
        out[f"{side}_offsets"] = np.searchsorted(unique >> 32, np.arange(n_images + 1)).astype(np.int64)
        instances[side] = unique
    both = (true_label > 0) & (pred_label > 0)
    pair_true = np.searchsorted(instances["true"], (image[both] << 32) | true_label[both])
    pair_pred = np.searchsorted(instances["pred"], (image[both] << 32) | pred_label[both])
    order = np.lexsort((pair_pred, pair_true))
    out["pair_true"] = pair_true[order].astype(np.int64)
    out["pair_pred"] = pair_pred[order].astype(np.int64)
    out["pair_intersection"] = count[both][order]
    out["pair_offsets"] = np.searchsorted(image[both][order], np.arange(n_images + 1)).astype(np.int64)
    return out
