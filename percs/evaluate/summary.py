"""Scores of an evaluation: per-query counts summarised with bootstrap intervals over images.

Headline figures are means over queries of each query's AP, precision and recall (every query weighs the
same, whatever its number of cells); pooled figures are the ratios of the TP, FP and FN summed over the
queries (StarDist's `matching_dataset`). Both come with a percentile bootstrap interval in which IMAGES are
resampled with replacement, all queries of a drawn image together (the queries of one image share its pixels
and are not independent). The resampling weights are drawn from `seed` once per group, so a group's
intervals do not depend on which other groups were summarised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from percs.metrics import scores

FIGURES = ("ap", "precision", "recall")
THRESHOLDS = (0.3, 0.5)  # the paper's IoU thresholds
IOU_RULE = "gt"  # the paper: a match counts when its IoU exceeds the threshold


@dataclass(frozen=True)
class QueryCounts:
    """One query's matching at each threshold: tp, fp, fn (T,) int (T thresholds, in `Summary` order)."""

    image: str
    target_type: str
    origin: str
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]

    def scores(self, k: int) -> dict[str, float]:
        """AP, precision and recall at threshold index k (percs.metrics' empty-image rule)."""
        ratios = scores(self.tp[k], self.fp[k], self.fn[k], 0.0)
        return {name: float(ratios[name]) for name in FIGURES}


@dataclass(frozen=True)
class BootstrapConfig:
    """resamples: bootstrap draws of the images; level: the interval's coverage; seed: the draws' seed."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"--bootstrap resamples must be >= 1, got {self.resamples}")
        if not 0 < self.level < 1:
            raise ValueError(f"bootstrap level must be in (0, 1), got {self.level}")


@dataclass(frozen=True)
class Estimate:
    """A figure and its bootstrap interval [low, high]."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ThresholdSummary:
    """Figures at one IoU threshold: query means and pooled ratios (each an Estimate), and the summed counts."""

    threshold: float
    mean: dict[str, Estimate]
    pooled: dict[str, Estimate]
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class GroupSummary:
    """The queries of one group (all, one cell type, one origin) on `n_images` images."""

    n_queries: int
    n_images: int
    thresholds: tuple[ThresholdSummary, ...]


def resample_weights(n_images: int, config: BootstrapConfig) -> np.ndarray:
    """(resamples, n_images) int64: how often each image is drawn in each resample (n_images draws each)."""
    rng = np.random.default_rng(config.seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=config.resamples)


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (R,)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def image_index_of(images: list[str]) -> tuple[np.ndarray, int]:
    """(each query's index among the sorted distinct images (Q,), the number of images) of the queries' images."""
    names = {name: i for i, name in enumerate(sorted(set(images)))}
    return np.array([names[name] for name in images]), len(names)


def bootstrap_mean(values: np.ndarray, image_index: np.ndarray, weights: np.ndarray, level: float) -> Estimate:
    """The mean of per-query values (Q,) and its interval over image resamples: weights (R, n_images) from
    `resample_weights`, image_index (Q,) each query's image; a resample's mean is over the queries of the images
    it draws, each as often as its image is drawn."""
    n_images = weights.shape[1]
    per_image = np.bincount(image_index, weights=values, minlength=n_images)
    per_image_queries = np.bincount(image_index, minlength=n_images)
    resampled = (weights @ per_image) / (weights @ per_image_queries)
    return Estimate(float(values.mean()), *interval(resampled, level))


def summarize(results: list[QueryCounts], thresholds: tuple[float, ...], config: BootstrapConfig) -> GroupSummary:
    """Query means, pooled ratios and image-bootstrap intervals of `results` (at least one query)."""
    if not results:
        raise ValueError("no queries to summarise")
    image_index, n_images = image_index_of([r.image for r in results])
    weights = resample_weights(n_images, config)
    summaries = []
    for k, threshold in enumerate(thresholds):
        mean = {}
        for name in FIGURES:
            values = np.array([r.scores(k)[name] for r in results])
            mean[name] = bootstrap_mean(values, image_index, weights, config.level)
        summaries.append(_threshold_summary(results, k, threshold, image_index, weights, mean, config.level))
    return GroupSummary(len(results), n_images, tuple(summaries))


def _threshold_summary(results, k, threshold, image_index, weights, mean, level) -> ThresholdSummary:
    n_images = weights.shape[1]
    counts = {}
    for name in ("tp", "fp", "fn"):
        values = np.array([getattr(r, name)[k] for r in results], np.float64)
        counts[name] = np.bincount(image_index, weights=values, minlength=n_images)
    point = scores(*(counts[n].sum() for n in ("tp", "fp", "fn")), 0.0)
    resampled = scores(*(weights @ counts[n] for n in ("tp", "fp", "fn")), 0.0)
    pooled = {name: Estimate(float(point[name]), *interval(resampled[name], level)) for name in FIGURES}
    return ThresholdSummary(threshold, mean, pooled, *(int(counts[n].sum()) for n in ("tp", "fp", "fn")))


def group_by(results: list[QueryCounts], key: str) -> dict[str, list[QueryCounts]]:
    """The results split by one QueryCounts field ("target_type" or "origin"), keys sorted."""
    groups: dict[str, list[QueryCounts]] = {}
    for r in results:
        groups.setdefault(getattr(r, key), []).append(r)
    return dict(sorted(groups.items()))


def summary_json(summary: GroupSummary) -> dict:
    """The JSON object of a group: n_queries, n_images and, per threshold ("0.3"), mean and pooled figures
    as {"value", "ci": [low, high]} with the pooled tp / fp / fn."""
    iou = {}
    for t in summary.thresholds:
        pooled = {name: _estimate_json(e) for name, e in t.pooled.items()}
        pooled.update(tp=t.tp, fp=t.fp, fn=t.fn)
        iou[f"{t.threshold:g}"] = {"mean": {name: _estimate_json(e) for name, e in t.mean.items()},
                                   "pooled": pooled}
    return {"n_queries": summary.n_queries, "n_images": summary.n_images, "iou": iou}


def _estimate_json(estimate: Estimate) -> dict:
    return {"value": estimate.value, "ci": [estimate.low, estimate.high]}
