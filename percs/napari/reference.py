"""The reference cell from what the user shows in napari, without Qt or napari: a click on a cell of a label
image, a painted mask, or a click on an image alone (the cell under it from a quick class-agnostic
segmentation, `quick_cells`).

Points are (y, x) in the reference image's pixel coordinates as napari gives them: pixel (i, j) is centred on
(i, j) and covers [i - 0.5, i + 0.5) x [j - 0.5, j + 0.5).
"""

from __future__ import annotations

import numpy as np

from percs.api import MIN_IMAGE_SIDE


class InputError(ValueError):
    """A problem with what the user chose in the widget; the message names it and is shown as it is."""


def layer_image(data, name: str, rgb: bool = False) -> np.ndarray:
    """An image layer's data as the model takes it: (H, W) grey, or (H, W, 3) for an RGB(A) layer (alpha
    dropped). name: the layer's name, for the messages. InputError for stacks, non-numeric data, NaN and images
    under MIN_IMAGE_SIDE pixels tall or wide."""
    array = np.asarray(data)
    if rgb and array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3]
    elif array.ndim != 2:
        raise InputError(f"image layer '{name}' has {array.ndim} dims {array.shape}: percs segments one 2-D image "
                         "(grey, or RGB shown as RGB); choose one plane, e.g. with Split Stack")
    if array.dtype.kind not in "biuf":
        raise InputError(f"image layer '{name}' has dtype {array.dtype}, expected numbers")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"image layer '{name}' has NaN or infinite values")
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InputError(f"image layer '{name}' is {height} x {width} pixels (height x width): percs needs at "
                         f"least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} (one patch of its backbone)")
    return array


def pixel_of(point, shape: tuple[int, int], where: str) -> tuple[int, int]:
    """(row, column) of the pixel under point (y, x) in an image of `shape` (H, W); InputError naming `where`
    (e.g. "image 'cells'") when the point lies outside it."""
    y, x = (float(v) for v in point)
    row, column = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
    if not (0 <= row < shape[0] and 0 <= column < shape[1]):
        raise InputError(f"the point at (y, x) = ({y:.1f}, {x:.1f}) is outside {where} ({shape[0]} x {shape[1]} "
                         "pixels): click inside it")
    return row, column


def cell_of_labels(labels: np.ndarray, point, name: str) -> np.ndarray:
    """(H, W) bool: the cell of label image `labels` (layer `name`) under point (y, x). InputError when the
    point is outside the image or on the background (label 0)."""
    row, column = pixel_of(point, labels.shape, f"labels layer '{name}'")
    value = labels[row, column]
    if value == 0:
        raise InputError(f"the point at (y, x) = ({row}, {column}) is on the background of labels layer '{name}' "
                         "(label 0): click inside a cell")
    return labels == value


def painted_cell(labels: np.ndarray, label: int, name: str) -> np.ndarray:
    """(H, W) bool: the pixels of `label` (the labels layer's selected label: the one painted with, or picked
    with the colour picker) in `labels`. InputError when the label is 0 or absent."""
    if label == 0 or not (mask := labels == label).any():
        raise InputError(f"labels layer '{name}' has no pixel of label {label}, its selected label: paint the "
                         "reference cell with it, pick a cell with the colour picker, or click a cell with a "
                         "points layer")
    return mask


def quick_cells(image: np.ndarray) -> np.ndarray:
    """(H, W) int32 class-agnostic cells of an (H, W) / (H, W, C) image, model-free and quick (about 0.4 s
    for 512 x 512): the channels' 1-99 percentile stretch averaged, smoothed (sigma 1 pixel), split at Otsu's
    threshold; cells are the smaller side (bright cells on a dark background, or dark stained cells on a pale
    one), opened (disk of radius 1) and holes filled; touching cells are split by a watershed of the distance
    to the background from its maxima of height 0.5 pixel. Labels 1..N, 0 background. How often the cell
    under a click is right, measured on real and synthetic images: docs/napari.md."""
    from scipy.ndimage import binary_fill_holes, distance_transform_edt, gaussian_filter
    from skimage.filters import threshold_otsu
    from skimage.measure import label as connected_components
    from skimage.morphology import disk, h_maxima, opening
    from skimage.segmentation import watershed

    from percs.data.normalize import scale_channel

    stack = image[..., None] if image.ndim == 2 else image
    grey = np.mean([scale_channel(stack[..., c], 1.0, 99.0) for c in range(stack.shape[2])], axis=0)
    smooth = gaussian_filter(grey.astype(np.float32), 1.0)
    if smooth.max() == smooth.min():
        return np.zeros(grey.shape, np.int32)
    above = smooth > threshold_otsu(smooth)
    cells = binary_fill_holes(opening(above if above.mean() <= 0.5 else ~above, disk(1)))
    distance = distance_transform_edt(cells)
    markers = connected_components(h_maxima(distance, 0.5))
    return watershed(-distance, markers, mask=cells).astype(np.int32)


def quick_cell(image: np.ndarray, point, name: str) -> np.ndarray:
    """(H, W) bool: the cell of `quick_cells(image)` under point (y, x) in image layer `name`. InputError when
    the point is outside the image or the quick segmentation finds background there."""
    row, column = pixel_of(point, image.shape[:2], f"image '{name}'")
    cells = quick_cells(image)
    if cells[row, column] == 0:
        raise InputError(f"no cell under the point at (y, x) = ({row}, {column}) in image '{name}': the quick "
                         "segmentation (Otsu threshold, watershed) finds background there; click inside a cell, "
                         "or paint the cell in a labels layer")
    return cells == cells[row, column]
