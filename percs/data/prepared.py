"""Per-image and per-cell caches of the training Dataset: normalised pixels, labels, flows, cell tables, cutouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from percs.data.cells import CellTable, cell_table
from percs.data.format import Dataset, ImageRecord
from percs.data.normalize import normalize_image
from percs.data.paste import Cutout, cut_cell
from percs.flows import masks_to_flows


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for sampling.

    pixels: (3, H, W) float32, percs.data.normalize.normalize_image of the whole image. labels: (H, W) int32.
    flows: (2, H, W) float32 unit flows of all cells (percs.flows.masks_to_flows on the whole image).
    fill: (3,) float32, per channel the median of the background pixels (0 where there is no background),
    the value of padding where a crop or a reference window leaves the image.
    """

    pixels: np.ndarray
    labels: np.ndarray
    flows: np.ndarray
    fill: np.ndarray


def prepare_image(dataset: Dataset, record: ImageRecord) -> PreparedImage:
    """Reads, normalises and computes the flows of one image (errors name the file at fault)."""
    labels = dataset.read_labels(record)
    pixels = normalize_image(dataset.read_image(record))
    background = labels == 0
    fill = np.median(pixels[:, background], axis=1) if background.any() else np.zeros(3)
    return PreparedImage(pixels, labels, masks_to_flows(labels), fill.astype(np.float32))


class ImageCache:
    """PreparedImage per image index and Cutout per (image index, label), each computed once (per process:
    every DataLoader worker fills its own)."""

    def __init__(self, dataset: Dataset, records: list[ImageRecord], gap: int):
        self.dataset, self.records, self.gap = dataset, records, gap
        self._images: dict[int, PreparedImage] = {}
        self._cutouts: dict[tuple[int, int], Cutout] = {}

    def image(self, index: int) -> PreparedImage:
        if index not in self._images:
            self._images[index] = prepare_image(self.dataset, self.records[index])
        return self._images[index]

    def cutout(self, index: int, label: int, box) -> Cutout:
        """The cell `label` of image `index` (box: its (y0, x0, y1, x1)) with its pixels and flows."""
        key = (index, label)
        if key not in self._cutouts:
            image = self.image(index)
            self._cutouts[key] = cut_cell(image.pixels, image.labels, label, box, self.gap,
                                          self.records[index].type_of(label), image.flows)
        return self._cutouts[key]


@dataclass(frozen=True)
class CellIndex:
    """The cells of a split, read once: per image its CellTable; per type, the whole (not border-touching)
    cells as (image index, label) pairs grouped by image."""

    tables: tuple[CellTable, ...]
    whole: dict[str, dict[int, tuple[int, ...]]]

    @classmethod
    def build(cls, dataset: Dataset, records: list[ImageRecord]) -> CellIndex:
        tables, whole = [], {}
        for i, record in enumerate(records):
            table = cell_table(dataset.read_labels(record))
            tables.append(table)
            for label in table.labels[table.whole]:
                whole.setdefault(record.type_of(int(label)), {}).setdefault(i, []).append(int(label))
        return cls(tuple(tables), {t: {i: tuple(v) for i, v in by.items()} for t, by in whole.items()})

    def draw(self, cell_type: str, rng: np.random.Generator) -> tuple[int, int, tuple[int, int, int, int]]:
        """A whole cell of `cell_type`: an image uniformly among those that have one, then a cell uniformly.
        Returns (image index, label, box)."""
        by_image = self.whole[cell_type]
        images = sorted(by_image)
        index = images[int(rng.integers(len(images)))]
        labels = by_image[index]
        label = labels[int(rng.integers(len(labels)))]
        return index, label, self.tables[index].box_of(label)
