"""Pasting whole cells of other images onto background, at least `gap` pixels from any cell.

Used alike by the benchmark builder (fixed mixed-type evaluation images) and the training Dataset (random
mixed-type crops), so that the two place and blend cells the same way.

Placement: a cell is cut out with a margin of `gap` pixels (its cutout box); its footprint is the cell
dilated `gap` times by a 3x3 square. A position (the cutout box's top-left corner) is free when the box lies
inside the canvas and the footprint covers no occupied pixel (a cell, pasted or not, or canvas padding), so
between a pasted cell and any other cell there are at least `gap` background pixels (8-connected distance).
The position is uniform over all free positions: `RANDOM_TRIES` positions are drawn uniformly over the canvas
and the first free one is taken (rejection sampling); if none is free, all free positions are found at once (a
correlation of the occupied map with the footprint) and one is drawn uniformly. A cell with no free position is skipped.

Blending: the cell's own pixels replace the canvas; the one-pixel ring around the cell (background of the
canvas, by the gap rule) becomes the mean of the canvas and the source pixels where the source ring was
background too, which softens the cut edge. Pixel values must already be in the canvas's scale (the builder
maps them with percentiles, the Dataset works on normalised images). The cell's flows come with it (flows are
computed per cell, so they do not depend on where the cell lies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage, signal

RANDOM_TRIES = 256
SQUARE = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Cutout:
    """One whole cell cut out of its image with a margin of `gap` pixels on every side.

    pixels: (C, h, w) float32. mask: (h, w) bool, the cell. ring: (h, w) bool, pixels next to the cell
    (3x3 neighbourhood) that were background in the source image. footprint: (h, w) bool, the cell dilated
    `gap` times. flows: (2, h, w) float32 unit flows of the cell (0 outside it), or None.
    """

    pixels: np.ndarray
    mask: np.ndarray
    ring: np.ndarray
    footprint: np.ndarray
    flows: np.ndarray | None
    cell_type: str


def window(array: np.ndarray, y0: int, x0: int, h: int, w: int, fill) -> np.ndarray:
    """array[..., y0:y0+h, x0:x0+w] over the last two axes, with `fill` where the window leaves the array.

    array: (..., H, W). fill: a scalar, or one value per leading index (broadcast as (..., 1, 1)).
    """
    H, W = array.shape[-2:]
    out = np.empty(array.shape[:-2] + (h, w), array.dtype)
    out[...] = np.asarray(fill, array.dtype).reshape(np.shape(fill) + (1, 1)) if np.ndim(fill) else fill
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, H), min(x0 + w, W)
    if ys < ye and xs < xe:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = array[..., ys:ye, xs:xe]
    return out


def cut_cell(pixels: np.ndarray, labels: np.ndarray, label: int, box, gap: int, cell_type: str,
             flows: np.ndarray | None = None) -> Cutout:
    """The Cutout of cell `label` of an image.

    pixels: (C, H, W) float32 in the scale of the canvas it will go to. labels: (H, W). box: the cell's
    (y0, x0, y1, x1). flows: (2, H, W) unit flows of the whole image (each cell's own), or None.
    """
    y0, x0, y1, x1 = (int(v) for v in box)
    m = max(int(gap), 1)
    top, left, h, w = y0 - m, x0 - m, y1 - y0 + 2 * m, x1 - x0 + 2 * m
    source = window(labels, top, left, h, w, -1)
    mask = source == label
    ring = ndimage.binary_dilation(mask, SQUARE) & ~mask & (source == 0)
    footprint = ndimage.binary_dilation(mask, SQUARE, iterations=gap) if gap > 0 else mask.copy()
    cut = window(pixels, top, left, h, w, 0.0).astype(np.float32, copy=False)
    cell_flows = None if flows is None else window(flows, top, left, h, w, 0.0) * mask
    return Cutout(cut, mask, ring, footprint, cell_flows, cell_type)


def find_position(rng: np.random.Generator, occupied: np.ndarray, footprint: np.ndarray) -> tuple[int, int] | None:
    """A top-left corner, uniform over those where `footprint` (h, w) lies inside `occupied` (H, W) and covers
    no True pixel; None when there is none."""
    H, W = occupied.shape
    h, w = footprint.shape
    if h > H or w > W:
        return None
    ys, xs = rng.integers(H - h + 1, size=RANDOM_TRIES), rng.integers(W - w + 1, size=RANDOM_TRIES)
    patches = np.lib.stride_tricks.sliding_window_view(occupied, (h, w))[ys, xs]
    free = ~(patches & footprint).any(axis=(1, 2))
    if free.any():
        k = int(np.argmax(free))  # the first free draw: rejection sampling, uniform over free corners
        return int(ys[k]), int(xs[k])
    overlap = signal.correlate(occupied.astype(np.float32), footprint.astype(np.float32), mode="valid")
    corners = np.flatnonzero(overlap < 0.5)
    if corners.size == 0:
        return None
    y, x = divmod(int(corners[rng.integers(corners.size)]), W - w + 1)
    return y, x


def paste_cell(canvas: np.ndarray, labels: np.ndarray, occupied: np.ndarray, cutout: Cutout, corner, new_label: int,
               flows: np.ndarray | None = None) -> None:
    """Writes a Cutout in place at `corner` (y, x): pixels and ring blend into canvas (C, H, W), new_label into
    labels (H, W), the cell into occupied (H, W), its flows into flows (2, H, W) when given."""
    y, x = corner
    h, w = cutout.mask.shape
    region = (slice(y, y + h), slice(x, x + w))
    view = canvas[(slice(None),) + region]
    ring = cutout.ring & (labels[region] == 0)
    view[:, ring] = 0.5 * view[:, ring] + 0.5 * cutout.pixels[:, ring]
    view[:, cutout.mask] = cutout.pixels[:, cutout.mask]
    labels[region][cutout.mask] = new_label
    occupied[region] |= cutout.mask
    if flows is not None and cutout.flows is not None:
        flows[(slice(None),) + region][:, cutout.mask] = cutout.flows[:, cutout.mask]


def paste_cells(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, occupied: np.ndarray, count: int,
                draw: Callable[[np.random.Generator], tuple[Cutout, object]], flows: np.ndarray | None = None
                ) -> list[tuple[int, object]]:
    """Pastes up to `count` cells, each drawn by `draw(rng) -> (Cutout, key)`; returns [(new label, key)].

    New labels continue after labels.max(). Cells without a free position are skipped.
    """
    pasted = []
    next_label = int(labels.max(initial=0)) + 1
    for _ in range(count):
        cutout, key = draw(rng)
        corner = find_position(rng, occupied, cutout.footprint)
        if corner is None:
            continue
        paste_cell(canvas, labels, occupied, cutout, corner, next_label, flows)
        pasted.append((next_label, key))
        next_label += 1
    return pasted
