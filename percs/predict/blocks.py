"""The block grid of a large image and the exact stitching of the cells found block by block.

Geometry. The image is cut into cores of `block_size` x `block_size` pixels (the last ones smaller); each block's
model input, its context, is its core grown by `overlap` on every side (clipped to the image), with its top and
left moved back to a multiple of the predictor's stride (and of the backbone patch), so that the block's sliding
windows are windows of the whole image's grid: away from the context's cut edges, the stitched fields of a block
are those of the whole image, and so are the cells that `flows_to_masks` finds there.

Stitching. A cell belongs to the one block whose core holds its first pixel in raster order (`owned_cells`); a
block keeps only its own cells, whole, even where they reach into a neighbour's core. Cells are numbered over
the whole image in raster order of their first pixels (`global_ids`), as whole-image labels are. Each core of
the output is painted from the kept cells of its block and its eight neighbours (`assemble_core`): a cell is
never cut at a core's edge and never comes out twice. Where two blocks' cells claim a pixel (a cell larger than
the overlap, or fields that differ near a context's edge), the cell of the pixel's own block wins, then the
earlier block in raster order; a cell that keeps no pixel is dropped and the ids are closed up afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from percs.model.backbone import PATCH_SIZE

Box = tuple[int, int, int, int]  # y0, y1, x0, x1: rows y0..y1-1, columns x0..x1-1


@dataclass(frozen=True)
class Block:
    """One block: its (row, column) in the grid, its core (the pixels whose cells it owns) and its context
    (the pixels the model sees), both as Boxes in image coordinates."""

    index: tuple[int, int]
    core: Box
    context: Box

    @property
    def name(self) -> str:
        return f"block_{self.index[0]:05d}_{self.index[1]:05d}"


def context_step(stride: int) -> int:
    """The multiple that a context's top and left are rounded down to: the stride, made a multiple of the
    backbone patch (so that the image end is padded as in the whole image)."""
    return stride * PATCH_SIZE // math.gcd(stride, PATCH_SIZE)


def block_grid(shape: tuple[int, int], block_size: int, overlap: int, stride: int) -> list[list[Block]]:
    """The blocks of an (H, W) image, by grid row then column. ValueError when block_size is smaller than the
    overlap (a block's cells could then reach beyond its neighbours' cores)."""
    if block_size <= 0 or overlap < 0:
        raise ValueError(f"block_size must be positive and overlap >= 0, got {block_size} and {overlap}")
    if block_size < overlap:
        raise ValueError(f"block size {block_size} is smaller than the overlap {overlap}: choose a block size of at "
                         f"least {overlap} pixels")
    step = context_step(stride)

    def spans(size: int) -> list[tuple[int, int, int, int]]:
        out = []
        for start in range(0, size, block_size):
            end = min(size, start + block_size)
            out.append((start, end, max(0, start - overlap) // step * step, min(size, end + overlap)))
        return out

    rows, cols = spans(shape[0]), spans(shape[1])
    return [[Block((i, j), (y0, y1, x0, x1), (cy0, cy1, cx0, cx1))
             for j, (x0, x1, cx0, cx1) in enumerate(cols)]
            for i, (y0, y1, cy0, cy1) in enumerate(rows)]


def first_pixels(labels: np.ndarray) -> np.ndarray:
    """(N,) flat index of each label's first pixel in raster order, for canonical labels (H, W) 1..N."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    values = flat[where]
    running = np.maximum.accumulate(values) if values.size else values
    new = np.ones(values.shape, bool)
    new[1:] = values[1:] > running[:-1]
    return where[new]


@dataclass
class OwnedCells:
    """The cells a block keeps. labels: (h, w) int32, the kept cells numbered 1..k in raster order of their
    first pixels, 0 elsewhere, over the box `origin` (y, x) + labels.shape of the image. anchors: (k, 2) int64
    image (y, x) of each cell's first pixel. scores: (k,) float32 mean same-type probability. cut: (k,) bool,
    the cell touches an edge of the block's context that is not an image edge (the overlap was too small)."""

    labels: np.ndarray
    origin: tuple[int, int]
    anchors: np.ndarray
    scores: np.ndarray
    cut: np.ndarray


