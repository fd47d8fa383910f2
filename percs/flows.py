"""Cellpose-style flows: label images to unit flow fields and predicted flows back to label images.

Conventions shared by every percs module:
- axis order (y, x); flows are (2, H, W) = (dy, dx);
- ``masks_to_flows`` returns unit flows; the network predicts, and ``flows_to_masks`` takes,
  ``FLOW_SCALE * unit flows`` and divides by ``FLOW_SCALE`` before integrating and before the flow check, so
  ``flow_threshold`` is in unit-flow^2 as in Cellpose;
- ``cellprob`` is a logit; only pixels with ``cellprob > cellprob_threshold`` are integrated;
- pixel (i, j) has its centre at (y, x) = (i, j); Euler steps sample bilinearly and clamp to [0, H-1] x [0, W-1];
  end points are rounded to the nearest pixel (half up) before clustering;
- output label images are int32, 0 background, 1..N in raster order of each mask's first pixel.

NumPy arrays and CPU tensors run on the C++ kernels; CUDA tensors run on the CUDA kernels and stay on the GPU.
"""

from __future__ import annotations

from typing import Any

import fastremap
import numpy as np

from percs import _backend
from percs._arrays import check_finite, check_labels, check_ndim, is_cuda, like_input, to_numpy

FLOW_SCALE = 5.0
SEED_MIN_COUNT = 10  # a seed needs more than this many end points (Cellpose)
GROW_MIN_COUNT = 2  # seed growth only through pixels with more end points than this (Cellpose)


def renumber(labels: np.ndarray) -> np.ndarray:
    """Canonical labels (H, W) int32: 0 kept, masks 1..N in raster order of their first pixel."""
    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    return out.astype(np.int32, copy=False)


def masks_to_flows(labels: Any) -> Any:
    """Unit flow fields of label images by heat diffusion from each cell's centre.

    labels: (H, W) or (B, H, W) integer label image(s), 0 background (any non-negative labels).
    Returns (2, H, W) or (B, 2, H, W) float32 (dy, dx), unit length inside cells, 0 on background, on the
    input's device and of its kind (NumPy array or tensor).
    """
    check_labels(labels, "labels", (2, 3))
    if is_cuda(labels):
        from percs import _flows_cuda

        return _flows_cuda.masks_to_flows(labels)
    array = to_numpy(labels, "labels")
    batch = array if array.ndim == 3 else array[None]
    renumbered = np.stack([renumber(image) for image in batch]) if batch.size else batch.astype(np.int32)
    flows = _backend.cpu.masks_to_flows(np.ascontiguousarray(renumbered, dtype=np.int32))
    return like_input(flows if array.ndim == 3 else flows[0], labels)


def follow_flows(unit_flows: Any, points: Any, niter: int = 200) -> Any:
    """Euler integration of points along unit flows.

    unit_flows: (2, H, W) float32 unit flows (dy, dx). points: (N, 2) float32 start positions (y, x) inside
    the image. Returns (N, 2) float32 end points, clamped to [0, H-1] x [0, W-1].
    """
    check_ndim(unit_flows, "unit_flows", (3,))
    check_ndim(points, "points", (2,))
    check_finite(unit_flows, "unit_flows")
    check_finite(points, "points")
    if unit_flows.shape[0] != 2:
        raise ValueError(f"unit_flows has shape {tuple(unit_flows.shape)}, expected (2, H, W)")
    if points.shape[1] != 2:
        raise ValueError(f"points has shape {tuple(points.shape)}, expected (N, 2)")
    _check_niter(niter)
    if is_cuda(unit_flows):
        from percs import _flows_cuda

        return _flows_cuda.follow_flows(unit_flows, points, niter)
    flows = interleave(to_numpy(unit_flows, "unit_flows"))
    start = np.ascontiguousarray(to_numpy(points, "points"), dtype=np.float32)
    H, W, _ = flows.shape
    if start.size and ((start < 0).any() or (start[:, 0] > H - 1).any() or (start[:, 1] > W - 1).any()):
        raise ValueError("points has positions outside the image")
    return like_input(_backend.cpu.follow_flows(flows, start, int(niter)), points)


def flow_error(labels: Any, unit_flows: Any) -> Any:
    """Per-mask mean squared difference between the masks' own flows and the given unit flows.

    labels: (H, W) integer masks 1..N (gaps allowed). unit_flows: (2, H, W) float32.
    Returns (N,) float64, entry l-1 for mask l (0 where label l is absent), N = labels.max().
    """
    check_labels(labels, "labels")
    check_ndim(unit_flows, "unit_flows", (3,))
    check_finite(unit_flows, "unit_flows")
    if tuple(unit_flows.shape) != (2, *labels.shape):
        raise ValueError(f"unit_flows has shape {tuple(unit_flows.shape)}, expected (2, {labels.shape[0]}, {labels.shape[1]})")
    if is_cuda(labels):
        from percs import _flows_cuda

        return _flows_cuda.flow_error(labels, unit_flows)
    array = to_numpy(labels, "labels")
    n_labels = int(array.max()) if array.size else 0
    if n_labels > array.size:
        raise ValueError(f"labels has label {n_labels}, more than its {array.size} pixels; renumber it first")
    flows = np.ascontiguousarray(to_numpy(unit_flows, "unit_flows"), dtype=np.float32)
    errors = _backend.cpu.flow_error(np.ascontiguousarray(array, dtype=np.int32), flows, n_labels)
    return like_input(errors, labels)


