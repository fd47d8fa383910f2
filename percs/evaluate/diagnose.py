"""Which half of a PerCS-DINO model limits it: the same-type decision or the flows.

For each fixed query of a split the model predicts flows and the same-type map as `percs eval` runs it; the
masks are then rebuilt from the same predicted flows with the *true* same-type mask as cellprob (+5 on the
target type's cells, -5 elsewhere). A large gap between AP@0.5 as predicted and AP@0.5 with the true type
says the type decision fails; a small AP with the true type says the flows do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from percs.evaluate.runner import ImageCache, split_queries, true_labels_of
from percs.evaluate.summary import IOU_RULE
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


def _ap50(truth: np.ndarray, predicted: np.ndarray) -> float:
    """One query's AP at IoU 0.5, as `percs eval` scores it."""
    return evaluate(truth, predicted, 0.5, iou_rule=IOU_RULE)[0].pooled.ap


def type_vs_flows(segmenter, dataset, split: str = "val", every: int = 1) -> TypeVsFlows:
    """TypeVsFlows of `segmenter` (a percs.api.Segmenter of a reference-guided model) on every `every`-th fixed
    query of `split` of `dataset` (a percs.data.format.Dataset)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if segmenter.generic:
        raise ValueError("the segmenter's model is generic (no same-type decision to check)")
    images = ImageCache(dataset)  # a split's queries come image by image: each image read once
    predicted, true_type, pixel_iou = [], [], []
    for query in split_queries(dataset, split)[::every]:
        image, labels = images(query.image)
        reference_image, reference_labels = images(query.reference_image)
        cell = segmenter.reference(reference_image, labels=reference_labels, label=query.reference_label)
        result = segmenter.segment(image, cell)
        truth = true_labels_of(dataset, query, labels)
        cellprob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
        predicted.append(_ap50(truth, result.labels))
        true_type.append(_ap50(truth, flows_to_masks(result.flows, cellprob)))
        same, target = result.probability > 0.5, truth > 0
        union = (same | target).sum()
        pixel_iou.append((same & target).sum() / union if union else 1.0)
    return TypeVsFlows(len(predicted), float(np.mean(predicted)), float(np.mean(true_type)),
                       float(np.mean(pixel_iou)))