def owned_cells(labels: np.ndarray, probability: np.ndarray, block: Block, image_shape: tuple[int, int],
                min_cell_probability: float | None = None) -> OwnedCells:
    """The cells of a block's canonical labels (context-sized (h, w)) whose first pixel lies in its core, with
    mean probability (h, w) >= min_cell_probability when given; cropped to their bounding box."""
    cy0, cy1, cx0, cx1 = block.context
    y0, y1, x0, x1 = block.core
    n = int(labels.max(initial=0))
    anchor_y, anchor_x = np.divmod(first_pixels(labels), labels.shape[1])
    anchor_y, anchor_x = anchor_y + cy0, anchor_x + cx0
    flat = labels.ravel()
    sums = np.bincount(flat, weights=probability.ravel().astype(np.float64), minlength=n + 1)[1:]
    areas = np.bincount(flat, minlength=n + 1)[1:]
    scores = (sums / np.maximum(areas, 1)).astype(np.float32)
    keep = (anchor_y >= y0) & (anchor_y < y1) & (anchor_x >= x0) & (anchor_x < x1)
    if min_cell_probability is not None:
        keep &= scores >= min_cell_probability
    lookup = np.zeros(n + 1, np.int32)
    lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    kept = lookup[labels]
    n_kept = int(keep.sum())
    cut = np.zeros(n_kept + 1, bool)
    edges = [(cy0 > 0, kept[0]), (cy1 < image_shape[0], kept[-1]), (cx0 > 0, kept[:, 0]),
             (cx1 < image_shape[1], kept[:, -1])]
    for is_cut, edge in edges:
        if is_cut:
            cut[edge] = True
    rows, cols = np.flatnonzero(kept.any(1)), np.flatnonzero(kept.any(0))
    if rows.size:
        kept = kept[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        origin = (cy0 + int(rows[0]), cx0 + int(cols[0]))
    else:
        kept, origin = np.zeros((0, 0), np.int32), (cy0, cx0)
    anchors = np.stack((anchor_y[keep], anchor_x[keep]), 1).astype(np.int64)
    return OwnedCells(np.ascontiguousarray(kept), origin, anchors, scores[keep], cut[1:])


def global_ids(anchors: list[np.ndarray], width: int) -> list[np.ndarray]:
    """For each block's (k_b, 2) anchors, the (k_b + 1,) int32 lookup from its local ids (0 the background)
    to global ids 1..N in raster order of the anchors over the whole image of the given width."""
    flat = np.concatenate([a[:, 0] * width + a[:, 1] for a in anchors]) if anchors else np.zeros(0, np.int64)
    rank = np.empty(flat.size, np.int64)
    rank[np.argsort(flat, kind="stable")] = np.arange(1, flat.size + 1)
    lookups, start = [], 0
    for a in anchors:
        lookups.append(np.concatenate(([0], rank[start : start + len(a)])).astype(np.int32))
        start += len(a)
    return lookups


def neighbours(grid: list[list[Block]], block: Block) -> list[Block]:
    """The block itself first, then the up to eight blocks around it in raster order: the blocks whose kept
    cells can reach its core (a kept cell reaches at most `overlap` <= block_size beyond its own core)."""
    i, j = block.index
    around = [grid[a][b] for a in range(max(0, i - 1), min(len(grid), i + 2))
              for b in range(max(0, j - 1), min(len(grid[0]), j + 2)) if (a, b) != (i, j)]
    return [block] + around


def assemble_core(core: Box, parts: list[tuple[np.ndarray, tuple[int, int], np.ndarray]]) -> np.ndarray:
    """(h, w) int32 global labels of a core from parts (kept labels, origin, local -> global lookup), the core's
    own block first: each pixel takes the first part's cell that covers it."""
    y0, y1, x0, x1 = core
    out = np.zeros((y1 - y0, x1 - x0), np.int32)
    for labels, (oy, ox), lookup in parts:
        ty0, ty1 = max(y0, oy), min(y1, oy + labels.shape[0])
        tx0, tx1 = max(x0, ox), min(x1, ox + labels.shape[1])
        if ty0 >= ty1 or tx0 >= tx1:
            continue
        piece = lookup[labels[ty0 - oy : ty1 - oy, tx0 - ox : tx1 - ox]]
        target = out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
        free = (target == 0) & (piece > 0)
        target[free] = piece[free]
    return out


def closing_lookup(present: np.ndarray, n_cells: int) -> np.ndarray | None:
    """None when every id 1..n_cells is present; else the (n_cells + 1,) int32 lookup that closes up the ids
    (order kept, absent ids to 0)."""
    if present.size == n_cells:
        return None
    lookup = np.zeros(n_cells + 1, np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup
