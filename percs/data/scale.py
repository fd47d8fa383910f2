"""Scale from the reference: the query and the reference resized so that the reference cell is a fixed size.

The reference cell tells the scale, so no diameter has to be asked for (Cellpose asks its user for one). With
`predict.reference_diameter` D > 0, the query image and the reference image are resized by the factor that
makes the reference cell's equivalent diameter (the diameter of a disk of its area) D pixels; the network runs
at that size and its flows and logits are resized back, so labels come back at the input's size. Training uses
the same rule on each crop's reference, with a random factor of at most `scale_jitter` either way
(`percs.data.dataset`). D = 0 (the paper) runs every image at its own scale.

Factors are snapped to quarter octaves (2^(k/4), at most 9% from the exact one) so that references of about one
size share one pass over an image, and must lie in [MIN_SCALE, MAX_SCALE]: at most 4x upscaling, which costs
up to 16x the pixels (and the time) of the input; a reference outside that range is an error that says its size.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SCALE = 1 / 8
MAX_SCALE = 4.0
STEPS_PER_OCTAVE = 4


def equivalent_diameter(area: float) -> float:
    """The diameter of a disk of `area` pixels."""
    return math.sqrt(4.0 * float(area) / math.pi)


def check_reference_diameter(diameter: float, name: str = "predict.reference_diameter") -> None:
    """Raises a ValueError naming `name` unless diameter is 0 (off) or a finite number of pixels >= 1."""
    if not (diameter == 0 or (math.isfinite(diameter) and diameter >= 1)):
        raise ValueError(f"{name} must be 0 (off) or a number of pixels >= 1, got {diameter!r}")


def snap_scale(scale: float) -> float:
    """scale rounded to the nearest quarter octave, 2^(k/4)."""
    return 2.0 ** (round(math.log2(scale) * STEPS_PER_OCTAVE) / STEPS_PER_OCTAVE)


def shared_scale(scales) -> float:
    """The scale several references share: the geometric mean of their scales, snapped (1.0 for none). A
    generic model finds an image's cells once, at one scale, for all of them."""
    scales = list(scales)
    return snap_scale(math.exp(sum(math.log(s) for s in scales) / len(scales))) if scales else 1.0


def reference_scale(reference_mask, diameter: float, name: str = "reference_mask") -> float:
    """The resize factor that brings the reference cell of reference_mask ((H, W) bool / {0, 1} array or tensor)
    to `diameter` pixels across, snapped (`snap_scale`); 1.0 when diameter is 0. A ValueError naming `name` for
    an empty mask or a cell too small or too large for [MIN_SCALE, MAX_SCALE]."""
    check_reference_diameter(diameter)
    if diameter == 0:
        return 1.0
    area = int((reference_mask != 0).sum())
    if area == 0:
        raise ValueError(f"{name} is empty: the reference cell sets the scale (predict.reference_diameter)")
    across = equivalent_diameter(area)
    scale = snap_scale(diameter / across)
    if not MIN_SCALE <= scale <= MAX_SCALE:
        smallest, largest = diameter / MAX_SCALE, diameter / MIN_SCALE
        raise ValueError(f"{name}: the reference cell is {across:.1f} px across, so predict.reference_diameter "
                         f"{diameter:g} would resize the images {scale:.3g}x, outside [{MIN_SCALE:g}, {MAX_SCALE:g}]; "
                         f"give a reference cell {smallest:.1f} to {largest:.0f} px across, or "
                         "predict.reference_diameter = 0 to run at the image's own scale")
    return scale


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) resized by scale, each side rounded and at least 1."""
    return tuple(max(1, round(side * scale)) for side in shape)


def resize(array, shape: tuple[int, int], mode: str = "bilinear"):
    """(C, H, W) float tensor resized to `shape`: "bilinear" (antialiased when shrinking, as image resizing
    should be) or "nearest" (labels, masks: no value that was not there)."""
    import torch.nn.functional as F

    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    if mode == "nearest":
        return F.interpolate(array[None], size=shape, mode="nearest-exact")[0]
    shrink = shape[0] < array.shape[-2] or shape[1] < array.shape[-1]
    return F.interpolate(array[None], size=shape, mode="bilinear", align_corners=False, antialias=shrink)[0]


def resize_array(array: np.ndarray, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """`resize` for (C, H, W) or (H, W) NumPy arrays, in their own dtype (labels resized "nearest" exactly)."""
    import torch

    flat = array.ndim == 2
    values = torch.from_numpy(np.ascontiguousarray(array[None] if flat else array))
    values = values.double() if mode == "nearest" else values.float()  # double holds any int32 label exactly
    out = resize(values, shape, mode).numpy().astype(array.dtype, copy=False)
    return out[0] if flat else out
