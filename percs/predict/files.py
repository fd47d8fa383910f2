"""Segmenting image files with one reference cell and writing, per image, a label image, an overlay and a
cell table (what `percs predict` does; each step is callable from Python).

    images = find_images(["plates/", "extra.tif"], out="results")
    problems = check_images(images)                  # every image read once: [] when all can be segmented
    reference_image, reference_mask = read_reference("ref.png", "ref_mask.png")
    jobs = plan_outputs(images, "ref.png", "results")
    segmenter = Segmenter.from_checkpoint("best.pt")
    failures = segment_files(segmenter, reference_image, reference_mask, jobs, "results")

Outputs in the out folder, for an image `<stem>.<ext>`: `<stem>_labels.tif` (int32 labels, 0 background),
`<stem>_overlay.png` (found cells outlined; the reference cell too when the image is the reference image; a
legend strip under the image) and `<stem>_cells.csv` (id, area in pixels, centroid_y, centroid_x in pixels,
score = the cell's mean same-type probability); once, `reference_overlay.png` (the reference cell on its image)
when an image is not the reference image. An image with fewer than FEW_CELLS cells found is warned about.
Large images (Zarr stores, big TIFFs) are segmented block by block, on dask, with their own outputs: see
`percs.predict.large_images`.
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from percs.predict.api import SegmentationResult, Segmenter, check_image_size, reference_cell_mask
from percs.data.io import (IMAGE_SUFFIXES, DataFileError, check_file, read_image, read_label_file, to_label_image,
                           write_tiff)
from percs.overlay import FOUND_LEGEND, REFERENCE_COLOUR, add_legend, draw_overlay, save_png
from percs.predict.large_images import (BLOCKWISE_OUTPUT_SUFFIXES, check_large_image, output_stem, resumable,
                                        segment_large_file)
from percs.predict.source import TIFF_SUFFIXES, is_zarr_store

OUTPUT_SUFFIXES = ("_labels.tif", "_overlay.png", "_cells.csv")
REFERENCE_OVERLAY = "reference_overlay.png"
CELL_COLUMNS = ("id", "area", "centroid_y", "centroid_x", "score")
FEW_CELLS = 3  # fewer cells than this in an image is "very few": segment_files warns


class FewCellsWarning(UserWarning):
    """An image in which no cell, or fewer than FEW_CELLS, of the reference's type were found."""


@dataclass(frozen=True)
class ImageJob:
    """One input image: its path, the stem of its outputs, whether it is the reference image's file, and
    whether it is segmented block by block (`percs.predict.large_images`)."""

    path: Path
    stem: str
    is_reference: bool
    blockwise: bool = False


def _is_output(path: Path) -> bool:
    return path.name == REFERENCE_OVERLAY or path.name.endswith(OUTPUT_SUFFIXES + BLOCKWISE_OUTPUT_SUFFIXES)


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return is_zarr_store(path)
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + TIFF_SUFFIXES


