"""Which half of a PerCS-DINO model limits it: the same-type decision or the flows.

For each fixed query of a split the model predicts flows and the same-type map as `percs eval` runs it; the
masks are then rebuilt from the same predicted flows with the *true* same-type mask as cellprob (+5 on the
target type's cells, -5 elsewhere). A large gap between AP@0.5 as predicted and AP@0.5 with the true type
says the type decision fails; a small AP with the true type says the flows do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from percs.flows import flows_to_masks
from percs.metrics import evaluate


@dataclass(frozen=True)
class TypeVsFlows:
    """Means over `queries` queries: AP@0.5 as predicted, AP@0.5 of the predicted flows with the true type, and
    the pixel IoU of the predicted same-type map (probability > 0.5) with the true target cells."""

    queries: int
    ap50_predicted: float
    ap50_true_type: float
    same_type_pixel_iou: float


def ap50(truth: np.ndarray, predicted: np.ndarray) -> float:
    """One image's AP at IoU > 0.5 (1 when both are empty, as `percs eval` scores it)."""
    stats = evaluate(truth, predicted, (0.5,), iou_rule="gt")[0]
    total = stats.tp + stats.fp + stats.fn
    return float(stats.tp / total) if total else 1.0


def type_vs_flows(segmenter, dataset, split: str = "val", every: int = 1) -> TypeVsFlows:
    """TypeVsFlows of `segmenter` (a percs.api.Segmenter of a reference-guided model) on every `every`-th fixed
    query of `split` of `dataset` (a percs.data.format.Dataset)."""
    from percs.evaluate.runner import split_queries, true_labels_of

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if segmenter.generic:
        raise ValueError("the segmenter's model is generic (no same-type decision to check)")
    predicted, true_type, pixel_iou = [], [], []
    for query in split_queries(dataset, split)[::every]:
        record, reference = dataset.record(query.image), dataset.record(query.reference_image)
        labels = dataset.read_labels(record)
        cell = segmenter.reference(dataset.read_image(reference), labels=dataset.read_labels(reference),
                                   label=query.reference_label)
        result = segmenter.segment(dataset.read_image(record), cell)
        truth = true_labels_of(dataset, query, labels)
        cellprob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
        predicted.append(ap50(truth, result.labels))
        true_type.append(ap50(truth, flows_to_masks(result.flows, cellprob)))
        same, target = result.probability > 0.5, truth > 0
        union = (same | target).sum()
        pixel_iou.append((same & target).sum() / union if union else 1.0)
    return TypeVsFlows(len(predicted), float(np.mean(predicted)), float(np.mean(true_type)),
                       float(np.mean(pixel_iou)))