def fill_holes(labels: Any) -> Any:
    """Fills every mask's holes (4-connected background enclosed by the mask; other masks are kept).

    labels: (H, W) integer masks. Returns (H, W) int32 with the same labels; a background pixel enclosed by
    nested masks goes to the innermost one (smallest bounding box, then smaller label).
    """
    check_labels(labels, "labels")
    if is_cuda(labels):
        from percs import _flows_cuda

        return _flows_cuda.fill_holes(labels)
    array = to_numpy(labels, "labels")
    if array.size and int(array.max()) > np.iinfo(np.int32).max:
        raise ValueError("labels has labels beyond int32")
    return like_input(_backend.cpu.fill_holes(np.ascontiguousarray(array, dtype=np.int32)), labels)


def flows_to_masks(
    flows: Any,
    cellprob: Any,
    *,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int = 200,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
) -> Any:
    """Instance masks from predicted flows and cell-probability logits (Cellpose's compute_masks).

    flows: (2, H, W) float, FLOW_SCALE x unit flows (dy, dx). cellprob: (H, W) float logits.
    Steps: pixels with cellprob > cellprob_threshold follow flows / FLOW_SCALE for niter Euler steps; end points
    are clustered into masks (masks over max_size_fraction of the image removed); when flow_threshold > 0, masks
    whose flow_error exceeds it are dropped; masks under min_size pixels are removed; holes are filled.
    Returns (H, W) int32 canonical labels, on the input's device and of its kind.
    """
    _check_flows_and_cellprob(flows, cellprob)
    _check_niter(niter)
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if not 0.0 < max_size_fraction <= 1.0:
        raise ValueError(f"max_size_fraction must be in (0, 1], got {max_size_fraction}")
    if flow_threshold < 0:
        raise ValueError(f"flow_threshold must be >= 0, got {flow_threshold}")
    if is_cuda(flows):
        from percs import _flows_cuda

        return _flows_cuda.flows_to_masks(
            flows, cellprob, cellprob_threshold, flow_threshold, niter, min_size, max_size_fraction
        )
    unit = np.ascontiguousarray(to_numpy(flows, "flows"), dtype=np.float32) / np.float32(FLOW_SCALE)
    prob = to_numpy(cellprob, "cellprob")
    H, W = prob.shape
    pixel_index = np.flatnonzero(prob > cellprob_threshold).astype(np.int64)
    points = np.stack(np.divmod(pixel_index, W), axis=1).astype(np.float32) if W else np.zeros((0, 2), np.float32)
    endpoints = _backend.cpu.follow_flows(interleave(unit), points, int(niter))
    labels = _backend.cpu.get_masks(
        endpoints, pixel_index, H, W, SEED_MIN_COUNT, GROW_MIN_COUNT, float(max_size_fraction)
    )
    if flow_threshold > 0 and labels.size and labels.max() > 0:
        errors = _backend.cpu.flow_error(labels, unit, int(labels.max()))
        labels = fastremap.mask(labels, (np.flatnonzero(errors > flow_threshold) + 1).tolist())
    labels = remove_small_masks(labels, min_size)
    labels = renumber(_backend.cpu.fill_holes(labels))
    return like_input(labels, flows)


def interleave(flows: np.ndarray) -> np.ndarray:
    """(2, H, W) flows -> contiguous (H, W, 2) float32, the layout the Euler kernels sample."""
    return np.ascontiguousarray(np.moveaxis(flows, 0, -1), dtype=np.float32)


def remove_small_masks(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Sets masks with fewer than min_size pixels to 0. labels: (H, W) int32."""
    if min_size <= 0 or not labels.size:
        return labels
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < min_size)
    return fastremap.mask(labels, small[small > 0].tolist())


def _check_niter(niter: int) -> None:
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter must be a non-negative integer, got {niter!r}")


def _check_flows_and_cellprob(flows: Any, cellprob: Any) -> None:
    check_ndim(flows, "flows", (3,))
    check_ndim(cellprob, "cellprob", (2,))
    if flows.shape[0] != 2:
        raise ValueError(f"flows has shape {tuple(flows.shape)}, expected (2, H, W)")
    if tuple(flows.shape[1:]) != tuple(cellprob.shape):
        raise ValueError(f"flows has shape {tuple(flows.shape)} but cellprob has {tuple(cellprob.shape)}")
    if is_cuda(flows) != is_cuda(cellprob):
        raise ValueError("flows and cellprob must be on the same device")
    check_finite(flows, "flows")
    check_finite(cellprob, "cellprob")