def find_images(paths: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """The images (PNG, JPEG, TIFF files, Zarr stores) of `paths`: as given, and folders' images sorted by name
    (not recursing; in the `out` folder, images named like outputs are skipped). An image given twice is kept
    once. DataFileError for a missing path or a file of another kind; ValueError when no image is found."""
    out_folder = Path(out).resolve() if out is not None else None
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        if path.is_dir() and not is_zarr_store(path):
            files = [f for f in sorted(path.iterdir()) if _is_image(f)]
            if path.resolve() == out_folder:
                files = [f for f in files if not _is_output(f)]
        elif path.exists():
            if not _is_image(path):
                suffixes = IMAGE_SUFFIXES + TIFF_SUFFIXES
                raise DataFileError(path, f"unsupported image suffix {path.suffix!r}, expected one of {suffixes} "
                                          "or a Zarr store")
            files = [path]
        else:
            raise DataFileError(path, "does not exist")
        for file in files:
            found.setdefault(file.resolve(), file)
    if not found:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ValueError(f"no images found in {', '.join(map(str, paths))} (expected {suffixes} files)")
    return list(found.values())


def read_query_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W) or (H, W, C) with C <= 4 (channels-first TIFFs are moved last), as stored:
    grey or colour, 8 or 16 bit or float (finite), at least `percs.predict.api.MIN_IMAGE_SIDE` pixels tall and wide.
    DataFileError naming the file otherwise."""
    image = read_image(check_file(path))
    if image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > 4):
        raise DataFileError(path, f"image has shape {image.shape}, expected (H, W) or (H, W, C) with up to 4 channels")
    if image.dtype.kind not in "biuf":
        raise DataFileError(path, f"image has dtype {image.dtype}, expected integers or floats")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise DataFileError(path, "image has NaN or infinite values")
    try:
        check_image_size(image.shape[:2])
    except ValueError as error:
        raise DataFileError(path, str(error)) from None
    return image


def check_images(paths: Sequence[str | Path], blockwise: Sequence[bool] | None = None) -> list[str]:
    """One message per image of `paths` that `read_query_image` refuses (unreadable, corrupt, of the wrong
    shape, dtype or size), naming the file; empty when every image can be segmented. Each image is read whole
    (and dropped), so that a bad file is found before a model is loaded; an image marked in `blockwise` only
    has its store's metadata and first pixels read (`large_images.check_large_image`)."""
    problems = []
    for path, large in zip(paths, blockwise or [False] * len(paths)):
        if large:
            problem = check_large_image(Path(path))
            if problem is not None:
                problems.append(problem)
            continue
        try:
            read_query_image(path)
        except DataFileError as error:
            problems.append(str(error))
    return problems


def _mask_file_labels(path: Path) -> np.ndarray:
    """(H, W) int64 of a mask or label file; a grey image stored as RGB(A) is taken as its first channel."""
    raw = read_label_file(path)
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and (raw[..., :3] == raw[..., :1]).all():
        raw = raw[..., 0]
    return to_label_image(raw.astype(np.uint8) if raw.dtype == bool else raw, path)


