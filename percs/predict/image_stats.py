"""The normalisation ranges of an image larger than memory, gathered region by region.

`percs.data.normalize` scales each channel between its 1st and 99th percentiles over the whole image. For images
of at most 16-bit integers the percentiles are computed exactly, as NumPy computes them, from histograms summed
over regions (`region_counts`, `ranges_from_statistics`), so that a block is normalised as the whole image would
be. Other dtypes (floats, 32-bit integers) take the percentiles of every k-th row and column (at most
SAMPLE_PIXELS pixels), and the exact minimum and maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_PIXELS = 1 << 24


@dataclass
class ChannelStatistics:
    """One source channel over some regions: counts (2**bits,) of each value minus `offset` (exact dtypes), or
    sample (n,) float32 values (other dtypes); minimum and maximum as float."""

    counts: np.ndarray | None
    offset: int
    sample: np.ndarray | None
    minimum: float
    maximum: float

    def merged(self, other: "ChannelStatistics") -> "ChannelStatistics":
        counts = None if self.counts is None else self.counts + other.counts
        sample = None if self.sample is None else np.concatenate((self.sample, other.sample))
        return ChannelStatistics(counts, self.offset, sample, min(self.minimum, other.minimum),
                                 max(self.maximum, other.maximum))


def exact_dtype(dtype: np.dtype) -> bool:
    """Whether percentiles of this dtype are computed exactly from histograms (bool, 8- and 16-bit integers)."""
    return dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2)


def sample_step(shape: tuple[int, int]) -> int:
    """k: every k-th row and column of an (H, W) image of a non-exact dtype is sampled (k = 1: all pixels)."""
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / SAMPLE_PIXELS)))


def region_counts(pixels: np.ndarray, origin: tuple[int, int], image_shape: tuple[int, int],
                  channels: list[int]) -> dict[int, ChannelStatistics]:
    """Statistics of the source channels `channels` of pixels (h, w) or (h, w, C), the region of the image at
    `origin` (y, x); samples are taken on the image's grid of every k-th row and column (`sample_step`)."""
    stack = pixels[..., None] if pixels.ndim == 2 else pixels
    out = {}
    for c in channels:
        values = stack[..., c]
        if exact_dtype(values.dtype):
            info = np.iinfo(np.uint8 if values.dtype.kind == "b" else values.dtype)
            offset = int(info.min)
            shifted = values.astype(np.int64).ravel() - offset
            counts = np.bincount(shifted, minlength=int(info.max) - offset + 1)
            out[c] = ChannelStatistics(counts, offset, None, float(values.min()), float(values.max()))
        else:
            k = sample_step(image_shape)
            sample = values[(-origin[0]) % k :: k, (-origin[1]) % k :: k].astype(np.float32).ravel()
            floats = values.astype(np.float32, copy=False)
            out[c] = ChannelStatistics(None, 0, sample, float(floats.min()), float(floats.max()))
    return out


def merge_statistics(parts: list[dict[int, ChannelStatistics]]) -> dict[int, ChannelStatistics]:
    """The statistics of the union of the regions of parts (each from `region_counts`)."""
    merged = dict(parts[0])
    for part in parts[1:]:
        merged = {c: merged[c].merged(part[c]) for c in merged}
    return merged


def percentiles_from_counts(counts: np.ndarray, offset: int, percentiles: tuple[float, float]) -> np.ndarray:
    """np.percentile(values.astype(np.float32), percentiles) of the values whose histogram is counts (value
    offset + i counted counts[i] times), computed as NumPy's default (linear) method computes it."""
    n = int(counts.sum())
    cumulative = np.cumsum(counts)
    quantiles = np.true_divide(np.asarray(percentiles, np.float64), 100)
    out = []
    for virtual in (n - 1) * quantiles:
        before = min(max(math.floor(virtual), 0), n - 1)
        after = min(before + 1, n - 1)
        a, b = (np.float32(offset + int(np.searchsorted(cumulative, k, side="right"))) for k in (before, after))
        gamma = float(virtual - math.floor(virtual)) if 0 <= virtual < n - 1 else 0.0
        difference = np.float32(b - a)
        if gamma >= 0.5:
            out.append(np.float64(b) - np.float64(difference) * (1 - gamma))
        else:
            out.append(np.float64(a) + np.float64(difference) * gamma)
    return np.asarray(out, np.float64)


def ranges_from_statistics(statistics: dict[int, ChannelStatistics], lower: float = 1.0,
                           upper: float = 99.0) -> dict[int, tuple[float, float]]:
    """{source channel: (lo, hi)} as `percs.data.normalize.channel_range` gives them for the whole image."""
    ranges = {}
    for c, stats in statistics.items():
        if stats.counts is not None:
            lo, hi = percentiles_from_counts(stats.counts, stats.offset, (lower, upper))
        else:
            lo, hi = np.percentile(stats.sample, (lower, upper))
        if hi <= lo:
            lo, hi = stats.minimum, stats.maximum
        ranges[c] = (lo, hi)
    return ranges
