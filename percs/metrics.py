"""Instance segmentation metrics: sparse label overlaps, one-to-one matching, AP / precision / recall / PQ.

Protocol (the paper's, and StarDist's / Cellpose's): true and predicted instances are matched one to one; a
matched pair whose IoU passes the threshold is a true positive (TP), unmatched predictions are false positives
(FP), unmatched true instances false negatives (FN). AP = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN), mean matched IoU = (sum of matched IoU) / TP and
panoptic quality = (sum of matched IoU) / (TP + FP / 2 + FN / 2).

- ``iou_rule``: ``"gt"`` counts IoU > t (the paper: "exceeds", the default); ``"ge"`` counts IoU >= t (Cellpose,
  StarDist). IoU is float64 intersection / union compared with the float64 threshold, so an IoU of exactly 1/2
  passes t = 0.5 under "ge" only.
- Matching: the assignment maximising the number of passing pairs; TP, FP and FN are identical to
  ``scipy.optimize.linear_sum_assignment`` on the StarDist/Cellpose cost. Among the maximum matchings the one
  with the largest total IoU of its matched pairs is reported, so the mean matched IoU is well defined; StarDist
  breaks that tie by the IoU of all assigned pairs (below-threshold ones too) and its mean IoU can differ
  slightly. See csrc/match_overlaps/match_overlaps.h for the method and why it is exact.
- Empty images: a ratio whose denominator is 0 is 1 when there are neither true nor predicted instances (nothing
  to find, nothing found) and 0 otherwise (e.g. precision with true cells but no predictions). The same rule
  applies to the pooled figures. StarDist reports 0 in both cases; Cellpose NaN for the AP of an empty pair.
- ``pooled`` figures are ratios of the counts summed over all images (StarDist's ``matching_dataset``);
  ``image_mean`` figures average each image's ratios.

Label images are integer, 0 background, any non-negative labels (gaps and huge values are fine, nothing is
renumbered). NumPy arrays and CPU tensors are counted by the C++ kernels; CUDA tensors on the GPU, from which only
the sparse list of overlapping pairs comes back to the host for the matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from percs import _backend
from percs._arrays import dtype_kind, is_cuda, is_tensor

IOU_RULES = ("gt", "ge")


@dataclass(frozen=True)
class Overlaps:
    """Sparse overlaps of B (true, pred) label image pairs.

    Instance arrays are concatenated image by image; image b owns [offsets[b], offsets[b + 1]).
    true_labels (NT,) int64: distinct non-zero labels, ascending within an image; true_areas (NT,) int64 pixels;
    true_offsets (B + 1,) int64; pred_* likewise. pair_true / pair_pred (P,) int64: indices into the true / pred
    arrays of every pair sharing a pixel, sorted by (true label, pred label) within an image;
    pair_intersection (P,) int64 shared pixels; pair_offsets (B + 1,) int64.
    """

    true_labels: np.ndarray
    true_areas: np.ndarray
    true_offsets: np.ndarray
    pred_labels: np.ndarray
    pred_areas: np.ndarray
    pred_offsets: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_intersection: np.ndarray
    pair_offsets: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.true_offsets) - 1

    def iou(self) -> np.ndarray:
        """(P,) float64 IoU of every overlapping pair."""
        union = self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.pair_intersection
        return self.pair_intersection / union

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Matches:
    """Matchings of B images at T thresholds: matched (P, T) bool flags per overlapping pair, tp (B, T) int64
    matched pairs per image, matched_iou (B, T) float64 their summed IoU."""

    thresholds: tuple[float, ...]
    iou_rule: str
    matched: np.ndarray
    tp: np.ndarray
    matched_iou: np.ndarray


@dataclass(frozen=True)
class Scores:
    """Ratios of one image or data set (see the module docstring for the empty-image rule)."""

    ap: float
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    panoptic_quality: float


@dataclass(frozen=True)
class MatchStats:
    """Metrics of B images at one IoU threshold.

    tp, fp, fn, n_true, n_pred, matched_iou_sum: sums over the images. pooled: ratios of those sums.
    image_mean: mean over the images of each image's ratios. image_tp / image_fp / image_fn (B,) int64 and
    image_matched_iou (B,) float64: the per-image counts.
    """

    threshold: float
    iou_rule: str
    n_images: int
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    matched_iou_sum: float
    pooled: Scores
    image_mean: Scores
    image_tp: np.ndarray
    image_fp: np.ndarray
    image_fn: np.ndarray
    image_matched_iou: np.ndarray


def label_overlaps(true_labels: Any, pred_labels: Any) -> Overlaps:
    """Sparse intersections of (true, pred) label images and the area of every instance.

    true_labels, pred_labels: one (H, W) integer label image each, a (B, H, W) batch, or equal-length sequences of
    (H_b, W_b) images; NumPy arrays or torch tensors (all CPU or all on one CUDA device).
    """
    true_images = _as_images(true_labels, "true_labels")
    pred_images = _as_images(pred_labels, "pred_labels")
    _check_pairs(true_images, pred_images)
    if is_cuda(true_images[0]):
        from percs import _metrics_cuda

        return Overlaps(**_metrics_cuda.label_overlaps(true_images, pred_images))
    true_list, pred_list = [], []
    for b, (t, p) in enumerate(zip(true_images, pred_images)):
        t, p = _native_pair(t, p, b)
        true_list.append(t)
        pred_list.append(p)
    return Overlaps(**_backend.cpu.label_overlaps(true_list, pred_list))


def match_overlaps(overlaps: Overlaps, thresholds: Any = (0.3, 0.5), *, iou_rule: str = "gt") -> Matches:
    """Maximum one-to-one matching of every image of `overlaps` at every IoU threshold (see the module docstring).

    thresholds: a float or a sequence of T floats, in [0, 1) for "gt" and (0, 1] for "ge".
    """
    values = _check_thresholds(thresholds, iou_rule)
    matched, tp, matched_iou = _backend.cpu.match_overlaps(
        overlaps.as_dict(), np.asarray(values, np.float64), iou_rule == "gt"
    )
    return Matches(values, iou_rule, matched.astype(bool), tp, matched_iou)


def evaluate(
    true_labels: Any, pred_labels: Any, thresholds: Any = (0.3, 0.5), *, iou_rule: str = "gt"
) -> tuple[MatchStats, ...]:
    """Matches predicted instances to true ones and scores them, one MatchStats per threshold (in order).

    true_labels, pred_labels: one (H, W) integer label image each, a (B, H, W) batch, or equal-length sequences of
    (H_b, W_b) images (NumPy arrays or torch tensors; CUDA tensors are counted on the GPU).
    thresholds: a float or a sequence of IoU thresholds; iou_rule: "gt" (IoU > t, the paper) or "ge" (IoU >= t,
    Cellpose and StarDist).
    """
    values = _check_thresholds(thresholds, iou_rule)
    overlaps = label_overlaps(true_labels, pred_labels)
    matches = match_overlaps(overlaps, values, iou_rule=iou_rule)
    n_true = np.diff(overlaps.true_offsets)
    n_pred = np.diff(overlaps.pred_offsets)
    return tuple(_match_stats(matches, k, n_true, n_pred) for k in range(len(values)))


def scores(tp: Any, fp: Any, fn: Any, matched_iou: Any) -> dict[str, np.ndarray]:
    """The Scores ratios (as float64 arrays of the inputs' shape) from counts and summed matched IoU."""
    tp, fp, fn, matched_iou = (np.asarray(x, np.float64) for x in (tp, fp, fn, matched_iou))
    empty = (tp + fp + fn) == 0
    return {
        "ap": _ratio(tp, tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "mean_matched_iou": _ratio(matched_iou, tp, empty),
        "panoptic_quality": _ratio(matched_iou, tp + 0.5 * fp + 0.5 * fn, empty),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: np.ndarray) -> np.ndarray:
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.where(empty, 1.0, 0.0))


def _match_stats(matches: Matches, k: int, n_true: np.ndarray, n_pred: np.ndarray) -> MatchStats:
    tp = matches.tp[:, k]
    fp, fn = n_pred - tp, n_true - tp
    iou = matches.matched_iou[:, k]
    pooled = scores(tp.sum(), fp.sum(), fn.sum(), iou.sum())
    per_image = scores(tp, fp, fn, iou)
    return MatchStats(
        threshold=matches.thresholds[k],
        iou_rule=matches.iou_rule,
        n_images=len(tp),
        tp=int(tp.sum()),
        fp=int(fp.sum()),
        fn=int(fn.sum()),
        n_true=int(n_true.sum()),
        n_pred=int(n_pred.sum()),
        matched_iou_sum=float(iou.sum()),
        pooled=Scores(**{name: float(v) for name, v in pooled.items()}),
        image_mean=Scores(**{name: float(v.mean()) for name, v in per_image.items()}),
        image_tp=tp,
        image_fp=fp,
        image_fn=fn,
        image_matched_iou=iou,
    )


def _check_thresholds(thresholds: Any, iou_rule: str) -> tuple[float, ...]:
    if iou_rule not in IOU_RULES:
        raise ValueError(f"iou_rule must be 'gt' (IoU > t) or 'ge' (IoU >= t), got {iou_rule!r}")
    values = (thresholds,) if np.isscalar(thresholds) else tuple(thresholds)
    if not values:
        raise ValueError("thresholds is empty")
    for t in values:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(f"thresholds must be numbers, got {t!r}")
        low_ok = t >= 0 if iou_rule == "gt" else t > 0
        high_ok = t < 1 if iou_rule == "gt" else t <= 1
        if math.isnan(t) or not (low_ok and high_ok):
            interval = "[0, 1)" if iou_rule == "gt" else "(0, 1]"
            raise ValueError(f"thresholds must be in {interval} for iou_rule={iou_rule!r}, got {t!r}")
    return tuple(float(t) for t in values)


def _as_images(labels: Any, name: str) -> list[Any]:
    """A list of (H, W) label images from one image, a (B, H, W) batch or a sequence of images."""
    if isinstance(labels, np.ndarray) or is_tensor(labels):
        if labels.ndim not in (2, 3):
            raise ValueError(f"{name} has {labels.ndim} dims, expected 2 (one image) or 3 (a batch)")
        images = [labels] if labels.ndim == 2 else list(labels)
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        images = list(labels)
    else:
        raise TypeError(f"{name} must be a label image, a batch or a sequence of them, got {type(labels).__name__}")
    if not images:
        raise ValueError(f"{name} has no images")
    for b, image in enumerate(images):
        _check_image(image, f"{name}[{b}]")
    return images


def _check_image(image: Any, name: str) -> None:
    if not (isinstance(image, np.ndarray) or is_tensor(image)):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(image).__name__}")
    if image.ndim != 2:
        raise ValueError(f"{name} has {image.ndim} dims, expected 2")
    if dtype_kind(image) not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {image.dtype}")