def read_reference(image_path: str | Path, mask_path: str | Path, label: int | None = None,
                   offset: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reference image as `read_query_image` gives it, (H, W) bool mask of the reference cell).

    mask_path: without `label`, a mask file with one non-zero value (0/1, 0/255, ...), the cell; with `label`, a
    label image, the cell being its pixels equal to `label`. offset: where the mask's top-left pixel lies in the
    image (y, x), for a mask smaller than the image; None: the mask covers the image. DataFileError naming the
    file at fault when the mask is empty, holds several labels (without `label`), lacks `label`, differs in size
    from the image, or lies outside it.
    """
    from percs.predict.large_images import check_offset, placed_mask

    image = read_query_image(image_path)
    mask = read_reference_mask(mask_path, label)
    if offset is not None:
        check_offset(mask.shape, offset, image.shape[:2], image_path)
        mask = placed_mask(mask, offset, image.shape[:2])
    elif mask.shape != image.shape[:2]:
        raise DataFileError(mask_path, f"size {mask.shape} differs from the reference image {image_path}'s "
                                       f"{image.shape[:2]} (height, width)")
    try:
        return image, reference_cell_mask(image.shape[:2], mask)
    except ValueError as error:
        raise DataFileError(mask_path, str(error)) from None


def read_reference_mask(mask_path: str | Path, label: int | None = None) -> np.ndarray:
    """(h, w) bool mask of the reference cell in a mask file (one non-zero value) or, with `label`, a label
    image's cell `label`. DataFileError naming the file when it is empty, holds several labels (without
    `label`) or lacks `label`."""
    labels = _mask_file_labels(check_file(mask_path))
    if not labels.any():
        raise DataFileError(mask_path, "is empty (every pixel is 0): it marks no reference cell")
    if label is None:
        values = np.unique(labels[labels > 0])
        if len(values) > 1:
            raise DataFileError(mask_path, f"holds {len(values)} labels, not one cell: pick one with --reference-label")
        return labels > 0
    if label <= 0 or not (labels == label).any():
        ids = np.unique(labels[labels > 0])
        raise DataFileError(mask_path, f"has no cell labelled {label} (--reference-label): its labels are "
                                       f"{ids.min()}..{ids.max()} ({len(ids)} cells)")
    return labels == label


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(images: Sequence[Path], reference_image: str | Path, out: str | Path,
                 overwrite: bool = False, blockwise: Sequence[bool] | None = None) -> list[ImageJob]:
    """One ImageJob per image, after checking that no two images write the same output (same stem, or a
    stem "reference" next to the reference overlay) and, unless overwrite, that no output exists yet (but
    those of an unfinished blockwise run, which is resumed). blockwise: per image, whether it is segmented
    block by block. ValueError naming the files otherwise (nothing is written before every check passed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    jobs = [ImageJob(Path(p), output_stem(Path(p)), _same_file(Path(p), Path(reference_image)), large)
            for p, large in zip(images, blockwise or [False] * len(images))]
    by_stem: dict[str, Path] = {}
    for job in jobs:
        first = by_stem.setdefault(job.stem.casefold(), job.path)
        if first != job.path:
            raise ValueError(f"{first} and {job.path} would both write {out / job.stem}_*: rename one of them")
    resuming = [job.blockwise and resumable(out, job.stem) for job in jobs]
    outputs = [out / f"{job.stem}{suffix}" for job, resumed in zip(jobs, resuming) if not resumed
               for suffix in (BLOCKWISE_OUTPUT_SUFFIXES if job.blockwise else OUTPUT_SUFFIXES)]
    if not all(job.is_reference for job in jobs):
        if "reference" in by_stem:
            raise ValueError(f"{by_stem['reference']}: its overlay would overwrite {out / REFERENCE_OVERLAY}, "
                             "the reference cell's picture: rename the file")
        if not any(resuming):  # else the unfinished run drew it
            outputs.append(out / REFERENCE_OVERLAY)
    existing = [path for path in outputs if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists ({len(existing)} outputs would be overwritten): pass --overwrite, "
                         "or choose another --out")
    return jobs


def cell_table(labels: np.ndarray, cell_probability: np.ndarray) -> dict[str, np.ndarray]:
    """Columns CELL_COLUMNS for labels (H, W) int 1..N and cell_probability (N,): id, area (pixels),
    centroid_y, centroid_x (pixels, (0, 0) the centre of the top-left pixel), score (the cell's probability)."""
    from skimage.measure import regionprops_table

    props = regionprops_table(labels, properties=("label", "area", "centroid"))
    ids = props["label"].astype(np.int64)
    return {"id": ids, "area": props["area"].astype(np.int64), "centroid_y": props["centroid-0"],
            "centroid_x": props["centroid-1"], "score": np.asarray(cell_probability)[ids - 1]}


def write_cell_table(path: Path, table: dict[str, np.ndarray]) -> None:
    """A `cell_table` as CSV: a header line, then one row per cell (centroids to 1/1000 pixel, score to 1e-6)."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")  # the csv module's default is "\r\n"
        writer.writerow(CELL_COLUMNS)
        for i, y, x, a, s in zip(table["id"], table["centroid_y"], table["centroid_x"], table["area"], table["score"]):
            writer.writerow([int(i), int(a), f"{y:.3f}", f"{x:.3f}", f"{s:.6f}"])


def write_outputs(out: Path, stem: str, image: np.ndarray, result: SegmentationResult,
                  reference_mask: np.ndarray | None = None) -> None:
    """The three outputs of one image (see the module docstring); reference_mask (H, W) bool is outlined
    in the overlay when given (the image is the reference image)."""
    write_tiff(out / f"{stem}_labels.tif", result.labels.astype(np.int32, copy=False))
    overlay = draw_overlay(image, result.labels, reference_mask=reference_mask)
    save_png(out / f"{stem}_overlay.png", add_legend(overlay, FOUND_LEGEND))
    write_cell_table(out / f"{stem}_cells.csv", cell_table(result.labels, result.cell_probability))


def few_cells_message(path: str | Path, n_cells: int) -> str | None:
    """The warning for an image in which n_cells were found: None from FEW_CELLS cells on."""
    if n_cells >= FEW_CELLS:
        return None
    found = "no cell found" if n_cells == 0 else f"only {n_cells} cell{'s' * (n_cells > 1)} found"
    return (f"{path}: {found} (fewer than {FEW_CELLS}): the image may hold no cell of the reference's type, or the "
            "model may not know this kind of image (see what it was trained on)")


def segment_files(segmenter: Segmenter, reference_image: np.ndarray | None, reference_mask: np.ndarray | None,
                  jobs: Sequence[ImageJob], out: str | Path, progress: bool = True,
                  warn: Callable[[str], None] | None = None, blockwise=None, reference_region=None,
                  extra=None) -> list[str]:
    """Segments every job's image with the reference cell and writes its outputs into `out` (created).

    A bad image does not stop the others: the returned list holds one message per image that failed, naming
    the file and the problem (empty when all succeeded). progress: a tqdm bar over the images on stderr.
    warn: called with `few_cells_message` for each image with fewer than FEW_CELLS cells (default: a
    FewCellsWarning through the warnings module). blockwise: the `percs.predict.blockwise.BlockwiseConfig` of
    the jobs marked blockwise (default settings when None). reference_region: a
    `percs.predict.blockwise.ReferenceRegion`, the reference cell inside a large image, instead of
    reference_image and reference_mask (then None). extra: (positives, negatives), more reference cells
    [(image, mask)] for a model with an instance-level decision (`Segmenter.segment` references/negatives).
    """
    from tqdm import tqdm

    from percs.predict.api import Reference
    from percs.predict.blockwise import BlockwiseConfig, reference_region_embedding

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if reference_region is not None:
        embedded = reference_region_embedding(segmenter, reference_region)
        reference = Reference(None, reference_region.mask, embedded) if segmenter.instance is not None else \
            Reference(embedded, reference_region.mask)
    else:
        reference = segmenter.reference(reference_image, reference_mask)
    references = {"references": [reference], "negatives": []}
    if extra is not None:
        references["references"] += [segmenter.reference(image, mask) for image, mask in extra[0]]
        references["negatives"] = [segmenter.reference(image, mask) for image, mask in extra[1]]
    if reference_image is not None and not all(job.is_reference for job in jobs):
        blank = np.zeros(reference_mask.shape, np.int32)
        picture = draw_overlay(reference_image, blank, reference_mask=reference_mask)
        save_png(out / REFERENCE_OVERLAY, add_legend(picture, (("reference", REFERENCE_COLOUR),)))
    failures = []
    for job in tqdm(jobs, desc="percs predict", unit="image", disable=not progress, file=sys.stderr):
        try:
            if job.blockwise:
                config = blockwise or BlockwiseConfig(progress=progress)
                n_cells = segment_large_file(segmenter, job.path, job.stem, reference, out, config,
                                             references["references"][1:], references["negatives"]).n_cells
            else:
                image = read_query_image(job.path)
                result = segmenter.segment(image, **references) if extra else segmenter.segment(image, reference)
                write_outputs(out, job.stem, image, result, reference_mask if job.is_reference else None)
                n_cells = int(result.labels.max(initial=0))
            message = few_cells_message(job.path, n_cells)
            if message is not None:
                (warn or _warn)(message)
        except DataFileError as error:
            failures.append(str(error))
        except (ValueError, OSError) as error:
            failures.append(f"{job.path}: {error}")
    return failures


def _warn(message: str) -> None:
    warnings.warn(message, FewCellsWarning, stacklevel=3)
