"""CUDA path of percs.flows, called by its public functions after their input checks.

The steps are the CPU path's, in the same order; torch ops build the cell tables and do the bookkeeping, the
percs._cuda kernels do the per-pixel work. Nothing leaves the GPU: the only host syncs are scalars (numbers of
cells, seeds and scratch elements, the largest label).

Why CPU and GPU agree: the cell table (boxes, centres) follows the CPU's definitions in exact arithmetic; the
kernels run the CPU's shared __host__ __device__ functions, built without FMA contraction; seeds, mask sizes and
renumbering are integer operations with the CPU's rules. Only log1p in the diffusion comes from another maths
library (CUDA's, not glibc's): it may differ in the last bit, which leaves float32 flows unchanged in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from percs import _backend
from percs.flows import FLOW_SCALE, GROW_MIN_COUNT, SEED_MIN_COUNT

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass
class CellTable:
    """Cells of a label batch on the GPU, in (image, label) order."""

    boxes: torch.Tensor  # (N, 8) int32 CellBox rows: image, label, y0, x0, h, w, cy, cx
    scratch_offsets: torch.Tensor  # (N,) int64, start of each cell's scratch in elements
    scratch_size: int  # total scratch elements

    @property
    def count(self) -> int:
        return self.boxes.shape[0]


# ---------------------------------------------------------------- public ops (inputs checked by percs.flows)


def masks_to_flows(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) or (B, H, W) integer labels on a GPU -> (2, H, W) or (B, 2, H, W) float32 unit flows there."""
    kernels = _backend.cuda("labels")
    batch = labels if labels.ndim == 3 else labels[None]
    B, H, W = batch.shape
    device = labels.device
    with torch.cuda.device(device):
        flows = torch.zeros((B, 2, H, W), dtype=torch.float32, device=device)
        pixels, cell, cell_labels = _group_cells(batch)
        n = cell_labels.numel()
        if n > INT32_MAX:
            raise ValueError(f"labels has {n} cells, more than the CUDA kernels' int32 cell numbers")
        if n:
            # Cells numbered 1..N across the batch, so any label values work (the CPU path renumbers instead).
            ids = torch.zeros(B * H * W, dtype=torch.int32, device=device)
            ids[pixels] = (cell + 1).to(torch.int32)
            table = _cell_table(pixels, cell, torch.arange(1, n + 1, device=device), H, W, buffers=2)
            scratch = torch.zeros(table.scratch_size, dtype=torch.float64, device=device)
            kernels.masks_to_flows(
                ids.data_ptr(), H, W, table.boxes.data_ptr(), table.scratch_offsets.data_ptr(), table.count,
                scratch.data_ptr(), flows.data_ptr(), _stream(),
            )
    return flows if labels.ndim == 3 else flows[0]


def follow_flows(unit_flows: torch.Tensor, points: torch.Tensor, niter: int) -> torch.Tensor:
    """Unit flows (2, H, W) and start points (N, 2) on one GPU -> (N, 2) float32 end points there."""
    _backend.cuda("unit_flows")
    _require_on(points, unit_flows, "points")
    _, H, W = unit_flows.shape
    with torch.cuda.device(unit_flows.device):
        start = points.to(torch.float32)
        outside = (start < 0).any(1) | (start[:, 0] > H - 1) | (start[:, 1] > W - 1)
        if start.numel() and bool(outside.any()):
            raise ValueError("points has positions outside the image")
        return _follow(_interleave(unit_flows), start, niter)


def flow_error(labels: torch.Tensor, unit_flows: torch.Tensor) -> torch.Tensor:
    """(H, W) masks 1..N and (2, H, W) unit flows on one GPU -> (N,) float64 mean squared flow errors there."""
    _backend.cuda("labels")
    _require_on(unit_flows, labels, "unit_flows")
    with torch.cuda.device(labels.device):
        n_labels = int(labels.max()) if labels.numel() else 0
        if n_labels > labels.numel():
            raise ValueError(f"labels has label {n_labels}, more than its {labels.numel()} pixels; renumber it first")
        labels32 = labels.to(torch.int32).contiguous()
        return _flow_error(labels32, unit_flows.to(torch.float32).contiguous(), n_labels)


