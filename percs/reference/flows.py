"""NumPy references for percs.flows: masks_to_flows, follow_flows, get_masks, flow_error, fill_holes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GROW_RADIUS = 5
GROW_STEPS = 5


def cell_centre(cell: np.ndarray) -> tuple[int, int]:
    """Pixel of a boolean cell (h, w) nearest its median (y, x); first in raster order on ties."""
    ys, xs = np.nonzero(cell)
    ymed, xmed = np.median(ys), np.median(xs)
    k = np.argmin((xs - xmed) ** 2 + (ys - ymed) ** 2)
    return int(ys[k]), int(xs[k])


def cell_log_temperature(cell: np.ndarray) -> np.ndarray:
    """log1p of the heat diffused in a boolean cell (h, w); returns the (h + 2, w + 2) padded box."""
    h, w = cell.shape
    inside = np.pad(cell, 1)
    cy, cx = cell_centre(cell)
    cy, cx = cy + 1, cx + 1
    T = np.zeros(inside.shape)
    T[cy, cx] = 1.0
    n_iter = 2 * (h + w)
    for it in range(n_iter):
        # Mirror-symmetric pairs, in the kernels' order (csrc/masks_to_flows/masks_to_flows.h).
        cross = (T[:-2, 1:-1] + T[2:, 1:-1]) + (T[1:-1, :-2] + T[1:-1, 2:])
        diagonals = (T[:-2, :-2] + T[2:, 2:]) + (T[:-2, 2:] + T[2:, :-2])
        s = T[1:-1, 1:-1] + cross + diagonals
        nxt = np.zeros_like(T)
        nxt[1:-1, 1:-1] = np.where(inside[1:-1, 1:-1], s * (1.0 / 9.0), 0.0)
        if it + 1 < n_iter:
            nxt[cy, cx] += 1.0
        T = nxt
    return np.log1p(T)


def cell_unit_flows(cell: np.ndarray) -> np.ndarray:
    """(2, h, w) float64 unit flows of one boolean cell, 0 outside it."""
    L = cell_log_temperature(cell)
    gy = L[2:, 1:-1] - L[:-2, 1:-1]
    gx = L[1:-1, 2:] - L[1:-1, :-2]
    norm = np.sqrt(gy**2 + gx**2)
    safe = np.where(norm > 0, norm, 1.0)
    flows = np.stack([np.where(norm > 0, gy / safe, 0.0), np.where(norm > 0, gx / safe, 0.0)])
    return flows * cell


def masks_to_flows(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (2, H, W) float32 unit flows, one cell at a time in its own bounding box."""
    flows = np.zeros((2, *labels.shape), np.float64)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        cell = labels[box] == label
        flows[(slice(None), *box)] += cell_unit_flows(cell)
    return flows.astype(np.float32)


def bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 bilinear samples of image (H, W) at positions inside it, pixel centres at integers."""
    H, W = image.shape
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    fy, fx = y - y0.astype(np.float32), x - x0.astype(np.float32)
    one = np.float32(1.0)
    top = (one - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (one - fx) * image[y1, x0] + fx * image[y1, x1]
    return (one - fy) * top + fy * bottom


def follow_flows(unit_flows: np.ndarray, points: np.ndarray, niter: int) -> np.ndarray:
    """(N, 2) float32 end points of niter Euler steps along unit_flows (2, H, W) from points (N, 2)."""
    _, H, W = unit_flows.shape
    y, x = points[:, 0].astype(np.float32), points[:, 1].astype(np.float32)
    for _ in range(niter):
        dy = bilinear(unit_flows[0], y, x)
        dx = bilinear(unit_flows[1], y, x)
        y = np.clip(y + dy, np.float32(0), np.float32(H - 1))
        x = np.clip(x + dx, np.float32(0), np.float32(W - 1))
    return np.stack([y, x], axis=1)


def get_masks(
    endpoints: np.ndarray,
    pixel_index: np.ndarray,
    shape: tuple[int, int],
    seed_min_count: int = 10,
    grow_min_count: int = 2,
    max_size_fraction: float = 0.4,
) -> np.ndarray:
    """Clusters end points (N, 2) of the pixels pixel_index (N,) into canonical labels of the given shape."""
    H, W = shape
    ends = np.floor(endpoints + np.float32(0.5)).astype(np.int64)
    end_index = ends[:, 0] * W + ends[:, 1]
    hist = np.bincount(end_index, minlength=H * W).reshape(H, W)
    local_max = ndimage.maximum_filter(hist, size=5, mode="constant", cval=0)
    seeds = np.flatnonzero(((hist >= local_max) & (hist > seed_min_count)).ravel())
    seeds = seeds[np.argsort(hist.ravel()[seeds], kind="stable")]
    painted = np.zeros(H * W, np.int64)
    r = GROW_RADIUS
    padded = np.pad(hist, r)
    for k, seed in enumerate(seeds, start=1):
        y, x = divmod(int(seed), W)
        allowed = padded[y : y + 2 * r + 1, x : x + 2 * r + 1] > grow_min_count
        region = np.zeros_like(allowed)
        region[r, r] = True
        for _ in range(GROW_STEPS):
            region = ndimage.binary_dilation(region, np.ones((3, 3), bool)) & allowed
        ry, rx = np.nonzero(region)
        painted[(ry + y - r) * W + (rx + x - r)] = k
    labels = np.zeros(H * W, np.int64)
    labels[pixel_index] = painted[end_index]
    sizes = np.bincount(labels, minlength=len(seeds) + 1)
    big = np.flatnonzero(sizes > max_size_fraction * H * W)
    labels[np.isin(labels, big[big > 0])] = 0
    return canonical(labels.reshape(H, W))


def canonical(labels: np.ndarray) -> np.ndarray:
    """int32 labels renumbered 1..N in raster order of each label's first pixel, 0 kept."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = values[np.argsort(first)]
    order = order[order != 0]
    lut = {0: 0} | {int(v): i for i, v in enumerate(order, start=1)}
    return np.vectorize(lut.__getitem__, otypes=[np.int32])(labels) if labels.size else labels.astype(np.int32)


def flow_error(labels: np.ndarray, unit_flows: np.ndarray) -> np.ndarray:
    """(N,) float64 per-mask mean of squared differences between the masks' flows and unit_flows."""
    n = int(labels.max()) if labels.size else 0
    errors = np.zeros(n)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        cell = labels[box] == label
        mask_flows = cell_unit_flows(cell)
        given = unit_flows[(slice(None), *box)].astype(np.float64)
        errors[label - 1] = ((mask_flows - given) ** 2).sum(axis=0)[cell].mean()
    return errors


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fills each mask's holes with binary_fill_holes; nested claims go to the smallest bounding box."""
    out = labels.astype(np.int32)
    claims = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        cell = labels[box] == label
        holes = ndimage.binary_fill_holes(cell) & (labels[box] == 0)
        area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
        claims.append(((area, label), box, holes))
    for (_, label), box, holes in sorted(claims, key=lambda c: c[0], reverse=True):
        out[box][holes] = label
    return out
