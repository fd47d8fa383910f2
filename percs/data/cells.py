"""Per-cell geometry of a label image: bounding boxes, areas, whether a cell is whole, the median-area cell.

Used by the benchmark builder (reference rule, donor cells for pasting) and the training Dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CellTable:
    """The cells of one (H, W) label image with labels 1..N (canonical; ids without pixels are left out).

    labels: (n,) int64 ids present. boxes: (n, 4) int64 (y0, x0, y1, x1), end exclusive. areas: (n,) int64
    pixels. whole: (n,) bool, True when the cell touches no image border (so it is not cut by the image edge).
    """

    labels: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    whole: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.size)

    def box_of(self, label: int) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.boxes[self._index(label)])

    def area_of(self, label: int) -> int:
        return int(self.areas[self._index(label)])

    def _index(self, label: int) -> int:
        i = int(np.searchsorted(self.labels, label))
        if i >= self.labels.size or self.labels[i] != label:
            raise KeyError(f"label {label} has no pixels")
        return i


def cell_table(labels: np.ndarray) -> CellTable:
    """The CellTable of an (H, W) integer label image (0 background)."""
    if labels.ndim != 2:
        raise ValueError(f"labels has {labels.ndim} dims, expected 2 (H, W)")
    H, W = labels.shape
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False))
    present = [(i + 1, s) for i, s in enumerate(slices) if s is not None]
    ids = np.array([i for i, _ in present], np.int64)
    boxes = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for _, s in present], np.int64).reshape(-1, 4)
    counts = np.bincount(labels.ravel(), minlength=int(ids.max(initial=0)) + 1)
    whole = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < H) & (boxes[:, 3] < W)
    return CellTable(ids, boxes, counts[ids].astype(np.int64), whole)


def median_area_label(labels: np.ndarray, areas: np.ndarray) -> int:
    """The label of median area among candidates: sorted by (area, label), the lower middle one.

    labels, areas: (n,) with n >= 1.
    """
    if labels.size == 0:
        raise ValueError("no candidate cells for the median-area rule")
    order = np.lexsort((labels, areas))
    return int(labels[order[(labels.size - 1) // 2]])
