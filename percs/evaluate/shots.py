"""Several references per query (`percs eval --shots K --negatives M`): the fixed reference plus K - 1 more
positive cells and M negative cells, drawn once with a seed so that every method sees the same ones.

The draws model what a user does with `Segmenter.refine`: more examples of the type from other images, and
cells of the query image that are not the type (the wrongly taken cells they would click). For query i,
`np.random.default_rng([seed, i])` draws

- positives (`positives_from="other-images"`): K - 1 images of the query's split that hold the target type,
  other than the query image (without repetition while there are enough; the reference's own image may be
  among them), and in each a random whole (not border-touching) cell of the type, not the fixed reference, of
  at least half the median area of the type's whole cells in that image (no fragments);
- positives (`positives_from="query-image"`): K - 1 such cells of the query image itself (as many as there are
  when fewer): the cells a user clicks in the image being segmented. They are left out of the scoring, with
  the predicted cells that match them (`percs.evaluate.runner.without_clicked`): a user's examples are not
  results;
- negatives (`negatives_from="random"`): M random whole cells of the query image whose type is not the target
  (as many as there are when fewer, the same area rule per type), the same for every method;
- negatives (`negatives_from="false-positives"`): what a user clicks after seeing a result: the method first
  runs with the positives alone, and M of the cells it took that are cells of another type (a predicted cell
  matching, at IoU > 0.5, a true cell whose type is not the target) are drawn with
  `np.random.default_rng([seed, i, 1])`; the true cells are given as the negatives. Method-dependent by
  design, and one more pass per query.

Without the flags (K = 1, M = 0) nothing is drawn and the run equals a single-reference run exactly. The
choices are recorded per query in metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from percs.evaluate.controls import Reference

if TYPE_CHECKING:
    from percs.data.format import Dataset, ImageRecord, Query


NEGATIVE_SOURCES = ("random", "false-positives")
POSITIVE_SOURCES = ("other-images", "query-image")


@dataclass(frozen=True)
class ShotsConfig:
    """shots: positive references per query, the fixed one included (>= 1); negatives: negative references
    per query (>= 0); seed: of the draws; negatives_from, positives_from: where they are drawn (module
    docstring)."""

    shots: int = 1
    negatives: int = 0
    seed: int = 0
    negatives_from: str = "random"
    positives_from: str = "other-images"

    def __post_init__(self) -> None:
        if self.positives_from not in POSITIVE_SOURCES:
            raise ValueError(f"positives_from must be one of {POSITIVE_SOURCES}, got {self.positives_from!r}")
        if self.negatives_from not in NEGATIVE_SOURCES:
            raise ValueError(f"negatives_from must be one of {NEGATIVE_SOURCES}, got {self.negatives_from!r}")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1 (the fixed reference counts), got {self.shots}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")

    @property
    def active(self) -> bool:
        return self.shots > 1 or self.negatives > 0

    def label(self) -> str:
        """The table row's mark, e.g. "5 shots, 2 negatives" ("... 2 negatives from false positives")."""
        text = f"{self.shots} shot{'s' * (self.shots > 1)}"
        text += " from the query image" if self.shots > 1 and self.positives_from == "query-image" else ""
        text += f", {self.negatives} negative{'s' * (self.negatives != 1)}"
        return text + (" from false positives" if self.negatives and self.negatives_from != "random" else "")


@dataclass(frozen=True)
class Extra:
    """A query's references beyond its fixed one: more positives and the negatives."""

    positives: tuple[Reference, ...]
    negatives: tuple[Reference, ...]


def extra_references(dataset: Dataset, queries: list[Query], config: ShotsConfig,
                     read_labels: Callable[[str], np.ndarray]) -> list[Extra]:
    """The extra references of each query (see the module docstring). read_labels: the caller's cache."""
    by_split: dict[str | None, list[ImageRecord]] = {}
    for record in sorted(dataset.images, key=lambda r: r.name):
        by_split.setdefault(record.split, []).append(record)
    extras = []
    for i, query in enumerate(queries):
        rng = np.random.default_rng([config.seed, i])
        record = dataset.record(query.image)
        if config.positives_from == "query-image":
            holders = [record]
        else:
            holders = [r for r in by_split[record.split]
                       if r.name != query.image and query.target_type in r.instance_types]
        fixed = Reference(query.reference_image, query.reference_label)
        positives = _positives(holders, query.target_type, config.shots - 1, fixed, rng, read_labels)
        drawn = ()
        if config.negatives and config.negatives_from == "random":  # false positives are drawn as the run goes
            others = [t for t in record.instance_types if t != query.target_type]
            negatives = _cells_of(record, others, read_labels, exclude=())
            chosen = sorted(rng.permutation(len(negatives))[: config.negatives])
            drawn = tuple(Reference(query.image, int(negatives[k])) for k in chosen)
        extras.append(Extra(tuple(positives), drawn))
    return extras


def _positives(holders, cell_type: str, count: int, fixed: Reference, rng, read_labels) -> list[Reference]:
    """count cells of cell_type, one per image of holders in a random order, then again while cells remain."""
    if count == 0:
        return []
    pools = {r.name: list(_cells_of(r, [cell_type], read_labels, (fixed.label,) if r.name == fixed.image else ()))
             for r in holders}
    chosen: list[Reference] = []
    while len(chosen) < count and any(pools.values()):
        for k in rng.permutation(len(holders)):
            pool = pools[holders[k].name]
            if pool and len(chosen) < count:
                chosen.append(Reference(holders[k].name, int(pool.pop(int(rng.integers(len(pool)))))))
    return chosen


def _cells_of(record: ImageRecord, cell_types, read_labels, exclude) -> np.ndarray:
    """Label ids of the record's whole cells of cell_types, each type's cells of at least half that type's
    median whole-cell area, minus `exclude`."""
    from percs.data.cells import cell_table

    if not cell_types:
        return np.zeros(0, np.int64)
    table = cell_table(read_labels(record.name))
    kept = []
    for cell_type in cell_types:
        of_type = np.isin(table.labels, record.labels_of_type(cell_type)) & table.whole
        if of_type.any():
            floor = 0.5 * np.median(table.areas[of_type])
            kept.append(table.labels[of_type & (table.areas >= floor)])
    labels = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return np.sort(labels[~np.isin(labels, np.asarray(exclude, np.int64))])


def false_positive_negatives(dataset: Dataset, query: Query, labels: np.ndarray, predicted: np.ndarray,
                             config: ShotsConfig, index: int) -> tuple[Reference, ...]:
    """config.negatives true cells of other types that `predicted` (H, W) took (matched at IoU > 0.5), drawn
    with `np.random.default_rng([config.seed, index, 1])` (see the module docstring); fewer when fewer exist."""
    inside = (predicted > 0) & (labels > 0)
    pairs, overlap = np.unique(np.stack((predicted[inside], labels[inside])).astype(np.int64), axis=1,
                               return_counts=True)
    predicted_area = np.bincount(predicted.ravel().astype(np.int64))
    true_area = np.bincount(labels.ravel().astype(np.int64))
    iou = overlap / (predicted_area[pairs[0]] + true_area[pairs[1]] - overlap)
    record = dataset.record(query.image)
    taken = [int(t) for t in np.unique(pairs[1][iou > 0.5]) if record.type_of(int(t)) != query.target_type]
    rng = np.random.default_rng([config.seed, index, 1])
    chosen = sorted(rng.permutation(len(taken))[: config.negatives])
    return tuple(Reference(query.image, taken[k]) for k in chosen)
