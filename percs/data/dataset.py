"""The training Dataset: random crops of one split, cells of other types pasted in, and a reference cell.

Per item (index i of epoch e, all randomness from np.random.default_rng([seed, e, i]), so items do not depend
on the DataLoader's workers or their order; call `set_epoch` before each epoch's iterator):

1. the query image is image i mod n of the split; a crop of `crop_size` (a multiple of the patch size 14) is
   drawn uniformly (where the image is smaller, it sits at a random offset and the rest is padding: pixels at
   the image's median background value, no cells, `valid` False); up to `crop_tries` crops are drawn until
   one holds a cell of a non-distractor type;
2. pasting (with `paste_probability`; on by default for the PerCS protocol, off for the PanNuke protocol):
   round(paste_ratio x cells in the crop) whole cells of other types of the image's modality group, from
   images of the same split, each of a type drawn uniformly then a cell drawn uniformly, placed and blended
   as percs.data.paste describes (onto background, at least `gap` pixels from any cell, never on padding);
3. random flips (each axis with `flip_probability`); flow vectors flip with the image;
4. the reference: with `absent_fraction`, a type of the split absent from the crop (empty target);
   otherwise a type present in the crop (pasted included, distractors never), drawn by `reference_sampling`:
   "cell" (default) takes the type of a cell drawn uniformly from the crop's cells, so a type is the target
   in proportion to its cells; "type" draws uniformly among the present types. The paper only says a
   reference is "randomly sampled"; "type" makes the few pasted cells of each donor type the target most of
   the time (pasted types outnumber the native one), so the same-type map is nearly all negative (on
   percs-mini the target covered 1.3% of a crop, median) and a frozen-backbone head learned "no" everywhere.
   Its cell is drawn from the split's whole cells of that type (an image uniformly, the query image
   included, then a cell uniformly); the reference image is the `reference_size` window of that image centred
   on the cell's box, the reference mask that cell in the window; both flipped at random too;
5. with a `reference_diameter` D (`percs.data.scale`, the rule prediction uses), the crop of step 1 is cut at
   about crop_size x the image's median cell diameter / D (times a random factor j, log-uniform within
   `scale_jitter`), and after step 4 the crop and the reference window are resized by D / the reference cell's
   diameter x j (pixels and flows bilinearly, labels by nearest), and a crop_size window of the crop taken.

Images are normalised by percs.data.normalize.normalize_image on the whole image; flows are computed once per
image on the whole image with percs.flows.masks_to_flows and cropped; pasted cells bring their own flows (a
cell's flows do not depend on its neighbours or position). Both are cached per image and per cell (per
process). Away from the crop border an item's flows equal masks_to_flows(instances), except for cells whose
centre is tied (several pixels nearest the median (y, x)), where the kernel's raster-order tie break is
mirrored by a flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fastremap
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from percs.data.format import Dataset, load_dataset
from percs.data.paste import paste_cells, window
from percs.data.prepared import CellIndex, ImageCache, PreparedImage
from percs.data.scale import (MAX_SCALE, MIN_SCALE, check_reference_diameter, equivalent_diameter, resize_array,
                              scaled_shape)

PATCH_SIZE = 14
REFERENCE_SAMPLING = ("cell", "type")


@dataclass(frozen=True)
class SamplingConfig:
    """How the Dataset samples; see the module docstring. paste=None: from the dataset's protocol.
    distractor_types=None: the dataset's (manifest meta["distractor_types"]); they are never reference types."""

    crop_size: int = 224
    reference_size: int = 224
    flip_probability: float = 0.5
    paste: bool | None = None
    paste_ratio: float = 0.5
    paste_probability: float = 1.0
    absent_fraction: float = 0.1
    gap: int = 1
    crop_tries: int = 10
    distractor_types: tuple[str, ...] | None = None
    reference_sampling: str = "cell"
    scale_jitter: float = 0.25

    def check(self) -> None:
        for name in ("crop_size", "reference_size"):
            size = getattr(self, name)
            if size <= 0 or size % PATCH_SIZE:
                raise ValueError(f"{name} is {size}, expected a positive multiple of the patch size {PATCH_SIZE}")
        for name in ("flip_probability", "paste_probability", "absent_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is {getattr(self, name)}, expected a probability in [0, 1]")
        if self.reference_sampling not in REFERENCE_SAMPLING:
            raise ValueError(f"reference_sampling is {self.reference_sampling!r}, expected one of {REFERENCE_SAMPLING}")
        if not (np.isfinite(self.scale_jitter) and self.scale_jitter >= 0):
            raise ValueError(f"scale_jitter is {self.scale_jitter}, expected a finite number >= 0")
        if self.paste_ratio < 0 or self.gap < 1 or self.crop_tries < 1:
            raise ValueError(f"paste_ratio ({self.paste_ratio}) must be >= 0, gap ({self.gap}) and crop_tries "
                             f"({self.crop_tries}) >= 1")


