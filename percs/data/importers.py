"""Importers from the layouts this field uses into the percs dataset format.

- `import_cellpose`: `<name>_img.<ext>` / `<name>_masks.<ext>` pairs, one cell type per folder;
- `import_folder`: an image folder and a mask folder matched by name, one type for all or a per-image table;
- `import_typemap`: instance maps with per-nucleus classes from per-pixel type maps or a per-instance table
  (HoVer-Net / CoNSeP style, .mat files included);
- `import_pannuke` (percs.data.pannuke): the PanNuke fold layout.

Choices shared by all (docs/dataset_format.md lists them): labels are renumbered 1..N in raster order with
their types carried along; images whose labels hold no instance are skipped and listed in the manifest's
meta["skipped"]; an image and its labels of different sizes, an image without labels, a file that cannot be
decoded, a label image that is a stack, a binary mask, colour or negative: errors naming the file.
A 3-D image whose last two axes match the labels is read as channels-first and stored channels-last; extra
planes stay channels (the normalisation uses the first three). Images are copied byte for byte when they decode
to (H, W) or (H, W, C) uint8 / uint16 / float32; otherwise they are converted (other dtypes to float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from percs.data.format import IMAGE_DTYPES, Dataset, DatasetWriter
from percs.data.io import (IMAGE_SUFFIXES, LABEL_SUFFIXES, DataFileError, read_image, read_label_file, read_mat,
                           to_label_image)
from percs.data.tables import read_image_types, read_instance_classes

__all__ = ["ImportOptions", "import_cellpose", "import_folder", "import_typemap", "read_image_types",
           "read_instance_classes"]

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class ImportOptions:
    """What every importer takes: the dataset name (default: the output folder's name) and the modality group
    of each cell type (`modality` for all, `modality_of` for exceptions; cells are only ever pasted between
    types of one group)."""

    name: str | None = None
    modality: str = "unspecified"
    modality_of: Mapping[str, str] = field(default_factory=dict)


def open_writer(out: Path | str, options: ImportOptions, importer: str, source: Path | str) -> DatasetWriter:
    """A writer whose meta records the importer, its source and (filled in as it goes) the skipped images."""
    name = options.name or Path(out).resolve().name
    return DatasetWriter(out, name, {"importer": importer, "source": str(source), "skipped": []})


def finish(writer: DatasetWriter, options: ImportOptions) -> Dataset:
    """Closes the writer after checking that every `modality_of` key named an imported type."""
    unused = sorted(set(options.modality_of) - {t.name for t in writer.cell_types})
    if unused:
        raise ValueError(f"modality_of names cell types that were not imported: {unused}")
    return writer.close()


def add_type(writer: DatasetWriter, cell_type: str, options: ImportOptions) -> None:
    writer.add_cell_type(cell_type, options.modality_of.get(cell_type, options.modality))


def read_labels(path: Path) -> np.ndarray:
    """A label file as (H, W) int64, checked (see percs.data.io.to_label_image)."""
    return to_label_image(read_label_file(path), path)


def prepare_image(path: Path, labels_shape: tuple[int, ...], labels_path: Path) -> tuple[np.ndarray, Path | None]:
    """The image as the format stores it, and `path` when the file can be copied byte for byte (else None)."""
    image = read_image(path)
    verbatim = True
    if image.ndim == 3 and image.shape[:2] != labels_shape and image.shape[1:] == labels_shape:
        image, verbatim = np.moveaxis(image, 0, -1), False
    if image.ndim == 3 and image.shape[2] == 1:
        image, verbatim = image[..., 0], False
    if image.ndim not in (2, 3):
        raise DataFileError(path, f"image has shape {image.shape}; percs takes (H, W) or (H, W, C) images, "
                                  "extract one plane of the stack first")
    if image.shape[:2] != labels_shape:
        raise DataFileError(path, f"image is {image.shape[:2]} but its labels {labels_path} are {labels_shape}")
    if image.dtype not in IMAGE_DTYPES:
        image, verbatim = image.astype(np.float32), False
    return np.ascontiguousarray(image), path if verbatim else None


def add_pair(writer: DatasetWriter, name: str, image_path: Path, labels_path: Path, labels: np.ndarray,
             instance_types: Mapping[int, str], split: str | None) -> None:
    """Writes one image with its labels, or lists it in meta["skipped"] when it has no instance."""
    if not labels.any():
        writer.meta["skipped"].append({"image": str(image_path), "labels": str(labels_path), "reason": "no instances"})
        return
    image, source = prepare_image(image_path, labels.shape, labels_path)
    meta: dict[str, Any] = {"source_image": str(image_path), "source_labels": str(labels_path)}
    writer.add_image(name, image, labels, instance_types, split, meta, source)


def split_folders(root: Path) -> list[tuple[str | None, Path]]:
    """[(split, folder)]: subfolders named train / val / valid / validation / test (any case), else [(None, root)]."""
    if not root.is_dir():
        raise DataFileError(root, "is not a folder")
    found = [(SPLIT_FOLDERS[d.name.lower()], d) for d in sorted(root.iterdir())
             if d.is_dir() and d.name.lower() in SPLIT_FOLDERS]
    return found or [(None, root)]


def find_partner(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first existing `folder/stem<suffix>` over suffixes in order (either case)."""
    for suffix in suffixes:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def files_with(folder: Path, suffixes: tuple[str, ...], ending: str = "") -> list[Path]:
    """Files of `folder` (not recursive) with one of `suffixes` whose stem ends with `ending`, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and p.stem.endswith(ending))


def join_name(*parts: str | None) -> str:
    return "/".join(p for p in parts if p)


def import_cellpose(root: Path | str, out: Path | str, options: ImportOptions = ImportOptions(),
                    type_name: str | None = None, img_filter: str = "_img", mask_filter: str = "_masks") -> Dataset:
    """Imports Cellpose-style folders: `ROOT[/split]/<type>/<n>_img.<ext>` with `<n>_masks.<ext>`.

    A folder holding the images directly (no type subfolders) needs `type_name`. Split subfolders
    (train / val / test) give the split; otherwise images have none. An image without masks is an error.
    """
    root = Path(root)
    folders = [(split, folder, _cellpose_type_folders(folder, type_name, img_filter))
               for split, folder in split_folders(root)]
    with open_writer(out, options, "cellpose", root) as writer:
        for split, folder, type_folders in folders:
            for cell_type, type_folder in type_folders:
                add_type(writer, cell_type, options)
                for image_path in files_with(type_folder, IMAGE_SUFFIXES, img_filter):
                    stem = image_path.stem[: len(image_path.stem) - len(img_filter)]
                    name = join_name(split, type_folder.name if type_folder != folder else None, stem)
                    _add_cellpose_pair(writer, name, image_path, stem + mask_filter, cell_type, split)
        return finish(writer, options)


def _add_cellpose_pair(writer, name, image_path: Path, mask_stem: str, cell_type: str, split: str | None) -> None:
    labels_path = find_partner(image_path.parent, mask_stem, LABEL_SUFFIXES)
    if labels_path is None:
        raise DataFileError(image_path, f"no masks file {mask_stem}.<png|tif|npy> next to it")
    labels = read_labels(labels_path)
    ids = np.unique(labels)
    add_pair(writer, name, image_path, labels_path, labels, {int(i): cell_type for i in ids[ids > 0]}, split)


def _cellpose_type_folders(folder: Path, type_name: str | None, img_filter: str) -> list[tuple[str, Path]]:
    if files_with(folder, IMAGE_SUFFIXES, img_filter):
        if type_name is None:
            raise DataFileError(folder, f"holds *{img_filter} images directly; name their cell type (type_name)")
        return [(type_name, folder)]
    if type_name is not None:
        raise DataFileError(folder, "has one subfolder per cell type; type_name is for a folder of images")
    found = [(d.name, d) for d in sorted(folder.iterdir()) if d.is_dir() and files_with(d, IMAGE_SUFFIXES, img_filter)]
    if not found:
        raise DataFileError(folder, f"has no *{img_filter} images, neither directly nor in subfolders")
    return found


def import_folder(images_dir: Path | str, masks_dir: Path | str, out: Path | str, types: str | Mapping[str, str],
                  options: ImportOptions = ImportOptions(), mask_suffix: str = "", split: str | None = None
                  ) -> Dataset:
    """Imports an image folder and a mask folder matched by name: image `<n>.<ext>`, masks `<n><mask_suffix>.<ext>`.

    types: one cell type for every image, or image name (stem) -> type (see `read_image_types`). An image
    without masks, a mask without image and an image missing from the table are errors.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataFileError(folder, "is not a folder")
    image_paths = files_with(images_dir, IMAGE_SUFFIXES)
    stems = {p.stem for p in image_paths}
    for mask_path in files_with(masks_dir, LABEL_SUFFIXES, mask_suffix):
        if mask_path.stem[: len(mask_path.stem) - len(mask_suffix)] not in stems:
            raise DataFileError(mask_path, f"has no image of the same name in {images_dir}")
    with open_writer(out, options, "folder", images_dir) as writer:
        for t in sorted({types} if isinstance(types, str) else {types[s] for s in stems if s in types}):
            add_type(writer, t, options)
        for image_path in image_paths:
            labels_path = find_partner(masks_dir, image_path.stem + mask_suffix, LABEL_SUFFIXES)
            if labels_path is None:
                raise DataFileError(image_path, f"no masks file {image_path.stem}{mask_suffix}.<ext> in {masks_dir}")
            cell_type = types if isinstance(types, str) else types.get(image_path.stem)
            if cell_type is None:
                raise DataFileError(image_path, "is not in the cell-type table")
            labels = read_labels(labels_path)
            ids = np.unique(labels)
            add_pair(writer, join_name(split, image_path.stem), image_path, labels_path, labels,
                     {int(i): cell_type for i in ids[ids > 0]}, split)
        return finish(writer, options)


@dataclass(frozen=True)
class TypemapLayout:
    """Folder names under ROOT[/split] of `import_typemap` (defaults: the CoNSeP layout in ../shared/data)."""

    images: str = "images"
    instances: str = "inst"
    type_maps: str = "typemap"


def import_typemap(root: Path | str, out: Path | str, options: ImportOptions = ImportOptions(),
                   class_names: Mapping[int, str] | None = None,
                   instance_classes: Mapping[str, Mapping[int, int | str]] | None = None,
                   layout: TypemapLayout = TypemapLayout()) -> Dataset:
    """Imports instance maps with per-nucleus classes: `ROOT[/split]/<images>/<n>.<ext>` + `<instances>/<n>.<ext>`.

    Each instance's class comes from, in this order: `instance_classes` (image stem -> {label: class}, see
    `read_instance_classes`); the `type_map` array of a HoVer-Net .mat instance file; the per-pixel type map
    `<type_maps>/<n>.<ext>`. From a type map the class is the most frequent non-zero class under the instance
    (ties: the smaller class id); an instance with no classed pixel, or missing from the table, is an error.
    class_names: class id -> type name (several ids may share a name, merging them; ids not listed are an
    error); without it, the type is the class id as text. Type names in a table are used as they are.
    """
    root = Path(root)
    folders = split_folders(root)
    for _, folder in folders:
        if not (folder / layout.images).is_dir() or not (folder / layout.instances).is_dir():
            raise DataFileError(folder, f"needs the folders {layout.images}/ and {layout.instances}/")
    with open_writer(out, options, "typemap", root) as writer:
        for name in dict.fromkeys((class_names or {}).values()):
            add_type(writer, name, options)
        for split, folder in folders:
            for image_path in files_with(folder / layout.images, IMAGE_SUFFIXES):
                labels_path = find_partner(folder / layout.instances, image_path.stem, LABEL_SUFFIXES)
                if labels_path is None:
                    raise DataFileError(image_path, f"no instance map {image_path.stem}.<ext> in {layout.instances}/")
                labels, classes = _typemap_classes(image_path.stem, labels_path, folder / layout.type_maps,
                                                   instance_classes)
                types = {label: _class_name(c, class_names, labels_path, label) for label, c in classes.items()}
                for t in dict.fromkeys(types.values()):
                    add_type(writer, t, options)
                add_pair(writer, join_name(split, image_path.stem), image_path, labels_path, labels, types, split)
        return finish(writer, options)


def _typemap_classes(stem: str, labels_path: Path, type_maps_dir: Path,
                     table: Mapping[str, Mapping[int, int | str]] | None) -> tuple[np.ndarray, dict[int, int | str]]:
    mat = read_mat(labels_path) if labels_path.suffix.lower() == ".mat" else None
    if mat is not None and "inst_map" not in mat:
        raise DataFileError(labels_path, "has no array 'inst_map'")
    labels = to_label_image(mat["inst_map"] if mat is not None else read_label_file(labels_path), labels_path)
    ids = [int(i) for i in np.unique(labels) if i > 0]
    if table is not None:
        known = table.get(stem, {})
        missing = [i for i in ids if i not in known]
        if missing:
            raise DataFileError(labels_path, f"instances {missing[:10]} have no class in the instance table")
        return labels, {i: known[i] for i in ids}
    if mat is not None and "type_map" in mat:
        type_map, type_path = to_label_image(mat["type_map"], labels_path), labels_path
    else:
        type_path = find_partner(type_maps_dir, stem, LABEL_SUFFIXES)
        if type_path is None:
            raise DataFileError(labels_path, f"no type map {stem}.<ext> in {type_maps_dir} and no class table")
        type_map = to_label_image(read_label_file(type_path), type_path)
    if type_map.shape != labels.shape:
        raise DataFileError(type_path, f"type map is {type_map.shape} but instance map {labels_path} is {labels.shape}")
    return labels, majority_classes(labels, type_map, type_path)


def majority_classes(labels: np.ndarray, type_map: np.ndarray, where: Path) -> dict[int, int]:
    """label -> most frequent non-zero class of `type_map` under it (ties: smaller class); every instance needs one."""
    inside = (labels > 0) & (type_map > 0)
    pairs, counts = np.unique(np.stack([labels[inside], type_map[inside]]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))  # by label, then count descending, then class
    pairs = pairs[:, order]
    first = np.r_[True, pairs[0, 1:] != pairs[0, :-1]] if pairs.size else np.zeros(0, bool)
    classes = {int(label): int(c) for label, c in zip(pairs[0, first], pairs[1, first])}
    untyped = sorted(set(np.unique(labels[labels > 0]).tolist()) - set(classes))
    if untyped:
        raise DataFileError(where, f"instances {untyped[:10]} cover no pixel of a non-zero class")
    return classes


def _class_name(value: int | str, class_names: Mapping[int, str] | None, where: Path, label: int) -> str:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return value
    if class_names is None:
        return str(int(value))
    if int(value) not in class_names:
        raise DataFileError(where, f"instance {label} has class {int(value)}, which class_names does not name")
    return class_names[int(value)]
