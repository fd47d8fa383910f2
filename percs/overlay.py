"""Pictures of segmentations: cell outlines drawn over an image stretched for display, with a legend.

    rgb = draw_overlay(image, labels, reference_mask=reference)          # found cells, reference cell
    save_png("overlay.png", add_legend(rgb, FOUND_LEGEND))
    rgb = draw_matches(image, labels, truth, reference_mask=reference)    # true / false positives, missed cells
    save_png("query.png", add_legend(rgb, match_legend()))

Outlines are the cells' inner boundary pixels (`skimage.segmentation.find_boundaries(mode="inner")`), so
touching cells stay apart. A later layer is painted over an earlier one: predicted cells (PREDICTED_COLOUR),
then the reference cell (REFERENCE_COLOUR); with a truth to match against, missed true cells (MISSED_COLOUR),
false positives (FALSE_POSITIVE_COLOUR), true positives (MATCHED_COLOUR), then the reference cell.
`add_legend` puts a white strip under a picture with a colour swatch and a name per entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

PREDICTED_COLOUR = (255, 255, 0)  # yellow
REFERENCE_COLOUR = (255, 0, 255)  # magenta
MATCHED_COLOUR = (0, 220, 0)  # green
FALSE_POSITIVE_COLOUR = (255, 64, 0)  # orange-red
MISSED_COLOUR = (0, 160, 255)  # blue
FOUND_LEGEND = (("found cell", PREDICTED_COLOUR), ("reference", REFERENCE_COLOUR))
SWATCH, LEGEND_PAD, LEGEND_SPACING = 10, 4, 12  # legend layout, pixels


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


def _paint(rgb: np.ndarray, layers) -> np.ndarray:
    """rgb (H, W, 3) with the outlines of each (array or None, name, colour) layer painted in order."""
    shape = rgb.shape[:2]
    for array, name, colour in layers:
        if array is not None:
            rgb[_outline(array, name, shape)] = colour
    return rgb


def draw_overlay(image: np.ndarray, labels: np.ndarray, *, reference_mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: `display_image(image)` with outlines of labels (H, W) int in PREDICTED_COLOUR and
    reference_mask (H, W) bool / {0, 1} in REFERENCE_COLOUR (legend: FOUND_LEGEND).

    image: (H, W) or (H, W, C), any real dtype. Every outline array must have the image's (H, W).
    """
    return _paint(display_image(image), [(labels, "labels", PREDICTED_COLOUR),
                                         (reference_mask, "reference_mask", REFERENCE_COLOUR)])


def draw_matches(image: np.ndarray, labels: np.ndarray, true_labels: np.ndarray, *,
                 reference_mask: np.ndarray | None = None, threshold: float = 0.5, iou_rule: str = "gt") -> np.ndarray:
    """(H, W, 3) uint8: `display_image(image)` with the predicted labels (H, W) int matched one to one against
    true_labels (H, W) int as `percs.metrics` matches them at `threshold` / `iou_rule`: true positives in
    MATCHED_COLOUR, false positives in FALSE_POSITIVE_COLOUR, missed true cells in MISSED_COLOUR, and
    reference_mask (H, W) bool / {0, 1} in REFERENCE_COLOUR (legend: `match_legend(threshold, iou_rule)`)."""
    from percs.metrics import label_overlaps, match_overlaps

    rgb = display_image(image)
    for array, name in ((labels, "labels"), (true_labels, "true_labels")):
        _outline(array, name, rgb.shape[:2])  # the shape and dtype checks, naming the argument
    labels, true_labels = np.asarray(labels).astype(np.int64), np.asarray(true_labels).astype(np.int64)
    overlaps = label_overlaps(true_labels, labels)
    matched = match_overlaps(overlaps, (threshold,), iou_rule=iou_rule).matched[:, 0]
    found = np.isin(labels, overlaps.pred_labels[overlaps.pair_pred[matched]])
    hit = np.isin(true_labels, overlaps.true_labels[overlaps.pair_true[matched]])
    return _paint(rgb, [(np.where(hit, 0, true_labels), "true_labels", MISSED_COLOUR),
                        (np.where(found, 0, labels), "labels", FALSE_POSITIVE_COLOUR),
                        (np.where(found, labels, 0), "labels", MATCHED_COLOUR),
                        (reference_mask, "reference_mask", REFERENCE_COLOUR)])


def match_legend(threshold: float = 0.5, iou_rule: str = "gt") -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """The legend entries of `draw_matches` pictures."""
    sign = ">" if iou_rule == "gt" else ">="
    return ((f"true positive (IoU {sign} {threshold:g})", MATCHED_COLOUR), ("false positive", FALSE_POSITIVE_COLOUR),
            ("missed (false negative)", MISSED_COLOUR), ("reference", REFERENCE_COLOUR))


def add_legend(rgb: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """(H + S, W', 3) uint8: the (H, W, 3) uint8 picture unchanged on top of a white strip of S pixels holding,
    per (name, colour) entry, a SWATCH-pixel square of the colour (black border) and the name in black, in rows
    as wide as the picture (W' = W, wider only when one entry is wider than the picture: white on the right)."""
    from PIL import Image, ImageDraw, ImageFont

    _check_rgb(rgb)
    if not entries:
        raise ValueError("entries is empty: a legend needs at least one (name, colour)")
    font = ImageFont.load_default()
    left, top, _, bottom = font.getbbox("Ag")
    row_height = max(SWATCH, bottom - top) + LEGEND_PAD
    widths = [SWATCH + LEGEND_PAD + int(np.ceil(font.getlength(name))) for name, _ in entries]
    width = max(rgb.shape[1], max(widths) + 2 * LEGEND_PAD)
    places, x, y = [], LEGEND_PAD, LEGEND_PAD
    for w in widths:
        if x > LEGEND_PAD and x + w > width - LEGEND_PAD:
            x, y = LEGEND_PAD, y + row_height
        places.append((x, y))
        x += w + LEGEND_SPACING
    strip = Image.new("RGB", (width, y + row_height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for (name, colour), (x, y) in zip(entries, places):
        draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + SWATCH + LEGEND_PAD - left, y + (SWATCH - (bottom - top)) // 2 - top), name, fill=(0, 0, 0),
                  font=font)
    canvas = np.full((rgb.shape[0] + strip.height, width, 3), 255, np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
    canvas[rgb.shape[0] :] = np.asarray(strip)
    return canvas


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {getattr(rgb, 'shape', None)} "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)}")


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Writes an (H, W, 3) uint8 picture (as `draw_overlay` returns) to `path` as PNG."""
    from percs.data.io import write_png

    _check_rgb(rgb)
    write_png(Path(path), rgb)