@dataclass
class TrainItem:
    """One training sample (S = crop_size, R = reference_size, K = instances in the crop).

    image: (3, S, S) float32, normalised. flows: (2, S, S) float32 UNIT flows (dy, dx) of every cell, whatever
    its type; the model's flow target is percs.flows.FLOW_SCALE x these. same_type: (S, S) float32, 1 on cells
    of the reference's type. instances: (S, S) int64, 0 background, 1..K in raster order of first pixels.
    instance_types: (K,) int64, the type of instance k + 1 as an index into the dataset's cell_types.
    pasted: (K,) bool, instance k + 1 was pasted. valid: (S, S) bool, False on padding. reference_image:
    (3, R, R) float32, normalised. reference_mask: (R, R) float32, the reference cell. reference_type: ()
    int64, its type index. Targets for the contrastive loss: instances and instance_types.
    """

    image: torch.Tensor
    flows: torch.Tensor
    same_type: torch.Tensor
    instances: torch.Tensor
    instance_types: torch.Tensor
    pasted: torch.Tensor
    valid: torch.Tensor
    reference_image: torch.Tensor
    reference_mask: torch.Tensor
    reference_type: torch.Tensor


@dataclass
class Batch:
    """TrainItems stacked: every field gains a leading batch axis B; instance_types (B, K) is padded with -1
    and pasted (B, K) with False to the largest K of the batch."""

    image: torch.Tensor
    flows: torch.Tensor
    same_type: torch.Tensor
    instances: torch.Tensor
    instance_types: torch.Tensor
    pasted: torch.Tensor
    valid: torch.Tensor
    reference_image: torch.Tensor
    reference_mask: torch.Tensor
    reference_type: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> Batch:
        return Batch(**{k: v.to(device, non_blocking=non_blocking) for k, v in vars(self).items()})


def collate(items: list[TrainItem]) -> Batch:
    """DataLoader collate_fn for TrainItems."""
    if not items:
        raise ValueError("collate got no items")
    k = max(int(item.instance_types.numel()) for item in items)
    types = torch.full((len(items), k), -1, dtype=torch.int64)
    pasted = torch.zeros((len(items), k), dtype=torch.bool)
    for b, item in enumerate(items):
        types[b, :item.instance_types.numel()] = item.instance_types
        pasted[b, :item.pasted.numel()] = item.pasted
    stacked = {name: torch.stack([getattr(item, name) for item in items])
               for name in vars(items[0]) if name not in ("instance_types", "pasted")}
    return Batch(instance_types=types, pasted=pasted, **stacked)


@dataclass
class _Canvas:
    """The crop being assembled: pixels (3, S, S), labels (S, S) int32 (image ids, pasted ids after them),
    flows (2, S, S), valid (S, S) bool, type name of every label, labels that were pasted."""

    pixels: np.ndarray
    labels: np.ndarray
    flows: np.ndarray
    valid: np.ndarray
    types: dict[int, str]
    pasted: set[int]


