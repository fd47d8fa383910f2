"""Controls: the same queries with their reference replaced, to show whether a method reads its reference.

`wrong-reference`: each query keeps its image and target type (and is scored against the target's cells),
but its reference becomes a cell of a type ABSENT from the query image. A method that segments what the
reference shows finds nothing right and its AP collapses; one that ignores the reference keeps its AP.
The choice is deterministic: for query i, `np.random.default_rng([seed, i])` draws

1. a type among the absent types that have cells in the query's split (types of the target's modality
   group first, when there are any; other splits only when the query's split has no absent type);
2. an image of that pool holding the type (names sorted);
3. that image's whole (not border-touching) cell of the type of median area (any such cell when none is
   whole), as `percs.data.queries` picks fixed references.

A query whose image holds every type of the dataset has no wrong reference and is left out (the count is
recorded in metrics.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # the `percs eval` parser reads CONTROLS: no SciPy or dataset code at import
    from percs.data.format import Dataset, ImageRecord, Query

CONTROLS = ("wrong-reference",)


@dataclass(frozen=True)
class Reference:
    """A reference cell: instance `label` of image `image`."""

    image: str
    label: int


def wrong_references(dataset: Dataset, queries: list[Query], seed: int,
                     read_labels: Callable[[str], np.ndarray]) -> list[Reference | None]:
    """A reference of an absent type for each query (None where the image holds every type).

    read_labels: image name -> (H, W) int32 labels (the caller's cache).
    """
    chooser = _Chooser(dataset, read_labels)
    return [chooser.choose(q, np.random.default_rng([seed, i])) for i, q in enumerate(queries)]


class _Chooser:
    def __init__(self, dataset: Dataset, read_labels: Callable[[str], np.ndarray]):
        self.dataset, self.read_labels = dataset, read_labels
        self.by_split: dict[str | None, list[ImageRecord]] = {}
        for record in sorted(dataset.images, key=lambda r: r.name):
            self.by_split.setdefault(record.split, []).append(record)

    def choose(self, query: Query, rng: np.random.Generator) -> Reference | None:
        present = set(self.dataset.record(query.image).instance_types)
        split = self.dataset.record(query.image).split
        for pool in (self.by_split[split], sorted(self.dataset.images, key=lambda r: r.name)):
            absent = sorted({t for r in pool for t in r.instance_types} - present)
            if absent:
                break
        else:
            return None
        modality = self.dataset.modality_of(query.target_type)
        same_group = [t for t in absent if self.dataset.modality_of(t) == modality]
        types = same_group or absent
        cell_type = types[rng.integers(len(types))]
        holders = [r for r in pool if cell_type in r.instance_types]
        record = holders[rng.integers(len(holders))]
        return Reference(record.name, self._median_cell(record, cell_type))

    def _median_cell(self, record: ImageRecord, cell_type: str) -> int:
        from percs.data.cells import cell_table, median_area_label

        table = cell_table(self.read_labels(record.name))
        of_type = np.isin(table.labels, record.labels_of_type(cell_type))
        chosen = of_type & table.whole if (of_type & table.whole).any() else of_type
        return median_area_label(table.labels[chosen], table.areas[chosen])