def fill_holes(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) integer masks on a GPU -> (H, W) int32 with every mask's holes filled, there."""
    _backend.cuda("labels")
    with torch.cuda.device(labels.device):
        top = int(labels.max()) if labels.numel() else 0
        if top > INT32_MAX:
            raise ValueError("labels has labels beyond int32")
        if top > labels.numel():  # as the CPU kernel, so that both backends accept the same inputs
            raise ValueError(f"labels: label {top} exceeds the pixel count; renumber")
        return _fill_holes(labels.to(torch.int32).contiguous())


def flows_to_masks(
    flows: torch.Tensor,
    cellprob: torch.Tensor,
    cellprob_threshold: float,
    flow_threshold: float,
    niter: int,
    min_size: int,
    max_size_fraction: float,
) -> torch.Tensor:
    """percs.flows.flows_to_masks on a GPU: (2, H, W) flows and (H, W) logits -> (H, W) int32 canonical labels."""
    _backend.cuda("flows")
    _require_on(cellprob, flows, "cellprob")
    H, W = cellprob.shape
    device = flows.device
    with torch.cuda.device(device):
        if H * W == 0:
            return torch.zeros((H, W), dtype=torch.int32, device=device)
        unit = _unit_flows(flows)
        pixel_index = torch.nonzero((cellprob > cellprob_threshold).reshape(-1)).squeeze(1)
        points = torch.stack([pixel_index // W, pixel_index % W], dim=1).to(torch.float32)
        endpoints = _follow(_interleave(unit), points, niter)
        labels, n_seeds = _get_masks(endpoints, pixel_index, H, W, max_size_fraction)
        if flow_threshold > 0 and n_seeds > 0:
            labels = _drop_wrong_flows(labels, unit, flow_threshold)
        labels = _remove_small_masks(labels, min_size, n_seeds)
        return _canonical(_fill_holes(labels), n_seeds)


# ---------------------------------------------------------------- steps on int32 / float32 GPU tensors


def _unit_flows(flows: torch.Tensor) -> torch.Tensor:
    """flows / FLOW_SCALE in float32, as the CPU path: a true division (a GPU tensor divisor, because torch
    multiplies by the rounded reciprocal when the divisor is a Python number)."""
    scale = torch.full((), FLOW_SCALE, dtype=torch.float32, device=flows.device)
    return (flows.to(torch.float32) / scale).contiguous()


def _interleave(unit_flows: torch.Tensor) -> torch.Tensor:
    """(2, H, W) -> contiguous (H, W, 2) float32, the layout the Euler kernel samples."""
    return unit_flows.to(torch.float32).permute(1, 2, 0).contiguous()


def _follow(yx_flows: torch.Tensor, start: torch.Tensor, niter: int) -> torch.Tensor:
    """End points (N, 2) float32 of niter Euler steps from start (N, 2) along yx_flows (H, W, 2)."""
    kernels = _backend.cuda("unit_flows")
    H, W, _ = yx_flows.shape
    ends = start.to(torch.float32).contiguous().clone()
    kernels.follow_flows(yx_flows.data_ptr(), H, W, ends.data_ptr(), ends.shape[0], int(niter), _stream())
    return ends


def _get_masks(
    endpoints: torch.Tensor, pixel_index: torch.Tensor, H: int, W: int, max_size_fraction: float
) -> tuple[torch.Tensor, int]:
    """get_masks (see csrc/get_masks/get_masks.h): (H, W) int32 canonical labels and the number of seeds, an
    upper bound on the labels. endpoints (N, 2) float32; pixel_index (N,) int64, distinct."""
    kernels = _backend.cuda("flows")
    device, n_points, n_pixels, stream = endpoints.device, endpoints.shape[0], H * W, _stream()
    hist = torch.zeros(n_pixels, dtype=torch.int32, device=device)
    end_index = torch.empty(n_points, dtype=torch.int64, device=device)
    kernels.histogram_endpoints(endpoints.data_ptr(), n_points, H, W, end_index.data_ptr(), hist.data_ptr(), stream)
    flags = torch.empty(n_pixels, dtype=torch.uint8, device=device)
    kernels.seed_flags(hist.data_ptr(), H, W, SEED_MIN_COUNT, flags.data_ptr(), stream)
    seeds = torch.nonzero(flags).squeeze(1)
    # The CPU ranks seeds by (count, flat index); nonzero lists them by flat index, so a stable sort by count
    # gives that ranking (the same as sorting the key count * H * W + index).
    seeds = seeds[torch.sort(hist[seeds], stable=True).indices].contiguous()
    n_seeds = seeds.numel()
    painted = torch.zeros(n_pixels, dtype=torch.int32, device=device)
    kernels.paint_seeds(hist.data_ptr(), H, W, seeds.data_ptr(), n_seeds, GROW_MIN_COUNT, painted.data_ptr(), stream)
    labels = torch.zeros(n_pixels, dtype=torch.int32, device=device)
    pixel_index = pixel_index.contiguous()
    kernels.assign_labels(
        pixel_index.data_ptr(), end_index.data_ptr(), n_points, painted.data_ptr(), labels.data_ptr(), stream
    )
    sizes = torch.bincount(labels.long(), minlength=n_seeds + 1)
    too_big = sizes.double() > max_size_fraction * float(n_pixels)  # float64 comparison, as the CPU's
    too_big[0] = False
    labels = labels.masked_fill(too_big[labels.long()], 0)
    return _canonical(labels, n_seeds).view(H, W), n_seeds


def _drop_wrong_flows(labels: torch.Tensor, unit: torch.Tensor, flow_threshold: float) -> torch.Tensor:
    """Masks whose flow_error exceeds flow_threshold set to 0. labels (H, W) int32; unit (2, H, W) float32."""
    n_labels = int(labels.max())
    if n_labels == 0:
        return labels
    errors = _flow_error(labels, unit, n_labels)
    drop = torch.cat([torch.zeros(1, dtype=torch.bool, device=labels.device), errors > flow_threshold])
    return labels.masked_fill(drop[labels.long()], 0)


def _remove_small_masks(labels: torch.Tensor, min_size: int, bound: int) -> torch.Tensor:
    """Masks with fewer than min_size pixels set to 0. labels (H, W) int32 with values in [0, bound]."""
    if min_size <= 0:
        return labels
    small = torch.bincount(labels.reshape(-1).long(), minlength=bound + 1) < min_size
    small[0] = False
    return labels.masked_fill(small[labels.long()], 0)


def _canonical(labels: torch.Tensor, bound: int) -> torch.Tensor:
    """int32 labels with values in [0, bound] renumbered 1..M in raster order of each label's first pixel."""
    flat = labels.reshape(-1).long()
    n = flat.numel()
    first = torch.full((bound + 1,), n, dtype=torch.int64, device=labels.device)
    first.scatter_reduce_(0, flat, torch.arange(n, device=labels.device), "amin")
    first[0] = n  # background is never numbered
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(1, bound + 2, device=labels.device)
    lut = rank.masked_fill(first >= n, 0)
    return lut[flat].to(torch.int32).view(labels.shape)


def _flow_error(labels: torch.Tensor, unit: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(n_labels,) float64 flow errors of (H, W) int32 labels against (2, H, W) float32 unit flows."""
    kernels = _backend.cuda("labels")
    H, W = labels.shape
    errors = torch.zeros(n_labels, dtype=torch.float64, device=labels.device)
    pixels, cell, cell_labels = _group_cells(labels[None])
    if cell_labels.numel():
        table = _cell_table(pixels, cell, cell_labels, H, W, buffers=2)
        scratch = torch.zeros(table.scratch_size, dtype=torch.float64, device=labels.device)
        kernels.flow_error(
            labels.data_ptr(), unit.data_ptr(), H, W, table.boxes.data_ptr(), table.scratch_offsets.data_ptr(),
            table.count, scratch.data_ptr(), errors.data_ptr(), _stream(),
        )
    return errors


def _fill_holes(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) int32 labels (values <= INT32_MAX) -> a new (H, W) int32 tensor with holes filled."""
    kernels = _backend.cuda("labels")
    H, W = labels.shape
    filled = labels.clone()
    pixels, cell, cell_labels = _group_cells(labels[None])
    if cell_labels.numel():
        table = _cell_table(pixels, cell, cell_labels, H, W, buffers=1)
        state = torch.empty(table.scratch_size, dtype=torch.uint8, device=labels.device)  # fully written
        keys = torch.full((H * W,), -1, dtype=torch.int64, device=labels.device)  # all ones: UINT64_MAX, no hole
        kernels.fill_holes(
            filled.data_ptr(), H, W, table.boxes.data_ptr(), table.scratch_offsets.data_ptr(), table.count,
            state.data_ptr(), keys.data_ptr(), _stream(),
        )
    return filled


# ---------------------------------------------------------------- cell tables


def _group_cells(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nonzero pixels of a (B, H, W) label batch grouped into cells, cells in (image, label) order.

    Returns pixels (P,) int64 flat batch indices in raster order, cell (P,) int64 each pixel's cell, and
    cell_labels (N,) int64 each cell's label.
    """
    B, H, W = batch.shape
    flat = batch.reshape(-1)
    pixels = torch.nonzero(flat).squeeze(1)
    values = flat[pixels].long()
    _, value_rank = torch.unique(values, return_inverse=True)
    key = pixels // max(H * W, 1) * max(pixels.numel(), 1) + value_rank  # (image, label) order, no overflow
    cell_keys, cell = torch.unique(key, return_inverse=True)
    cell_labels = torch.zeros(cell_keys.numel(), dtype=torch.int64, device=batch.device).scatter_(0, cell, values)
    return pixels, cell, cell_labels


def _cell_table(
    pixels: torch.Tensor, cell: torch.Tensor, cell_labels: torch.Tensor, H: int, W: int, buffers: int
) -> CellTable:
    """CellBox rows of the cells from _group_cells, with `buffers` padded boxes of scratch per cell."""
    n, plane = cell_labels.numel(), H * W
    image, y, x = pixels // plane, pixels % plane // W, pixels % W
    y0, y1 = _per_cell(y, cell, n, "amin"), _per_cell(y, cell, n, "amax")
    x0, x1 = _per_cell(x, cell, n, "amin"), _per_cell(x, cell, n, "amax")
    centre = _cell_centres(pixels, cell, n, y, x, W)
    columns = [_per_cell(image, cell, n, "amin"), cell_labels, y0, x0, y1 - y0 + 1, x1 - x0 + 1]
    columns += [centre % plane // W, centre % W]
    boxes = torch.stack(columns, dim=1).to(torch.int32).contiguous()
    padded = (boxes[:, 4].long() + 2) * (boxes[:, 5].long() + 2)
    sizes = padded * buffers
    ends = torch.cumsum(sizes, 0)
    total, largest = torch.stack([ends[-1], padded.max()]).tolist()
    if largest > INT32_MAX:
        raise ValueError(f"labels has a cell whose padded bounding box has {largest} pixels, over 2^31 - 1")
    return CellTable(boxes, ends - sizes, int(total))


def _cell_centres(
    pixels: torch.Tensor, cell: torch.Tensor, n: int, y: torch.Tensor, x: torch.Tensor, W: int
) -> torch.Tensor:
    """(n,) int64 flat index of each cell's centre: the cell pixel nearest (median y, median x), medians as
    np.median, the first pixel in raster order on ties (cells_cpu.cpp's rule)."""
    counts = torch.bincount(cell, minlength=n)
    start = torch.cumsum(counts, 0) - counts
    lower, upper = start + (counts - 1) // 2, start + counts // 2
    # Pixels come in raster order, so a stable sort by cell keeps y ascending within a cell; x needs its key.
    ys = y[torch.sort(cell, stable=True).indices]
    xs = x[torch.sort(cell * W + x, stable=True).indices]
    y_median = 0.5 * (ys[lower] + ys[upper]).double()
    x_median = 0.5 * (xs[lower] + xs[upper]).double()
    dy, dx = y.double() - y_median[cell], x.double() - x_median[cell]
    distance = dx * dx + dy * dy  # exact: integers and half-integers, squared, fit in float64
    nearest = distance == _per_cell(distance, cell, n, "amin")[cell]
    return _per_cell(pixels.masked_fill(~nearest, INT64_MAX), cell, n, "amin")


def _per_cell(values: torch.Tensor, cell: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, cell, values, reduce, include_self=False)


# ---------------------------------------------------------------- devices and streams


def _stream() -> int:
    """The current device's current stream, where torch has queued the tensors' producers."""
    return torch.cuda.current_stream().cuda_stream


def _require_on(x, reference: torch.Tensor, name: str) -> None:
    if not (isinstance(x, torch.Tensor) and x.device == reference.device):
        got = x.device if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor on {reference.device} like the other inputs, got {got}")
