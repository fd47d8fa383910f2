"""Large images in `percs predict`: which images are segmented block by block (`percs.predict.blockwise`), how
they are checked without being read whole, where a reference cell inside one is, and what is written for them.

An image is segmented block by block when it is a Zarr / OME-Zarr store, a TIFF-like file of more than
BLOCKWISE_MIN_PIXELS pixels, or when blockwise work is asked for (`--blockwise`, `--dask-scheduler`). Its
outputs, for an image `<stem>`: `<stem>_labels.zarr` (int32 labels chunked as the blocks), `<stem>_labels.tif`
(a tiled TIFF copy when the image has at most `blockwise.TIFF_MAX_PIXELS` pixels) and `<stem>_cells.csv`; no
overlay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from percs.data.io import DataFileError
from percs.predict.source import TIFF_SUFFIXES, ImageSource, ImageStoreError, is_zarr_store, open_image

BLOCKWISE_MIN_PIXELS = 1 << 26  # 64 MP (8192 x 8192): larger TIFFs are segmented block by block
BLOCKWISE_OUTPUT_SUFFIXES = ("_labels.zarr", "_labels.tif", "_cells.csv")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")


def output_stem(path: Path) -> str:
    """The stem of an image's outputs: the file or store name without its suffix (.ome.zarr, .ome.tif too)."""
    name = path.name
    for suffix in ZARR_SUFFIXES + tuple(".ome" + s for s in TIFF_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_blockwise(path: Path, forced: bool = False) -> bool:
    """Whether `percs predict` segments the image at path block by block (see the module docstring)."""
    if forced or is_zarr_store(path):
        return True
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    return _tiff_pixels(path) > BLOCKWISE_MIN_PIXELS


def _tiff_pixels(path: Path) -> int:
    """Height x width of a TIFF's first series from its header; 0 when it cannot be read (it is then read
    whole, and refused with the reader's message, tifffile's own log kept quiet here)."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path) as tiff:
            shape = dict(zip(tiff.series[0].axes, tiff.series[0].shape))
        return shape.get("Y", 0) * shape.get("X", 0)
    except Exception:  # a corrupt or unreadable file: whatever tifffile raises
        return 0
    finally:
        logger.setLevel(level)


def large_image_source(path: Path) -> ImageSource:
    """The ImageSource of an image segmented block by block: read lazily when it is a store or TIFF, else read
    whole (a small image given --blockwise). DataFileError naming the file when it cannot be read."""
    if is_zarr_store(path) or path.suffix.lower() in TIFF_SUFFIXES:
        return open_image(path)
    from percs.predict.files import read_query_image

    return ImageSource.from_array(read_query_image(path))


def check_large_image(path: Path) -> str | None:
    """The problem with an image to be segmented block by block (its store's metadata and first pixels are
    read), naming the file; None when it can be segmented."""
    try:
        source = large_image_source(path)
        source.read(0, min(16, source.shape[0]), 0, min(16, source.shape[1]))
    except DataFileError as error:
        return str(error)
    except Exception as error:  # a decoder's failure on the first tile
        return str(ImageStoreError(path, f"cannot be read: {type(error).__name__}: {error}"))
    return None


def reference_region(image_path: Path, mask: np.ndarray, offset: tuple[int, int]):
    """The ReferenceRegion of a reference cell mask (h, w) bool whose top-left pixel is at offset (y, x) of the
    image at image_path. DataFileError naming the mask's place when it is outside the image."""
    from percs.predict.blockwise import ReferenceRegion

    source = large_image_source(image_path)
    check_offset(mask.shape, offset, source.shape, image_path)
    return ReferenceRegion(source, mask, offset)


def check_offset(mask_shape: tuple[int, int], offset: tuple[int, int], image_shape: tuple[int, int],
                 image_path: Path) -> None:
    """DataFileError unless a mask of mask_shape at offset (y, x) lies inside an image of image_shape."""
    (y, x), (h, w), (height, width) = offset, mask_shape, image_shape
    if y < 0 or x < 0 or y + h > height or x + w > width:
        raise DataFileError(image_path, f"the reference cell is outside the image: a {h} x {w} mask at "
                                        f"--reference-offset {y},{x} does not fit in its {height} x {width} pixels")


def placed_mask(mask: np.ndarray, offset: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) bool mask of image_shape holding mask (h, w) at offset (y, x) (checked by `check_offset`)."""
    out = np.zeros(image_shape, bool)
    out[offset[0] : offset[0] + mask.shape[0], offset[1] : offset[1] + mask.shape[1]] = mask
    return out


def resumable(out: Path, stem: str) -> bool:
    """Whether an unfinished blockwise run of this stem left its blocks in out (its outputs may be replaced)."""
    return (out / f"{stem}_labels.zarr.blocks").is_dir()


def segment_large_file(segmenter, path: Path, stem: str, reference, out: Path, config, positives=(),
                       negatives=()):
    """Segments one image block by block into out (`BLOCKWISE_OUTPUT_SUFFIXES`). reference: a Reference or a
    ReferenceRegion; config: a BlockwiseConfig; positives, negatives: more References. Returns the
    BlockwiseResult."""
    from percs.predict.blockwise import segment_blockwise
    from percs.predict.files import write_cell_table

    result = segment_blockwise(segmenter, large_image_source(path), reference, out / f"{stem}_labels.zarr",
                               config, positives=positives, negatives=negatives)
    write_cell_table(out / f"{stem}_cells.csv", result.cells)
    return result
