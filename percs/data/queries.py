"""The fixed evaluation queries of a benchmark and the deterministic rule that picks their references.

For every evaluation image (val, test, novel), one query per cell type present in it (its own types and the
pasted ones; distractor types never), `origin` "native" or "pasted". The reference of a query (image I,
type t), with `reference="another-image"` (default):

1. candidates are the images of I's split that hold whole (not border-touching) native cells of type t, are
   of another group than I (another source image, and another tile where a group pattern says so), taken
   once per source image (its first stored variant), in name order;
2. starting after I's source image in that order and wrapping around, the first candidate with an eligible
   cell gives the reference: its whole native type-t cell of median area (sorted by area then label, the lower
   middle one); cells that were pasted into I are not eligible (a query never gets its own pasted cell back);
3. without any candidate, the reference comes from I itself: its whole type-t cell of median area (any type-t
   cell of median area when none is whole).

`reference="same-image"` goes to step 3 directly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from percs.data.cells import median_area_label
from percs.data.format import Query

REFERENCE_RULES = ("another-image", "same-image")


@dataclass(frozen=True)
class EvalImage:
    """One stored evaluation image, as the reference rule sees it.

    name: its name in the benchmark; source: the source image it was made from (variants share it);
    variant: 0 for the first stored version; group: the split group of the source. Per instance (n,):
    labels (canonical, 1..n), types, areas, whole (touches no image border), source_labels (the native
    cell's label in the source image, -1 for pasted cells). pasted_from: (donor source image, donor label)
    of every pasted cell.
    """

    name: str
    split: str
    source: str
    variant: int
    group: str
    labels: np.ndarray
    types: tuple[str, ...]
    areas: np.ndarray
    whole: np.ndarray
    source_labels: np.ndarray
    pasted_from: frozenset = frozenset()

    @property
    def native(self) -> np.ndarray:
        return self.source_labels >= 0

    def of_type(self, cell_type: str) -> np.ndarray:
        return np.array([t == cell_type for t in self.types], bool)


def make_queries(images: Sequence[EvalImage], distractors: Sequence[str] = (), reference: str = "another-image"
                 ) -> list[Query]:
    """The queries of all evaluation images, in image-name order and, per image, type-name order."""
    if reference not in REFERENCE_RULES:
        raise ValueError(f"reference rule {reference!r} is not one of {REFERENCE_RULES}")
    candidates = _candidates(images)
    queries = []
    for image in sorted(images, key=lambda im: im.name):
        for cell_type in sorted(set(image.types) - set(distractors)):
            is_type = image.of_type(cell_type)
            origin = "native" if (is_type & image.native).any() else "pasted"
            found = None
            if reference == "another-image":
                found = _from_another_image(image, cell_type, candidates.get((image.split, cell_type), []))
            if found is None:
                found = image.name, _median_cell(image, is_type & image.whole) or _median_cell(image, is_type)
            queries.append(Query(image.name, cell_type, found[0], int(found[1]), origin))
    return queries


def _candidates(images: Sequence[EvalImage]) -> dict[tuple[str, str], list[EvalImage]]:
    """(split, type) -> first stored variant of every source image with whole native cells of that type."""
    first: dict[str, EvalImage] = {}
    for image in sorted(images, key=lambda im: (im.variant, im.name)):
        first.setdefault(image.source, image)
    out: dict[tuple[str, str], list[EvalImage]] = {}
    for source in sorted(first):
        image = first[source]
        for cell_type in sorted(set(np.array(image.types, object)[image.native & image.whole].tolist())):
            out.setdefault((image.split, cell_type), []).append(image)
    return out


def _from_another_image(image: EvalImage, cell_type: str, candidates: list[EvalImage]) -> tuple[str, int] | None:
    start = bisect.bisect_right([c.source for c in candidates], image.source)
    for k in range(len(candidates)):
        candidate = candidates[(start + k) % len(candidates)]
        if candidate.group == image.group:
            continue
        eligible = candidate.of_type(cell_type) & candidate.native & candidate.whole
        eligible &= np.array([(candidate.source, int(s)) not in image.pasted_from for s in candidate.source_labels])
        label = _median_cell(candidate, eligible)
        if label is not None:
            return candidate.name, label
    return None


def _median_cell(image: EvalImage, selected: np.ndarray) -> int | None:
    if not selected.any():
        return None
    return median_area_label(image.labels[selected], image.areas[selected])
