"""Random label images for tests and benchmarks: touching cells of varied size, gaps and shuffled labels."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import expand_labels


def touching_cells(shape: tuple[int, int], n_cells: int, radius: float, seed: int = 0) -> np.ndarray:
    """(H, W) int32 labels 1..n of roughly round, touching cells grown from random centres.

    Cells are Voronoi regions of random centres, cut to at most `radius` from their centre, so neighbours
    share borders where centres are close and background stays between sparse ones.
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    labels = np.zeros(shape, np.int32)
    if n_cells == 0 or H == 0 or W == 0:
        return labels
    ys = rng.integers(0, H, n_cells)
    xs = rng.integers(0, W, n_cells)
    labels[ys, xs] = np.arange(1, n_cells + 1)
    return expand_labels(labels, distance=radius).astype(np.int32)


def scramble_labels(labels: np.ndarray, seed: int = 0, max_label: int = 2**31 - 2) -> np.ndarray:
    """The same masks under random, gapped, large label values (0 stays background)."""
    rng = np.random.default_rng(seed)
    n = int(labels.max()) if labels.size else 0
    values = rng.choice(max_label, size=n, replace=False) + 1 if n else np.zeros(0)
    lut = np.concatenate([[0], values]).astype(np.int64)
    return lut[labels]
