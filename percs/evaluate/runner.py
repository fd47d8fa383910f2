"""`percs eval`: one method over every fixed query of a benchmark split, scored and written to a folder.

    OUT/metrics.json        method, dataset (name, manifest sha256), split, control, figures (percs.evaluate.report)
    OUT/table.md            the figures as a row block of the paper's Table 1 (percs.evaluate.table)
    OUT/predictions/NNNN.tif  query NNNN's predicted labels, int32 (the order of metrics.json's "queries")
    OUT/worst/NNNN.png      overlays of the worst queries by AP@0.5 (percs.evaluate.worst)

Queries are run image by image (a split's queries are stored by image name), so each image is read once;
reference images stay in a small cache. The true labels of a query are its image's cells of the target type
(as in validation, `percs.train.validate`), whichever reference the method was given. Positives clicked in the
query image itself (`--shots K --positives-from query-image`) are left out of the scoring (`without_clicked`):
a user's examples are not results.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from percs.data.format import Dataset, Query
from percs.data.io import write_tiff
from percs.evaluate.controls import CONTROLS, Reference, wrong_references
from percs.evaluate.methods import Method
from percs.evaluate.report import build_metrics, write_outputs
from percs.evaluate.shots import Extra, ShotsConfig, extra_references, false_positive_negatives
from percs.evaluate.summary import IOU_RULE, THRESHOLDS, BootstrapConfig, QueryCounts
from percs.metrics import evaluate, label_overlaps


class EvalError(ValueError):
    """An evaluation that cannot run as asked (no queries, output folder in use, a method's bad output)."""


@dataclass(frozen=True)
class EvalConfig:
    """split: the benchmark split whose fixed queries are run. control: None or one of CONTROLS;
    control_seed: its seed. worst: overlays of that many worst queries (0: none). progress: a progress bar.
    every: run every k-th query of the split in stored order, from the first (1: all; a subset for methods too
    slow for the whole split, recorded in metrics.json and the table's row). shots: extra positive and negative
    references per query (`percs.evaluate.shots`; the default adds none)."""

    split: str = "test"
    control: str | None = None
    control_seed: int = 0
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    worst: int = 8
    progress: bool = True
    every: int = 1
    shots: ShotsConfig = field(default_factory=ShotsConfig)

    def __post_init__(self) -> None:
        if self.control is not None and self.shots.active:
            raise EvalError("a control replaces the fixed reference: it cannot be combined with extra references "
                            "(--shots / --negatives)")
        if self.control is not None and self.control not in CONTROLS:
            raise EvalError(f"control {self.control!r} is not one of {CONTROLS}")
        if self.worst < 0:
            raise EvalError(f"worst must be >= 0, got {self.worst}")
        if self.every < 1:
            raise EvalError(f"every must be >= 1, got {self.every}")


@dataclass(frozen=True)
class QueryRecord:
    """One query as it ran: the fixed query, the reference the method was given, where its prediction is
    (relative to OUT), the numbers of true and predicted cells and the counts at each of THRESHOLDS; extra:
    the references added by --shots / --negatives (None without)."""

    query: Query
    reference: Reference
    prediction: str
    n_true: int
    n_pred: int
    counts: QueryCounts
    extra: Extra | None = None


class ImageCache:
    """(image, labels) of dataset images by name, the `size` most recently used kept in memory."""

    def __init__(self, dataset: Dataset, size: int = 32):
        self.dataset, self.size = dataset, size
        self._items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __call__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name in self._items:
            self._items.move_to_end(name)
        else:
            record = self.dataset.record(name)
            self._items[name] = (self.dataset.read_image(record), self.dataset.read_labels(record))
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return self._items[name]

    def labels(self, name: str) -> np.ndarray:
        return self(name)[1]


def split_queries(dataset: Dataset, split: str) -> list[Query]:
    """The fixed queries of `split`, in stored order; EvalError when there are none."""
    queries = [q for q in dataset.queries if dataset.record(q.image).split == split]
    if not queries:
        with_queries = sorted({dataset.record(q.image).split for q in dataset.queries})
        raise EvalError(f"split {split!r} of dataset {dataset.name!r} has no queries "
                        f"(splits with queries: {', '.join(with_queries) or 'none'})")
    return queries


def prepare_out(out: Path) -> None:
    """Creates OUT/predictions; EvalError when OUT exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvalError(f"output folder {out} exists and is not empty")
    (out / "predictions").mkdir(parents=True)


def plan_references(dataset: Dataset, queries: list[Query], config: EvalConfig, images: ImageCache
                    ) -> list[tuple[Query, Reference]]:
    """(query, reference to give the method) pairs: the fixed references, or the control's replacements
    (queries without one are left out)."""
    fixed = [Reference(q.reference_image, q.reference_label) for q in queries]
    if config.control is None:
        return list(zip(queries, fixed))
    chosen = wrong_references(dataset, queries, config.control_seed, images.labels)
    return [(q, r) for q, r in zip(queries, chosen) if r is not None]


def run_queries(method: Method, dataset: Dataset, planned: list[tuple[Query, Reference]], out: Path,
                images: ImageCache, progress: bool = True, extras: list[Extra] | None = None,
                shots: ShotsConfig = ShotsConfig()) -> list[QueryRecord]:
    """Runs `method` on every planned query, writes OUT/predictions/NNNN.tif and scores each query. extras:
    per planned query, references to add (`method.segment_references`); None: the fixed reference alone.
    shots: with negatives from false positives, the negatives are drawn from a first pass's output."""
    from tqdm import tqdm

    if extras is not None and not hasattr(method, "segment_references"):
        raise EvalError(f"method {method.name!r} takes one reference: --shots / --negatives need a method that "
                        "takes several (percs with an instance-level model, percs-instance)")
    records = []
    for index, (query, reference) in enumerate(tqdm(planned, desc=f"eval {method.name}", unit="query",
                                                    disable=None if progress else True)):
        image, labels = images(query.image)
        extra = None if extras is None else extras[index]
        if extra is None:
            reference_image, reference_labels = images(reference.image)
            output = method.segment(image, reference_image, reference_labels == reference.label)
        else:
            cells = lambda refs: [(images(r.image)[0], images(r.image)[1] == r.label) for r in refs]  # noqa: E731
            positives = cells((reference,) + extra.positives)
            if shots.negatives and shots.negatives_from == "false-positives":
                first = check_prediction(method.segment_references(image, positives, []), labels.shape, method.name)
                extra = Extra(extra.positives, false_positive_negatives(dataset, query, labels, first, shots, index))
            output = method.segment_references(image, positives, cells(extra.negatives))
        predicted = check_prediction(output, labels.shape, method.name)
        relative = f"predictions/{index:04d}.tif"
        write_tiff(out / relative, predicted)
        records.append(score_query(dataset, query, reference, relative, labels, predicted, extra))
    return records


def check_prediction(labels, shape: tuple[int, int], method_name: str) -> np.ndarray:
    """A method's output as (H, W) int32; EvalError naming the method when it is not a label image of `shape`."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape) or labels.dtype.kind not in "iu":
        raise EvalError(f"method {method_name!r} returned {labels.dtype} {labels.shape}, expected integer labels "
                        f"of the image's shape {tuple(shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise EvalError(f"method {method_name!r} returned labels outside 0..2^31-1")
    return labels.astype(np.int32, copy=False)


def true_labels_of(dataset: Dataset, query: Query, labels: np.ndarray) -> np.ndarray:
    """(H, W) the query image's labels of the target type (others set to 0)."""
    wanted = dataset.record(query.image).labels_of_type(query.target_type)
    return np.where(np.isin(labels, wanted), labels, 0)


def clicked_in_query(query: Query, extra: Extra | None) -> np.ndarray:
    """Label ids of the extra positives drawn in the query image itself (the cells a user clicked there)."""
    if extra is None:
        return np.zeros(0, np.int64)
    return np.array([r.label for r in extra.positives if r.image == query.image], np.int64)


def without_clicked(truth: np.ndarray, predicted: np.ndarray, labels: np.ndarray, clicked: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(truth, predicted) without the clicked true cells (ids of `labels`) and the predicted cells that match
    one of them at IoU > 0.5 (the benchmark's match): a clicked cell is neither a hit nor a miss."""
    if len(clicked) == 0:
        return truth, predicted
    matched = matched_predictions(np.where(np.isin(labels, clicked), labels, 0), predicted)
    return np.where(np.isin(truth, clicked), 0, truth), np.where(np.isin(predicted, matched), 0, predicted)


def matched_predictions(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Label ids of the predicted cells that match a true cell at IoU > 0.5 (the benchmark's match; each
    predicted cell matches at most one)."""
    overlaps = label_overlaps(truth.astype(np.int32), predicted.astype(np.int32))
    return overlaps.pred_labels[overlaps.pair_pred[overlaps.iou() > 0.5]]


def score_query(dataset: Dataset, query: Query, reference: Reference, prediction: str, labels: np.ndarray,
                predicted: np.ndarray, extra: Extra | None = None) -> QueryRecord:
    """The QueryRecord of one prediction against the query's true cells (the clicked ones left out)."""
    truth, predicted = without_clicked(true_labels_of(dataset, query, labels), predicted, labels,
                                       clicked_in_query(query, extra))
    stats = evaluate(truth, predicted, THRESHOLDS, iou_rule=IOU_RULE)
    counts = QueryCounts(query.image, query.target_type, query.origin, tuple(s.tp for s in stats),
                         tuple(s.fp for s in stats), tuple(s.fn for s in stats))
    return QueryRecord(query, reference, prediction, stats[0].n_true, stats[0].n_pred, counts, extra)


def run_eval(method: Method, dataset: Dataset, out: Path | str, config: EvalConfig = EvalConfig(),
             method_key: str = "") -> dict:
    """Evaluates `method` on the queries of `config.split`; writes OUT (see the module docstring) and returns
    the metrics.json object. method_key: the registry name it was built from (recorded)."""
    out = Path(out)
    every_query = split_queries(dataset, config.split)
    queries = every_query[:: config.every]
    prepare_out(out)
    images = ImageCache(dataset)
    planned = plan_references(dataset, queries, config, images)
    if not planned:
        raise EvalError(f"control {config.control!r}: no query of split {config.split!r} has a wrong reference")
    extras = None
    if config.shots.active:
        extras = extra_references(dataset, [q for q, _ in planned], config.shots, images.labels)
    start = time.perf_counter()
    records = run_queries(method, dataset, planned, out, images, config.progress, extras, config.shots)
    seconds = time.perf_counter() - start
    metrics = build_metrics(method, method_key, dataset, config, records, len(queries) - len(planned), seconds,
                            len(every_query))
    write_outputs(out, metrics, dataset, records, images, config.worst)
    return metrics
