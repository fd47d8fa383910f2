"""Pictures of segmentations: cell outlines drawn over an image stretched for display.

    rgb = draw_overlay(image, labels, true_labels=truth, reference_mask=reference)
    save_png("query_overlay.png", rgb)

Outlines are the cells' inner boundary pixels (`skimage.segmentation.find_boundaries(mode="inner")`), so
touching cells stay apart. They are painted in this order, a later one over an earlier one: true cells
(TRUE_COLOUR), predicted cells (PREDICTED_COLOUR), the reference cell (REFERENCE_COLOUR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTED_COLOUR = (255, 255, 0)  # yellow
TRUE_COLOUR = (0, 160, 255)  # blue
REFERENCE_COLOUR = (255, 0, 255)  # magenta


def display_image(image: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """(H, W, 3) uint8 of an (H, W) or (H, W, C) image: each channel's lower / upper percentiles stretched to
    0 / 255 (clipped); grey repeated into R, G, B, two channels as (c0, c1, 0), more than three: the first three.
    """
    from percs.data.normalize import default_channels, scale_channel

    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image has shape {shape}, expected a non-empty (H, W) or (H, W, C) NumPy array")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image has dtype {image.dtype}, expected a real or bool dtype")
    stack = image[..., None] if image.ndim == 2 else image
    stack = np.nan_to_num(stack.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    rgb = np.zeros(stack.shape[:2] + (3,), np.float32)
    for k, c in enumerate(default_channels(stack.shape[2])):
        if c is not None:
            rgb[..., k] = scale_channel(stack[..., c], lower, upper)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _outline(mask_or_labels: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool inner boundaries of a label image or mask of `shape`; ValueError naming the argument."""
    from skimage.segmentation import find_boundaries

    array = np.asarray(mask_or_labels)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected the image's {shape}")
    if array.dtype.kind not in "biu":
        raise ValueError(f"{name} has dtype {array.dtype}, expected integer labels or a bool mask")
    return find_boundaries(array.astype(np.int64), mode="inner")


def draw_overlay(image: np.ndarray, labels: np.ndarray, *, true_labels: np.ndarray | None = None,
                 reference_mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: `display_image(image)` with outlines of labels (H, W) int in PREDICTED_COLOUR,
    true_labels (H, W) int in TRUE_COLOUR and reference_mask (H, W) bool / {0, 1} in REFERENCE_COLOUR.

    image: (H, W) or (H, W, C), any real dtype. Every outline array must have the image's (H, W).
    """
    rgb = display_image(image)
    shape = rgb.shape[:2]
    layers = [(true_labels, "true_labels", TRUE_COLOUR), (labels, "labels", PREDICTED_COLOUR),
              (reference_mask, "reference_mask", REFERENCE_COLOUR)]
    for array, name, colour in layers:
        if array is not None:
            rgb[_outline(array, name, shape)] = colour
    return rgb


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Writes an (H, W, 3) uint8 picture (as `draw_overlay` returns) to `path` as PNG."""
    from percs.data.io import write_png

    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {getattr(rgb, 'shape', None)} "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)}")
    write_png(Path(path), rgb)
