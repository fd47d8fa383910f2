"""NumPy/SciPy references for percs.metrics: dense overlap matrices and linear_sum_assignment on the StarDist cost."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

ARRAY_NAMES = ("true_labels", "true_areas", "true_offsets", "pred_labels", "pred_areas", "pred_offsets",
               "pair_true", "pair_pred", "pair_intersection", "pair_offsets")


def overlap_matrix(true: np.ndarray, pred: np.ndarray):
    """Dense (n_true + 1, n_pred + 1) int64 pixel counts of one image pair, row / column 0 for background
    (present or not), with the sorted true and pred label values of the rows and columns."""
    true_values, true_index = np.unique(np.concatenate([[0], true.ravel()]), return_inverse=True)
    pred_values, pred_index = np.unique(np.concatenate([[0], pred.ravel()]), return_inverse=True)
    counts = np.zeros((len(true_values), len(pred_values)), np.int64)
    np.add.at(counts, (true_index[1:], pred_index[1:]), 1)
    return counts, true_values, pred_values


def label_overlaps(true_images: list[np.ndarray], pred_images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The percs.metrics.Overlaps arrays of equal-length lists of (H_b, W_b) label images."""
    parts = {name: [] for name in ARRAY_NAMES}
    n_true = n_pred = n_pairs = 0
    for name in ("true_offsets", "pred_offsets", "pair_offsets"):
        parts[name].append([0])
    for true, pred in zip(true_images, pred_images):
        counts, true_values, pred_values = overlap_matrix(np.asarray(true), np.asarray(pred))
        rows, cols = np.nonzero(counts[1:, 1:])  # row-major: sorted by (true label, pred label)
        parts["true_labels"].append(true_values[1:])
        parts["true_areas"].append(counts[1:].sum(axis=1))
        parts["pred_labels"].append(pred_values[1:])
        parts["pred_areas"].append(counts[:, 1:].sum(axis=0))
        parts["pair_true"].append(rows + n_true)
        parts["pair_pred"].append(cols + n_pred)
        parts["pair_intersection"].append(counts[1:, 1:][rows, cols])
        n_true, n_pred, n_pairs = n_true + len(true_values) - 1, n_pred + len(pred_values) - 1, n_pairs + len(rows)
        parts["true_offsets"].append([n_true])
        parts["pred_offsets"].append([n_pred])
        parts["pair_offsets"].append([n_pairs])
    return {name: np.concatenate(parts[name]).astype(np.int64) for name in ARRAY_NAMES}


def iou_matrices(overlaps: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Dense (n_true, n_pred) float64 IoU matrix of every image of the Overlaps arrays (0 where disjoint)."""
    o = overlaps
    matrices = []
    for b in range(len(o["true_offsets"]) - 1):
        t0, t1, p0, p1 = o["true_offsets"][b], o["true_offsets"][b + 1], o["pred_offsets"][b], o["pred_offsets"][b + 1]
        iou = np.zeros((t1 - t0, p1 - p0))
        for q in range(o["pair_offsets"][b], o["pair_offsets"][b + 1]):
            t, p, inter = o["pair_true"][q], o["pair_pred"][q], o["pair_intersection"][q]
            iou[t - t0, p - p0] = inter / (o["true_areas"][t] + o["pred_areas"][p] - inter)
        matrices.append(iou)
    return matrices


def match_image(iou: np.ndarray, threshold: float, iou_rule: str) -> tuple[int, float]:
    """TP of linear_sum_assignment on the StarDist cost, and the largest summed IoU of the passing pairs of a
    matching with that many passing pairs (a second assignment that ignores pairs below the threshold)."""
    n_min = min(iou.shape)
    if n_min == 0:
        return 0, 0.0
    passes = iou > threshold if iou_rule == "gt" else iou >= threshold
    rows, cols = linear_sum_assignment(-passes.astype(float) - iou / (2 * n_min))
    tp = int(passes[rows, cols].sum())
    rows, cols = linear_sum_assignment(np.where(passes, 1.0 + iou / (2 * n_min), 0.0), maximize=True)
    ok = passes[rows, cols]
    assert ok.sum() == tp, "both assignments must find a maximum matching of the passing pairs"
    return tp, float(iou[rows, cols][ok].sum())


def match_overlaps(overlaps: dict[str, np.ndarray], thresholds, iou_rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) int64 TP and (B, T) float64 summed matched IoU of every image and threshold."""
    matrices = iou_matrices(overlaps)
    tp = np.zeros((len(matrices), len(thresholds)), np.int64)
    matched_iou = np.zeros((len(matrices), len(thresholds)))
    for b, iou in enumerate(matrices):
        for k, threshold in enumerate(thresholds):
            tp[b, k], matched_iou[b, k] = match_image(iou, threshold, iou_rule)
    return tp, matched_iou


def ratio(numerator: float, denominator: float, empty: bool) -> float:
    """numerator / denominator; 1 for an empty image (no true, no predicted instances), else 0, when it is 0."""
    if denominator > 0:
        return numerator / denominator
    return 1.0 if empty else 0.0


def scores(tp: int, fp: int, fn: int, matched_iou: float) -> dict[str, float]:
    empty = tp + fp + fn == 0
    return {
        "ap": ratio(tp, tp + fp + fn, empty),
        "precision": ratio(tp, tp + fp, empty),
        "recall": ratio(tp, tp + fn, empty),
        "f1": ratio(2 * tp, 2 * tp + fp + fn, empty),
        "mean_matched_iou": ratio(matched_iou, tp, empty),
        "panoptic_quality": ratio(matched_iou, tp + fp / 2 + fn / 2, empty),
    }


def evaluate(true_images, pred_images, thresholds, iou_rule: str) -> list[dict]:
    """Per threshold: summed counts, pooled scores (ratios of the sums) and image_mean scores (mean of ratios)."""
    overlaps = label_overlaps(true_images, pred_images)
    tp, matched_iou = match_overlaps(overlaps, thresholds, iou_rule)
    n_true = np.diff(overlaps["true_offsets"])
    n_pred = np.diff(overlaps["pred_offsets"])
    results = []
    for k, threshold in enumerate(thresholds):
        per_image = [scores(tp[b, k], n_pred[b] - tp[b, k], n_true[b] - tp[b, k], matched_iou[b, k])
                     for b in range(len(n_true))]
        sums = {"tp": int(tp[:, k].sum()), "fp": int((n_pred - tp[:, k]).sum()), "fn": int((n_true - tp[:, k]).sum())}
        results.append({
            "threshold": threshold,
            **sums,
            "matched_iou_sum": float(matched_iou[:, k].sum()),
            "pooled": scores(sums["tp"], sums["fp"], sums["fn"], float(matched_iou[:, k].sum())),
            "image_mean": {name: float(np.mean([s[name] for s in per_image])) for name in per_image[0]},
        })
    return results
