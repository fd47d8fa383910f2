"""Importer of PanNuke (Gamper et al. 2019/2020) in its release layout, keeping the official folds.

Release layout, one folder per fold k (1, 2, 3), under ROOT or given directly:

    Fold k/images/foldk/images.npy   (N, 256, 256, 3) float64, RGB values 0..255
    Fold k/images/foldk/types.npy    (N,) tissue names ("Breast", "Colon", ...)
    Fold k/masks/foldk/masks.npy     (N, 256, 256, 6) float64: channels 0..4 hold the instance ids of the
                                     classes neoplastic, inflammatory, connective/soft tissue, dead, epithelial;
                                     channel 5 is background (unused here)

Choices: an instance is a (class channel, id) pair, so equal ids in two channels are two nuclei; a pixel set in
several class channels goes to the lowest channel; ids must be whole numbers; images are rounded to uint8 and
written as PNG; tiles without nuclei are skipped (listed in the manifest's meta["skipped"]) unless the options keep
them as negative images. The split comes from
the fold (default: folds 1 and 2 train, fold 3 test, as PerPanNuke); the tissue goes into each image's meta.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from percs.data.format import Dataset
from percs.data.importing import ImportOptions, ImportWriter
from percs.data.io import DataFileError, load_npy

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
DEFAULT_FOLD_SPLITS = {1: "train", 2: "train", 3: "test"}
_FOLD_DIR = re.compile(r"^fold[ _-]?(\d+)$", re.IGNORECASE)


def find_folds(root: Path) -> dict[int, Path]:
    """fold number -> its folder: ROOT itself when named like `Fold 3`, else its subfolders so named."""
    if not root.is_dir():
        raise DataFileError(root, "is not a folder")
    match = _FOLD_DIR.match(root.name)
    if match:
        return {int(match.group(1)): root}
    folds = {int(m.group(1)): d for d in sorted(root.iterdir()) if d.is_dir() and (m := _FOLD_DIR.match(d.name))}
    if not folds:
        raise DataFileError(root, "has no PanNuke fold folders ('Fold 1', 'Fold 2', ...)")
    return folds


def fold_arrays(fold_dir: Path, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, masks, types) of one fold, memory-mapped; shapes checked, errors naming the file."""
    paths = (fold_dir / "images" / f"fold{fold}" / "images.npy", fold_dir / "masks" / f"fold{fold}" / "masks.npy",
             fold_dir / "images" / f"fold{fold}" / "types.npy")
    arrays = []
    for path in paths:
        if not path.is_file():
            raise DataFileError(path, "is missing (PanNuke release layout expected)")
        try:
            arrays.append(load_npy(path, mmap_mode=None if path.name == "types.npy" else "r"))
        except Exception as error:
            raise DataFileError(path, f"cannot read ({type(error).__name__}: {error})") from error
    images, masks, types = arrays
    if images.ndim != 4 or images.shape[3] != 3:
        raise DataFileError(paths[0], f"has shape {images.shape}, expected (N, H, W, 3)")
    if masks.shape != images.shape[:3] + (len(PANNUKE_CLASSES) + 1,):
        raise DataFileError(paths[1], f"has shape {masks.shape}, expected {images.shape[:3] + (6,)} like images.npy")
    if types.shape != images.shape[:1]:
        raise DataFileError(paths[2], f"has shape {types.shape}, expected ({images.shape[0]},) like images.npy")
    return images, masks, types


def pannuke_labels(mask: np.ndarray, where: str) -> tuple[np.ndarray, dict[int, str]]:
    """One tile's (H, W, 6) class channels to ((H, W) int64 labels, label -> class name)."""
    labels = np.zeros(mask.shape[:2], np.int64)
    types: dict[int, str] = {}
    offset = 0
    for channel, class_name in enumerate(PANNUKE_CLASSES):
        ids = np.asarray(mask[..., channel])
        if (ids < 0).any() or (ids != np.round(ids)).any():
            raise DataFileError(where, f"class channel {channel} holds negative or non-integer ids")
        ids = ids.astype(np.int64)
        free = (ids > 0) & (labels == 0)
        labels[free] = ids[free] + offset
        types.update({int(i) + offset: class_name for i in np.unique(ids[free])})
        offset += int(ids.max())
    return labels, types


def tile_image(images: np.ndarray, index: int, where: str) -> np.ndarray:
    """One tile as (H, W, 3) uint8 (PanNuke stores whole numbers 0..255 as float64)."""
    image = np.asarray(images[index])
    if image.dtype.kind == "f" and (not np.isfinite(image).all() or image.min() < 0 or image.max() > 255):
        raise DataFileError(where, "image values outside 0..255")
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def import_pannuke(root: Path | str, out: Path | str, options: ImportOptions = ImportOptions(modality="histology"),
                   fold_splits: Mapping[int, str] = DEFAULT_FOLD_SPLITS) -> Dataset:
    """Imports the PanNuke folds under `root` (see the module docstring); images are named `fold<k>/<index>`.

    fold_splits: fold number -> split; folds not listed get no split.
    """
    root = Path(root)
    folds = find_folds(root)
    with ImportWriter(out, options, "pannuke", root) as writer:
        names = {c: writer.add_type(c, "PanNuke class") for c in PANNUKE_CLASSES}
        for fold, fold_dir in folds.items():
            _add_fold(writer, fold, fold_dir, fold_splits.get(fold), names)
        return writer.close()


def _add_fold(writer: ImportWriter, fold: int, fold_dir: Path, split: str | None, names: dict[str, str]) -> None:
    images, masks, tissues = fold_arrays(fold_dir, fold)
    images_path = fold_dir / "images" / f"fold{fold}" / "images.npy"
    masks_path = fold_dir / "masks" / f"fold{fold}" / "masks.npy"
    for index in range(images.shape[0]):
        labels, types = pannuke_labels(masks[index], f"{masks_path}[{index}]")
        source = {"fold": fold, "index": index, "tissue": str(tissues[index])}
        if not writer.keeps(labels, **source):
            continue
        image = tile_image(images, index, f"{images_path}[{index}]")
        writer.add_record(f"fold{fold}/{index:04d}", image, labels, {k: names[t] for k, t in types.items()}, split,
                          source)