class TrainDataset(TorchDataset):
    """Training items from one split of a percs dataset (a built benchmark or any dataset with splits).

    dataset: a Dataset or its folder. length: items per epoch (default: the number of images of the split).
    reference_diameter: 0 (the paper) crops every image at its own scale; D > 0 resizes each item so that its
    reference cell is D pixels across, times a random factor within `config.scale_jitter` (step 5 of the module
    docstring; `percs.data.scale`, the rule prediction uses).
    """

    def __init__(self, dataset: Dataset | str | Path, split: str = "train", config: SamplingConfig = SamplingConfig(),
                 seed: int = 0, length: int | None = None, reference_diameter: float = 0.0):
        config.check()
        check_reference_diameter(reference_diameter, "reference_diameter")
        self.reference_diameter = float(reference_diameter)
        self.dataset = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
        self.records = self.dataset.in_split(split)
        if not self.records:
            raise ValueError(f"dataset {self.dataset.name!r} has no images in split {split!r}")
        self.split, self.config, self.seed, self.epoch = split, config, int(seed), 0
        self.length = len(self.records) if length is None else int(length)
        self.type_index = {t.name: i for i, t in enumerate(self.dataset.cell_types)}
        distractors = config.distractor_types
        self.distractors = set(self.dataset.meta.get("distractor_types", []) if distractors is None else distractors)
        self.paste = config.paste if config.paste is not None else _protocol(self.dataset) == "percs"
        self.cells = CellIndex.build(self.dataset, self.records)
        self.reference_types = sorted(t for t in self.cells.whole if t not in self.distractors)
        if not self.reference_types:
            raise ValueError(f"split {split!r} of {self.dataset.name!r} has no whole cell of a non-distractor type")
        self.cache = ImageCache(self.dataset, self.records, config.gap)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's random draws (before creating the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> TrainItem:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image_index = index % len(self.records)
        jitter = self._jitter(rng) if self.reference_diameter else 1.0
        canvas = self._crop(image_index, rng, self._native_crop_size(image_index, jitter))
        if self.paste and rng.random() < self.config.paste_probability:
            self._paste(image_index, canvas, rng)
        _flip(canvas, rng, self.config.flip_probability)
        reference_type = self._reference_type(canvas, rng)
        cell = self.cells.draw(reference_type, rng)
        scale = 1.0
        if self.reference_diameter:
            across = equivalent_diameter(self.cells.tables[cell[0]].area_of(cell[1]))
            scale = float(np.clip(self.reference_diameter / across * jitter, MIN_SCALE, MAX_SCALE))
            canvas = self._rescale(canvas, scale, rng, self.cache.image(image_index).fill)
        reference_image, reference_mask = self._reference(cell, scale, rng)
        return self._item(canvas, reference_type, reference_image, reference_mask)

    def _jitter(self, rng: np.random.Generator) -> float:
        """A random factor, log-uniform in [1 / (1 + scale_jitter), 1 + scale_jitter]."""
        spread = np.log1p(self.config.scale_jitter)
        return float(np.exp(rng.uniform(-spread, spread)))

    def _native_crop_size(self, image_index: int, jitter: float) -> int:
        """The side of the crop cut from the image before it is resized to about crop_size: crop_size at the
        image's own scale; with a reference_diameter, crop_size over the scale that would bring the image's median
        cell to it (the reference, drawn after the crop, sets the exact scale)."""
        S = self.config.crop_size
        if not self.reference_diameter:
            return S
        areas = self.cells.tables[image_index].areas
        median = equivalent_diameter(np.median(areas)) if areas.size else self.reference_diameter
        scale = np.clip(self.reference_diameter / median * jitter, MIN_SCALE, MAX_SCALE)
        return int(np.ceil(S / scale))

    def _rescale(self, canvas: _Canvas, scale: float, rng: np.random.Generator, fill: np.ndarray) -> _Canvas:
        """The canvas resized by scale (pixels and flows bilinear, labels and valid nearest), then a crop_size
        window of it at a random offset (padded where it is smaller); cells outside the window are dropped."""
        S = self.config.crop_size
        shape = scaled_shape(canvas.labels.shape, scale)
        labels = resize_array(canvas.labels, shape, "nearest")
        y0, x0 = (int(rng.integers(min(0, n - S), max(0, n - S) + 1)) for n in shape)
        labels = window(labels, y0, x0, S, S, 0)
        present = set(np.unique(labels[labels > 0]).tolist())
        return _Canvas(window(resize_array(canvas.pixels, shape), y0, x0, S, S, fill), labels,
                       window(resize_array(canvas.flows, shape), y0, x0, S, S, 0.0),
                       window(resize_array(canvas.valid, shape, "nearest"), y0, x0, S, S, False),
                       {k: t for k, t in canvas.types.items() if k in present}, canvas.pasted & present)

    def _crop(self, image_index: int, rng: np.random.Generator, size: int | None = None) -> _Canvas:
        """A size x size crop (default crop_size) of the image, holding a non-distractor cell where one of
        crop_tries draws does."""
        image = self.cache.image(image_index)
        types = self.records[image_index].instance_types
        S, (H, W) = size or self.config.crop_size, image.labels.shape
        for _ in range(self.config.crop_tries):
            y0 = int(rng.integers(min(0, H - S), max(0, H - S) + 1))
            x0 = int(rng.integers(min(0, W - S), max(0, W - S) + 1))
            labels = window(image.labels, y0, x0, S, S, 0)
            present = np.unique(labels[labels > 0])
            if any(types[label - 1] not in self.distractors for label in present):
                break
        valid = window(np.ones((H, W), bool), y0, x0, S, S, False)
        return _Canvas(window(image.pixels, y0, x0, S, S, image.fill), labels, window(image.flows, y0, x0, S, S, 0.0),
                       valid, {int(label): types[label - 1] for label in present}, set())

    def _paste(self, image_index: int, canvas: _Canvas, rng: np.random.Generator) -> None:
        own = set(self.records[image_index].instance_types)
        groups = {self.dataset.modality_of(t) for t in own}
        donor_types = sorted(t for t in self.cells.whole if t not in own and self.dataset.modality_of(t) in groups)
        count = int(np.floor(self.config.paste_ratio * len(canvas.types) + 0.5))
        if not donor_types or count == 0:
            return

        def draw(rng: np.random.Generator):
            cell_type = donor_types[int(rng.integers(len(donor_types)))]
            index, label, box = self.cells.draw(cell_type, rng)
            return self.cache.cutout(index, label, box), cell_type

        occupied = (canvas.labels > 0) | ~canvas.valid
        for label, cell_type in paste_cells(rng, canvas.pixels, canvas.labels, occupied, count, draw, canvas.flows):
            canvas.types[label] = cell_type
            canvas.pasted.add(label)

    def _reference_type(self, canvas: _Canvas, rng: np.random.Generator) -> str:
        eligible = [t for _, t in sorted(canvas.types.items()) if t in self.cells.whole and t not in self.distractors]
        present = sorted(set(eligible))
        absent = [t for t in self.reference_types if t not in present]
        if absent and (not present or rng.random() < self.config.absent_fraction):
            return absent[int(rng.integers(len(absent)))]
        if self.config.reference_sampling == "cell":
            return eligible[int(rng.integers(len(eligible)))]
        return present[int(rng.integers(len(present)))]

    def _reference(self, cell, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The reference_size window around cell (image index, label, box) of the image resized by scale."""
        index, label, (y0, x0, y1, x1) = cell
        image: PreparedImage = self.cache.image(index)
        R = self.config.reference_size
        side = R if scale == 1 else int(np.ceil(R / scale))
        top, left = (y0 + y1) // 2 - side // 2, (x0 + x1) // 2 - side // 2
        pixels = window(image.pixels, top, left, side, side, image.fill)
        mask = (window(image.labels, top, left, side, side, 0) == label).astype(np.float32)
        if side != R:
            pixels, mask = resize_array(pixels, (R, R)), resize_array(mask, (R, R), "nearest")
        if rng.random() < self.config.flip_probability:
            pixels, mask = pixels[:, ::-1], mask[::-1]
        if rng.random() < self.config.flip_probability:
            pixels, mask = pixels[:, :, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(pixels), np.ascontiguousarray(mask)

    def _item(self, canvas: _Canvas, reference_type: str, reference_image, reference_mask) -> TrainItem:
        instances, remap = fastremap.renumber(np.ascontiguousarray(canvas.labels), preserve_zero=True, in_place=False)
        order = sorted((new, old) for old, new in remap.items() if old != 0)
        instance_types = [self.type_index[canvas.types[int(old)]] for _, old in order]
        pasted = [int(old) in canvas.pasted for _, old in order]
        same = [canvas.types[int(old)] == reference_type for _, old in order]
        same_type = np.r_[False, np.array(same, bool)][instances]
        return TrainItem(torch.from_numpy(np.ascontiguousarray(canvas.pixels)),
                         torch.from_numpy(np.ascontiguousarray(canvas.flows)),
                         torch.from_numpy(same_type.astype(np.float32)),
                         torch.from_numpy(instances.astype(np.int64)),
                         torch.tensor(instance_types, dtype=torch.int64).reshape(-1),
                         torch.tensor(pasted, dtype=torch.bool).reshape(-1),
                         torch.from_numpy(np.ascontiguousarray(canvas.valid)),
                         torch.from_numpy(reference_image), torch.from_numpy(reference_mask),
                         torch.tensor(self.type_index[reference_type], dtype=torch.int64))


def _protocol(dataset: Dataset) -> str:
    """The dataset's protocol (manifest meta, else pannuke when an image holds several types, else percs)."""
    protocol = dataset.meta.get("protocol")
    if protocol:
        return protocol
    return "pannuke" if any(len(set(r.instance_types)) > 1 for r in dataset.images) else "percs"


def _flip(canvas: _Canvas, rng: np.random.Generator, probability: float) -> None:
    """Flips the canvas in place along y, then x, each with `probability`; the flow component along the flipped
    axis changes sign."""
    for axis in (0, 1):
        if rng.random() < probability:
            canvas.pixels = canvas.pixels[:, ::-1] if axis == 0 else canvas.pixels[:, :, ::-1]
            canvas.labels = canvas.labels[::-1] if axis == 0 else canvas.labels[:, ::-1]
            canvas.valid = canvas.valid[::-1] if axis == 0 else canvas.valid[:, ::-1]
            flows = canvas.flows[:, ::-1] if axis == 0 else canvas.flows[:, :, ::-1]
            flows = flows.copy()
            flows[axis] *= -1
            canvas.flows = flows