def _check_pairs(true_images: list[Any], pred_images: list[Any]) -> None:
    if len(true_images) != len(pred_images):
        raise ValueError(f"pred_labels has {len(pred_images)} images, true_labels has {len(true_images)}")
    device = true_images[0].device if is_cuda(true_images[0]) else None
    for b, (t, p) in enumerate(zip(true_images, pred_images)):
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"pred_labels[{b}] has shape {tuple(p.shape)}, true_labels[{b}] has {tuple(t.shape)}")
        for name, image in (("true_labels", t), ("pred_labels", p)):
            if (image.device if is_cuda(image) else None) != device:
                raise ValueError(f"{name}[{b}] is on another device than true_labels[0]; put all images on one device")


# The dtypes the CPU kernel reads directly, widest last; any other integer dtype maps to the narrowest that holds it.
_NATIVE = [np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64)]
_WIDER = {"i1": np.int32, "i2": np.int32, "u4": np.int64, "u8": np.int64}


def _native_pair(true: Any, pred: Any, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images of pair b as C-contiguous arrays of one dtype the kernel reads."""
    true = _native(np.asarray(true.detach().cpu() if is_tensor(true) else true), f"true_labels[{b}]")
    pred = _native(np.asarray(pred.detach().cpu() if is_tensor(pred) else pred), f"pred_labels[{b}]")
    if true.dtype != pred.dtype:
        common = max(true.dtype, pred.dtype, key=_NATIVE.index)
        true, pred = true.astype(common), pred.astype(common)
    return np.ascontiguousarray(true), np.ascontiguousarray(pred)


def _native(image: np.ndarray, name: str) -> np.ndarray:
    image = image.astype(image.dtype.newbyteorder("="), copy=False)
    if image.dtype in _NATIVE:
        return image
    if image.dtype == np.uint64 and image.size and image.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has labels beyond the int64 range")
    return image.astype(_WIDER[image.dtype.str[1:]])
