"""Importers from the layouts this field uses into the percs dataset format.

- `import_cellpose`: `<name>_img.<ext>` / `<name>_masks.<ext>` pairs, one cell type per folder;
- `import_folder`: an image folder and a mask folder matched by name, one type for all or a per-image table;
- `import_typemap`: instance maps with per-nucleus classes from per-pixel type maps or a per-instance table
  (HoVer-Net / CoNSeP style, .mat files included);
- `import_pannuke` (percs.data.pannuke): the PanNuke fold layout.

Choices shared by all (docs/dataset_format.md lists them; percs.data.importing applies the options): labels
are renumbered 1..N in raster order with their types carried along; images whose labels hold no instance are
skipped (or kept as negative images with `keep_empty`); everything not imported is listed with its reason in
the manifest's meta["skipped"]; an image and its labels of different sizes, an image without labels, a file
that cannot be decoded, a label image that is a stack, a binary mask, colour or negative: errors naming the
file. Stacks and multichannel images are reduced to (H, W) or (H, W, C) by percs.data.stacks (axes from TIFF
metadata, else guessed with a warning). Images are copied byte for byte when they decode to (H, W) or
(H, W, C) uint8 / uint16 / float32 and are kept whole; otherwise they are converted (other dtypes to float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from percs.data.format import Dataset
from percs.data.importing import ImportOptions, ImportWriter
from percs.data.io import IMAGE_SUFFIXES, LABEL_SUFFIXES, DataFileError, read_label_file, read_mat, to_label_image
from percs.data.tables import read_image_types, read_instance_classes, read_type_modalities

__all__ = ["ImportOptions", "TypemapLayout", "import_cellpose", "import_folder", "import_typemap",
           "read_image_types", "read_instance_classes", "read_type_modalities"]

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_labels(path: Path) -> np.ndarray:
    """A label file as (H, W) int64, checked (see percs.data.io.to_label_image)."""
    return to_label_image(read_label_file(path), path)


def split_folders(root: Path) -> list[tuple[str | None, Path]]:
    """[(split, folder)]: subfolders named train / val / valid / validation / test (any case), else [(None, root)]."""
    if not root.is_dir():
        raise DataFileError(root, "is not a folder")
    found = [(SPLIT_FOLDERS[d.name.lower()], d) for d in sorted(root.iterdir())
             if d.is_dir() and d.name.lower() in SPLIT_FOLDERS]
    return found or [(None, root)]


def skip_other_folders(writer: ImportWriter, root: Path, folders: list[tuple[str | None, Path]]) -> None:
    """Lists the subfolders of `root` beside its split folders, which are not searched."""
    if folders[0][0] is None:
        return
    used = {folder for _, folder in folders}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d not in used:
            writer.skip("not a split folder", folder=str(d))


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


def instance_types(labels: np.ndarray, cell_type: str) -> dict[int, str]:
    """Every instance id of `labels` -> the one cell type."""
    ids = np.unique(labels)
    return {int(i): cell_type for i in ids[ids > 0]}


def import_cellpose(root: Path | str, out: Path | str, options: ImportOptions = ImportOptions(),
                    type_name: str | None = None, img_filter: str = "_img", mask_filter: str = "_masks") -> Dataset:
    """Imports Cellpose-style folders: `ROOT[/split]/<type>/<n>_img.<ext>` with `<n>_masks.<ext>`.

    A folder holding the images directly (no type subfolders) needs `type_name`. Split subfolders
    (train / val / test) give the split; otherwise images have none. An image without masks is an error.
    Images are named `[split/]<type>/<n>` with the type's name in the dataset (after options.rename).
    """
    root = Path(root)
    folders = split_folders(root)
    type_folders = [(split, folder, _cellpose_type_folders(folder, type_name, img_filter)) for split, folder in folders]
    with ImportWriter(out, options, "cellpose", root) as writer:
        skip_other_folders(writer, root, folders)
        for split, folder, found in type_folders:
            if type_name is None:
                for d in sorted(set(d for d in folder.iterdir() if d.is_dir()) - {d for _, d in found}):
                    writer.skip("no images", folder=str(d))
            for source_type, type_folder in found:
                where = "type_name (--type)" if type_folder == folder else f"folder {type_folder}"
                cell_type = writer.add_type(source_type, where)
                used: set[Path] = set()
                for image_path in files_with(type_folder, IMAGE_SUFFIXES, img_filter):
                    stem = image_path.stem[: len(image_path.stem) - len(img_filter)]
                    name = join_name(split, cell_type if type_folder != folder else None, stem)
                    used |= _add_cellpose_pair(writer, name, image_path, stem + mask_filter, cell_type, split)
                writer.skip_unused(type_folder, used)
        return writer.close()


def _add_cellpose_pair(writer: ImportWriter, name, image_path: Path, mask_stem: str, cell_type: str,
                       split: str | None) -> set[Path]:
    labels_path = find_partner(image_path.parent, mask_stem, LABEL_SUFFIXES)
    if labels_path is None:
        raise DataFileError(image_path, f"no masks file {mask_stem}.<png|tif|npy> next to it")
    labels = read_labels(labels_path)
    writer.add_pair(name, image_path, labels_path, labels, instance_types(labels, cell_type), split)
    return {image_path, labels_path}


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

    types: one cell type for every image, or image name (stem) -> type (see `read_image_types`; entries naming
    no image are listed as skipped). An image without masks, a mask without image and an image missing from
    the table are errors.
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
    with ImportWriter(out, options, "folder", images_dir) as writer:
        source_types = {types} if isinstance(types, str) else {types[s] for s in stems if s in types}
        where = "type (--type)" if isinstance(types, str) else "cell-type table (--type-table)"
        names = {t: writer.add_type(t, where) for t in sorted(source_types)}
        used: set[Path] = set()
        for image_path in image_paths:
            labels_path = find_partner(masks_dir, image_path.stem + mask_suffix, LABEL_SUFFIXES)
            if labels_path is None:
                raise DataFileError(image_path, f"no masks file {image_path.stem}{mask_suffix}.<ext> in {masks_dir}")
            cell_type = types if isinstance(types, str) else types.get(image_path.stem)
            if cell_type is None:
                raise DataFileError(image_path, "is not in the cell-type table")
            labels = read_labels(labels_path)
            writer.add_pair(join_name(split, image_path.stem), image_path, labels_path, labels,
                            instance_types(labels, names[cell_type]), split)
            used |= {image_path, labels_path}
        for folder in dict.fromkeys((images_dir, masks_dir)):
            writer.skip_unused(folder, used)
        for stem in sorted(set() if isinstance(types, str) else set(types) - stems):
            writer.skip("table entry without image", image=stem)
        return writer.close()


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
    with ImportWriter(out, options, "typemap", root) as writer:
        skip_other_folders(writer, root, folders)
        for class_id, name in (class_names or {}).items():
            writer.add_type(name, f"class_names {class_id}={name}")
        imported: set[str] = set()
        for split, folder in folders:
            used = _typemap_folder(writer, split, folder, layout, class_names, instance_classes)
            imported |= {p.stem for p in used}
            for sub in (layout.images, layout.instances):
                writer.skip_unused(folder / sub, used)
        for stem in sorted(set(instance_classes or {}) - imported):
            writer.skip("table entry without image", image=stem)
        return writer.close()


def _typemap_folder(writer: ImportWriter, split: str | None, folder: Path, layout: TypemapLayout,
                    class_names: Mapping[int, str] | None, table: Mapping[str, Mapping[int, int | str]] | None
                    ) -> set[Path]:
    """Imports the images of one (split) folder; returns the image and instance files used."""
    used: set[Path] = set()
    for image_path in files_with(folder / layout.images, IMAGE_SUFFIXES):
        labels_path = find_partner(folder / layout.instances, image_path.stem, LABEL_SUFFIXES)
        if labels_path is None:
            raise DataFileError(image_path, f"no instance map {image_path.stem}.<ext> in {layout.instances}/")
        labels, classes = _typemap_classes(image_path.stem, labels_path, folder / layout.type_maps, table)
        types = {label: writer.add_type(_class_name(c, class_names, labels_path, label), str(labels_path))
                 for label, c in classes.items()}
        writer.add_pair(join_name(split, image_path.stem), image_path, labels_path, labels, types, split)
        used |= {image_path, labels_path}
    return used


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
