"""The one image normalisation of percs, used alike by the Dataset, the trainer and the predictor.

1. Each source channel is scaled so that its `lower` and `upper` percentiles (1st and 99th) map to 0 and 1,
   with no clipping (as Cellpose). Where those percentiles coincide (a sparse image, fewer than 1% bright
   pixels) the channel's min and max are used instead; a constant channel becomes 0.
2. The channels become the backbone's three (R, G, B):
   - (H, W) or 1 channel: repeated into all three;
   - 2 channels: (c0, c1, 0), as two-colour fluorescence is shown and as the Cellpose data store it (for
     example Kc167 in ../shared/data/cellpose_styles: nucleus red, cytoplasm green, blue empty);
   - 3 channels: as they are (RGB);
   - more than 3: the first three; choose others with `channels` (in the importers' files, channels keep
     their source order, so the first three are the first three of the source).
   `channels` (1 to 3 source indices) overrides the rule: one index is repeated, two give (a, b, 0).
3. Each output channel is standardised with the ImageNet mean and std that DINOv2 was trained with.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BACKBONE_MEAN = (0.485, 0.456, 0.406)
BACKBONE_STD = (0.229, 0.224, 0.225)


def default_channels(n_channels: int) -> tuple[int | None, ...]:
    """Source channel of each of the three output channels (None: zeros) for an image of n_channels."""
    if n_channels == 1:
        return (0, 0, 0)
    if n_channels == 2:
        return (0, 1, None)
    return (0, 1, 2)


def _mapping(n_channels: int, channels: Sequence[int] | None) -> tuple[int | None, ...]:
    if channels is None:
        return default_channels(n_channels)
    picked = tuple(int(c) for c in channels)
    if not 1 <= len(picked) <= 3:
        raise ValueError(f"channels has {len(picked)} entries, expected 1 to 3 source channel indices")
    if any(not 0 <= c < n_channels for c in picked):
        raise ValueError(f"channels {picked} are not all in 0..{n_channels - 1} (the image has {n_channels})")
    return {1: picked * 3, 2: picked + (None,), 3: picked}[len(picked)]


def channel_range(channel: np.ndarray, lower: float, upper: float) -> tuple[float, float]:
    """(lo, hi) that `scale_channel` maps to 0 and 1: the lower / upper percentiles of the channel's float32
    values, or its min / max if those coincide (lo == hi for a constant channel)."""
    values = channel.astype(np.float32, copy=False)
    lo, hi = np.percentile(values, (lower, upper))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return lo, hi


def scale_to_range(channel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) float32 with lo at 0 and hi at 1 (all 0 when hi <= lo)."""
    values = channel.astype(np.float32, copy=False)
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return ((values - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)


def scale_channel(channel: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """(H, W) float32 with the lower / upper percentiles at 0 / 1 (min / max if those coincide; 0 if constant)."""
    return scale_to_range(channel, *channel_range(channel, lower, upper))


def used_channels(n_channels: int, channels: Sequence[int] | None = None) -> list[int]:
    """The source channels that the three output channels take, each once, in order of first use."""
    return [c for c in dict.fromkeys(_mapping(n_channels, channels)) if c is not None]


def normalize_image(image: np.ndarray, lower: float = 1.0, upper: float = 99.0,
                    channels: Sequence[int] | None = None) -> np.ndarray:
    """Backbone input from any image: see the module docstring for the rule.

    image: (H, W) or (H, W, C) NumPy array, channels last, any real or bool dtype, finite.
    lower, upper: percentiles in [0, 100], lower < upper. channels: optional source channels for R, G, B.
    Returns (3, H, W) float32.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image has {image.ndim} dims, expected 2 (H, W) or 3 (H, W, C)")
    if image.shape[0] == 0 or image.shape[1] == 0 or (image.ndim == 3 and image.shape[2] == 0):
        raise ValueError(f"image has shape {image.shape}, expected non-zero height, width and channels")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"image has dtype {image.dtype}, expected a real or bool dtype")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image has NaN or infinite values")
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"lower={lower}, upper={upper}: expected 0 <= lower < upper <= 100")
    stack = image[..., None] if image.ndim == 2 else image
    ranges = {c: channel_range(stack[..., c], lower, upper) for c in used_channels(stack.shape[2], channels)}
    return normalize_with_ranges(image, ranges, channels)


def normalize_with_ranges(image: np.ndarray, ranges: dict[int, tuple[float, float]],
                          channels: Sequence[int] | None = None) -> np.ndarray:
    """`normalize_image` with each used source channel's (lo, hi) given (`channel_range` of the whole image):
    a part of an image normalised as the whole is. image: (H, W) or (H, W, C); ranges: {source channel: (lo,
    hi)} for every channel of `used_channels`. Returns (3, H, W) float32."""
    stack = image[..., None] if image.ndim == 2 else image
    mapping = _mapping(stack.shape[2], channels)
    missing = [c for c in mapping if c is not None and c not in ranges]
    if missing:
        raise ValueError(f"ranges has no (lo, hi) for source channels {sorted(set(missing))}")
    scaled = {c: scale_to_range(stack[..., c], *ranges[c]) for c in dict.fromkeys(mapping) if c is not None}
    out = np.empty((3,) + stack.shape[:2], np.float32)
    for k, c in enumerate(mapping):
        source = scaled[c] if c is not None else np.float32(0)
        out[k] = (source - np.float32(BACKBONE_MEAN[k])) / np.float32(BACKBONE_STD[k])
    return out
