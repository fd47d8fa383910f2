"""Fixed mixed-type evaluation images: cells of other types of the same modality group pasted into an image.

Donor cells come from images of the same split only (so evaluation cells are never training cells, and a
novel image only ever receives novel-type cells): every whole (not border-touching) cell of a type of the
target image's modality group other than the target's own types. Each pasted cell draws a donor type
uniformly, then a cell of that type uniformly, without replacement within one image (until every donor cell
was drawn once); placement and blending are percs.data.paste's.

Intensities: the donor's channels are brought to the target's channel count (the normalisation rule of
percs.data.normalize.default_channels gives three channels; a grey target takes their mean, a 2-channel target
the first two, targets with more than three get constant extra channels), each scaled so that its 1st / 99th
percentiles over the donor image map to 0 / 1, then mapped onto the target channel's 1st / 99th percentiles.
The result is rounded and clipped to the target's dtype, so a variant is stored like its source image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from percs.data.cells import CellTable, cell_table
from percs.data.format import Dataset, ImageRecord
from percs.data.normalize import default_channels, scale_channel
from percs.data.paste import Cutout, cut_cell, paste_cells

PERCENTILES = (1.0, 99.0)


@dataclass
class LoadedImage:
    """An image of a source dataset with what pasting needs: raw pixels (H, W[, C]), labels (H, W) int32 1..N,
    its cell table, its three percentile-scaled channels (3, H, W) float32 (computed on first use)."""

    name: str
    record: ImageRecord
    image: np.ndarray
    labels: np.ndarray
    table: CellTable
    _scaled: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def read(cls, name: str, dataset: Dataset, record: ImageRecord) -> LoadedImage:
        labels = dataset.read_labels(record)
        return cls(name, record, dataset.read_image(record), labels, cell_table(labels))

    @property
    def channels(self) -> int:
        return 1 if self.image.ndim == 2 else int(self.image.shape[2])

    def scaled(self) -> np.ndarray:
        if self._scaled is None:
            stack = self.image[..., None] if self.image.ndim == 2 else self.image
            mapping = default_channels(stack.shape[2])
            self._scaled = np.stack([scale_channel(stack[..., c], *PERCENTILES) if c is not None
                                     else np.zeros(stack.shape[:2], np.float32) for c in mapping])
        return self._scaled


def match_channels(scaled: np.ndarray, source_channels: int, n_channels: int) -> np.ndarray:
    """Scaled donor pixels (3, h, w) (see LoadedImage.scaled) as `n_channels` channels (n_channels, h, w)."""
    if n_channels == 1:
        used = default_channels(source_channels)
        distinct = sorted({c for c in used if c is not None})
        return scaled[[used.index(c) for c in distinct]].mean(0, keepdims=True)
    if n_channels <= 3:
        return scaled[:n_channels]
    return np.concatenate([scaled, np.zeros((n_channels - 3,) + scaled.shape[1:], np.float32)])


def channel_ranges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (C,) the 1st and 99th percentiles of an (H, W[, C]) image (min / max where they coincide)."""
    stack = (image[..., None] if image.ndim == 2 else image).astype(np.float32)
    lo, hi = np.percentile(stack, PERCENTILES, axis=(0, 1))
    same = hi <= lo
    lo = np.where(same, stack.min((0, 1)), lo)
    hi = np.where(same, stack.max((0, 1)), hi)
    return lo.astype(np.float32), hi.astype(np.float32)


def to_dtype(canvas: np.ndarray, dtype: np.dtype, grey: bool) -> np.ndarray:
    """(C, H, W) float32 back to the stored layout (H, W) or (H, W, C), rounded and clipped for integers."""
    image = canvas[0] if grey else np.moveaxis(canvas, 0, -1)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        image = np.clip(np.round(image), info.min, info.max)
    return np.ascontiguousarray(image.astype(dtype))


@dataclass(frozen=True)
class Donor:
    """A donor cell: its image and label."""

    image: LoadedImage
    label: int
    cell_type: str


@dataclass(frozen=True)
class Variant:
    """A mixed-type image: image like the source (H, W[, C]); labels (H, W) int32 with native cells keeping
    their ids 1..N and pasted cells N+1..; types of labels 1..max; pasted: (label, donor image name, donor label)."""

    image: np.ndarray
    labels: np.ndarray
    types: dict[int, str]
    pasted: list[tuple[int, str, int]]
    requested: int


def whole_cells_by_type(images: list[LoadedImage]) -> dict[str, list[Donor]]:
    """Every whole cell of the images, by type, in image then label order."""
    pool: dict[str, list[Donor]] = {}
    for image in images:
        types = image.record.instance_types
        for label, whole in zip(image.table.labels, image.table.whole):
            if whole:
                pool.setdefault(types[label - 1], []).append(Donor(image, int(label), types[label - 1]))
    return pool


def make_variant(target: LoadedImage, donors: dict[str, list[Donor]], paste_ratio: float, gap: int,
                 rng: np.random.Generator) -> Variant:
    """Pastes round(paste_ratio x own cells) donor cells (fewer where they do not fit) into `target`.

    donors: type -> cells that may be pasted (other types of the target's modality group, same split).
    """
    n_native = target.record.n_instances
    lo, hi = channel_ranges(target.image)
    canvas = np.moveaxis((target.image[..., None] if target.image.ndim == 2 else target.image), -1, 0)
    canvas = canvas.astype(np.float32)
    labels = target.labels.astype(np.int32).copy()
    types = {i + 1: t for i, t in enumerate(target.record.instance_types)}
    requested = int(np.floor(paste_ratio * n_native + 0.5)) if donors else 0
    unused: dict[str, list[Donor]] = {}

    def draw(rng: np.random.Generator) -> tuple[Cutout, Donor]:
        if not unused:  # without replacement until every donor cell was drawn once
            unused.update({t: list(cells) for t, cells in sorted(donors.items()) if cells})
        donor_types = sorted(unused)
        cell_type = donor_types[int(rng.integers(len(donor_types)))]
        donor = unused[cell_type].pop(int(rng.integers(len(unused[cell_type]))))
        if not unused[cell_type]:
            del unused[cell_type]
        box = donor.image.table.box_of(donor.label)
        cutout = cut_cell(donor.image.scaled(), donor.image.labels, donor.label, box, gap, donor.cell_type)
        pixels = match_channels(cutout.pixels, donor.image.channels, canvas.shape[0])
        return replace(cutout, pixels=pixels * (hi - lo)[:, None, None] + lo[:, None, None]), donor

    pasted = paste_cells(rng, canvas, labels, labels > 0, requested, draw)
    for label, donor in pasted:
        types[label] = donor.cell_type
    image = to_dtype(canvas, target.image.dtype, target.image.ndim == 2)
    return Variant(image, labels, types, [(label, d.image.name, d.label) for label, d in pasted], requested)
