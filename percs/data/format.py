"""The percs dataset format: a folder with `manifest.json`, image files and int32 label TIFFs.

See docs/dataset_format.md for the layout and every field. In short:

    DIR/manifest.json            format version, name, cell-type vocabulary (with modality group), images, queries,
                                 sha256 of every file it names
    DIR/images/<name>.<ext>      the image, in its source encoding where possible (PNG, JPEG or TIFF)
    DIR/labels/<name>.tif        int32 instance labels, 0 background, 1..N in raster order of each first pixel

`DatasetWriter` is the only code that writes a dataset; `load_dataset` reads one and verifies the checksums.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import fastremap
import numpy as np

from percs.data.io import png_encodable, read_image, read_label_file, sha256, write_png, write_tiff

FORMAT = "percs-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test", "novel")
EVAL_SPLITS = ("val", "test", "novel")
QUERY_ORIGINS = ("native", "pasted")
IMAGE_DTYPES = (np.uint8, np.uint16, np.float32)


class DatasetError(ValueError):
    """A dataset folder or manifest that is inconsistent; the message starts with the file at fault."""


class DataWarning(UserWarning):
    """Something an import or build guessed or did that its user should know (`percs data` prints these)."""


@dataclass(frozen=True)
class CellType:
    """One entry of a dataset's vocabulary; cells are pasted only between types of one modality group."""

    name: str
    modality: str


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    image, labels: paths relative to the dataset folder (POSIX). shape: (H, W). channels: 1 for (H, W) images.
    split: one of SPLITS, or None until `percs data build` assigns one.
    instance_types: the cell type of label i + 1 at index i (labels are 1..N, so this is the label -> type map).
    meta: provenance from the importer (source file, fold, tissue, ...), free-form JSON.
    """

    name: str
    image: str
    labels: str
    shape: tuple[int, int]
    channels: int
    split: str | None
    instance_types: tuple[str, ...] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_instances(self) -> int:
        return len(self.instance_types)

    def type_of(self, label: int) -> str:
        """The cell type of instance `label` (1..N)."""
        if not 1 <= label <= self.n_instances:
            raise ValueError(f"label {label} is not an instance of image {self.name!r} (1..{self.n_instances})")
        return self.instance_types[label - 1]

    def labels_of_type(self, cell_type: str) -> list[int]:
        """The instance labels (1..N) of one cell type, ascending."""
        return [i + 1 for i, t in enumerate(self.instance_types) if t == cell_type]


@dataclass(frozen=True)
class Query:
    """A fixed evaluation query: segment every `target_type` cell of `image`, given one reference cell.

    reference_label is an instance of reference_image (which may be `image` itself) of type target_type.
    origin: "native" when the target type is the image's own, "pasted" when its cells were pasted in.
    """

    image: str
    target_type: str
    reference_image: str
    reference_label: int
    origin: str = "native"


@dataclass(frozen=True)
class Dataset:
    """A loaded (or just written) dataset; `root` is its folder."""

    name: str
    cell_types: tuple[CellType, ...]
    images: tuple[ImageRecord, ...]
    queries: tuple[Query, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    def modality_of(self, cell_type: str) -> str:
        for t in self.cell_types:
            if t.name == cell_type:
                return t.modality
        raise KeyError(f"cell type {cell_type!r} is not in the vocabulary of dataset {self.name!r}")

    def record(self, name: str) -> ImageRecord:
        for r in self.images:
            if r.name == name:
                return r
        raise KeyError(f"image {name!r} is not in dataset {self.name!r}")

    def in_split(self, split: str | None) -> list[ImageRecord]:
        return [r for r in self.images if r.split == split]

    def read_image(self, record: ImageRecord) -> np.ndarray:
        """The pixels, (H, W) or (H, W, C), in the stored dtype (uint8, uint16 or float32)."""
        return read_image(self._path(record.image))

    def read_labels(self, record: ImageRecord) -> np.ndarray:
        """(H, W) int32 instance labels 1..N, 0 background."""
        labels = read_label_file(self._path(record.labels)).astype(np.int32, copy=False)
        if labels.shape != record.shape:
            raise DatasetError(f"{self._path(record.labels)}: labels are {labels.shape}, manifest says {record.shape}")
        return labels

    def _path(self, relative: str) -> Path:
        if self.root is None:
            raise ValueError(f"dataset {self.name!r} has no folder (root is None)")
        return self.root / relative


def canonical_labels(labels: np.ndarray, instance_types: Mapping[int, str], where: str):
    """Labels renumbered 1..N in raster order of each first pixel, with their types carried along.

    labels: (H, W) non-negative integers, any ids. instance_types: type of every non-zero id in labels (extra
    keys are ignored). Returns ((H, W) int32, tuple of N type names). `where` names the image in errors.
    """
    renumbered, remap = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    types = [""] * (len(remap) - (0 in remap))
    for old, new in remap.items():
        if old == 0:
            continue
        if int(old) not in instance_types:
            raise DatasetError(f"{where}: label {int(old)} has no cell type")
        types[int(new) - 1] = instance_types[int(old)]
    return renumbered.astype(np.int32, copy=False), tuple(types)


def _check_relative(path: str, where: str) -> None:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DatasetError(f"{where}: path {path!r} must be relative to the dataset folder, without '..'")


class DatasetWriter:
    """Writes a dataset folder: images and labels as they are added, the manifest on `close()`.

    The folder must not exist or be empty. Used as a context manager, an error inside the `with` block
    removes what the writer wrote (and the folder, if the writer made it); a writer that is never closed
    leaves no manifest, so its folder cannot be loaded.
    """

    def __init__(self, out_dir: Path | str, name: str, meta: Mapping[str, Any] | None = None):
        self.root = Path(out_dir)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise DatasetError(f"{self.root}: output folder exists and is not empty")
        self._made_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.meta = dict(meta or {})
        self._types: dict[str, CellType] = {}
        self._images: dict[str, ImageRecord] = {}
        self._queries: list[Query] = []
        self._files: dict[str, str] = {}
        self.dataset: Dataset | None = None

    @property
    def cell_types(self) -> tuple[CellType, ...]:
        """The vocabulary so far, in the order types were added."""
        return tuple(self._types.values())

    def add_cell_type(self, name: str, modality: str) -> None:
        """Adds a type to the vocabulary (again with the same modality: no-op)."""
        if not name or not modality:
            raise DatasetError(f"{self.root}: cell type and modality must be non-empty (got {name!r}, {modality!r})")
        known = self._types.get(name)
        if known is not None and known.modality != modality:
            raise DatasetError(f"{self.root}: cell type {name!r} has modality {known.modality!r}, not {modality!r}")
        self._types[name] = CellType(name, modality)

    def add_image(self, name: str, image: np.ndarray, labels: np.ndarray, instance_types: Mapping[int, str],
                  split: str | None = None, meta: Mapping[str, Any] | None = None,
                  source: Path | None = None) -> ImageRecord:
        """Writes one image and its labels; returns its record.

        image: (H, W) or (H, W, C) of uint8, uint16 or float32 ((H, W, 1) is stored as (H, W)).
        labels: (H, W) non-negative integers with any ids; they are renumbered 1..N (raster order) and
        instance_types (id -> type) follows them. source: a PNG, JPEG or TIFF file that decodes to `image`;
        it is copied byte for byte instead of re-encoding `image`.
        """
        where = f"{self.root}: image {name!r}"
        if not isinstance(image, np.ndarray) or not isinstance(labels, np.ndarray):
            raise TypeError(f"{where}: image and labels must be NumPy arrays")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        self._check_new_image(name, image, labels, split, where)
        labels, types = canonical_labels(labels, instance_types, where)
        for t in set(types):
            if t not in self._types:
                raise DatasetError(f"{where}: cell type {t!r} is not in the vocabulary (add_cell_type first)")
        if source is not None:
            image_rel = f"images/{name}{source.suffix.lower()}"
            self._target(image_rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self._target(image_rel))
        else:
            image_rel = f"images/{name}" + (".png" if png_encodable(image) else ".tif")
            self._target(image_rel).parent.mkdir(parents=True, exist_ok=True)
            (write_png if image_rel.endswith(".png") else write_tiff)(self._target(image_rel), image)
        labels_rel = f"labels/{name}.tif"
        self._target(labels_rel).parent.mkdir(parents=True, exist_ok=True)
        write_tiff(self._target(labels_rel), labels)
        for rel in (image_rel, labels_rel):
            self._files[rel] = sha256(self._target(rel))
        channels = 1 if image.ndim == 2 else int(image.shape[2])
        record = ImageRecord(name, image_rel, labels_rel, tuple(labels.shape), channels, split, types, dict(meta or {}))
        self._images[name] = record
        return record

    def add_query(self, query: Query) -> None:
        self._queries.append(query)

    def close(self) -> Dataset:
        """Checks the whole dataset and writes the manifest; returns the dataset (closing twice: no-op)."""
        if self.dataset is not None:
            return self.dataset
        dataset = Dataset(self.name, tuple(self._types.values()), tuple(self._images.values()),
                          tuple(self._queries), self.meta, self.root)
        validate(dataset, self.root / MANIFEST)
        manifest = to_manifest(dataset, self._files)
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        self.dataset = dataset
        return dataset

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def discard(self) -> None:
        """Removes everything written so far (the folder was empty when the writer started)."""
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for child in self.root.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def _target(self, relative: str) -> Path:
        return self.root / relative

    def _check_new_image(self, name, image, labels, split, where) -> None:
        _check_relative(name, where)
        if name in self._images:
            raise DatasetError(f"{where}: an image of this name was already added")
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {SPLITS}")
        if image.ndim not in (2, 3) or image.dtype not in IMAGE_DTYPES:
            raise DatasetError(f"{where}: image is {image.dtype} with {image.ndim} dims, expected (H, W) or "
                               "(H, W, C) of uint8, uint16 or float32")
        if labels.shape != image.shape[:2]:
            raise DatasetError(f"{where}: labels have shape {labels.shape}, image {image.shape[:2]}")
        if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
            raise DatasetError(f"{where}: labels must be non-negative integers (got {labels.dtype})")


def write_dataset(out_dir: Path | str, name: str, cell_types: Iterable[CellType], samples: Iterable[Mapping],
                  queries: Iterable[Query] = (), meta: Mapping[str, Any] | None = None) -> Dataset:
    """Writes a whole dataset at once: each sample is a dict of `DatasetWriter.add_image` keyword arguments."""
    with DatasetWriter(out_dir, name, meta) as writer:
        for t in cell_types:
            writer.add_cell_type(t.name, t.modality)
        for sample in samples:
            writer.add_image(**sample)
        for q in queries:
            writer.add_query(q)
        return writer.close()


def validate(dataset: Dataset, manifest_path: Path) -> None:
    """Raises DatasetError (naming the manifest) if names, types, splits or queries are inconsistent."""
    where = str(manifest_path)
    vocabulary = {t.name for t in dataset.cell_types}
    if len(vocabulary) != len(dataset.cell_types):
        raise DatasetError(f"{where}: cell type names repeat in the vocabulary")
    names = {r.name for r in dataset.images}
    if len(names) != len(dataset.images):
        raise DatasetError(f"{where}: image names repeat")
    for r in dataset.images:
        if r.split is not None and r.split not in SPLITS:
            raise DatasetError(f"{where}: image {r.name!r} has split {r.split!r}, expected one of {SPLITS}")
        unknown = set(r.instance_types) - vocabulary
        if unknown:
            raise DatasetError(f"{where}: image {r.name!r} has cell types {sorted(unknown)} not in the vocabulary")
    records = {r.name: r for r in dataset.images}
    for i, q in enumerate(dataset.queries):
        _validate_query(i, q, records, vocabulary, where)


def _validate_query(i: int, q: Query, records: Mapping[str, ImageRecord], vocabulary: set, where: str) -> None:
    what = f"{where}: query {i}"
    if q.image not in records or q.reference_image not in records:
        raise DatasetError(f"{what} names an image that is not in the dataset ({q.image!r}, {q.reference_image!r})")
    if records[q.image].split not in EVAL_SPLITS:
        raise DatasetError(f"{what}: image {q.image!r} is in split {records[q.image].split!r}, "
                           f"queries are for {EVAL_SPLITS}")
    if q.target_type not in vocabulary:
        raise DatasetError(f"{what}: target type {q.target_type!r} is not in the vocabulary")
    if q.origin not in QUERY_ORIGINS:
        raise DatasetError(f"{what}: origin {q.origin!r} is not one of {QUERY_ORIGINS}")
    reference = records[q.reference_image]
    if not 1 <= q.reference_label <= reference.n_instances:
        raise DatasetError(f"{what}: reference label {q.reference_label} is not an instance of {reference.name!r}")
    if reference.type_of(q.reference_label) != q.target_type:
        raise DatasetError(f"{what}: reference cell is of type {reference.type_of(q.reference_label)!r}, "
                           f"target type is {q.target_type!r}")


def to_manifest(dataset: Dataset, files: Mapping[str, str]) -> dict[str, Any]:
    """The manifest's JSON object; instance types are stored as indices into the cell-type list."""
    index = {t.name: i for i, t in enumerate(dataset.cell_types)}
    images = [{"name": r.name, "image": r.image, "labels": r.labels, "shape": list(r.shape), "channels": r.channels,
               "split": r.split, "instance_types": [index[t] for t in r.instance_types], "meta": r.meta}
              for r in dataset.images]
    return {"format": FORMAT, "version": FORMAT_VERSION, "name": dataset.name, "meta": dataset.meta,
            "cell_types": [{"name": t.name, "modality": t.modality} for t in dataset.cell_types],
            "images": images, "queries": [vars(q) for q in dataset.queries], "files": dict(files)}


def load_dataset(root: Path | str, verify: bool = True) -> Dataset:
    """Reads a dataset folder; with `verify`, checks every file against the manifest's sha256.

    Raises DatasetError naming the manifest (malformed, inconsistent) or the file (missing, changed).
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: no manifest (is {root} a percs dataset folder?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: format version {manifest.get('version')!r}, this percs reads {FORMAT_VERSION}")
    try:
        dataset, files = _from_manifest(manifest, root)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise DatasetError(f"{path}: malformed manifest ({type(error).__name__}: {error})") from error
    for r in dataset.images:
        for rel in (r.image, r.labels):
            _check_relative(rel, str(path))
            if rel not in files:
                raise DatasetError(f"{path}: file {rel!r} of image {r.name!r} has no checksum")
    validate(dataset, path)
    if verify:
        verify_files(root, files)
    return dataset


def verify_files(root: Path, files: Mapping[str, str]) -> None:
    """Raises DatasetError naming the first file that is missing or whose sha256 differs."""
    for rel, expected in files.items():
        _check_relative(rel, str(root / MANIFEST))
        target = root / rel
        if not target.is_file():
            raise DatasetError(f"{target}: file named in the manifest is missing")
        actual = sha256(target)
        if actual != expected:
            raise DatasetError(f"{target}: sha256 {actual} differs from the manifest's {expected} "
                               "(the file was changed or is corrupt)")


def _from_manifest(manifest: Mapping[str, Any], root: Path) -> tuple[Dataset, dict[str, str]]:
    cell_types = tuple(CellType(str(t["name"]), str(t["modality"])) for t in manifest["cell_types"])
    images = []
    for r in manifest["images"]:
        type_ids = [int(i) for i in r["instance_types"]]
        if any(i < 0 for i in type_ids):
            raise ValueError(f"image {r['name']!r} has a negative cell-type index")
        H, W = (int(n) for n in r["shape"])
        images.append(ImageRecord(str(r["name"]), str(r["image"]), str(r["labels"]), (H, W), int(r["channels"]),
                                  r["split"], tuple(cell_types[i].name for i in type_ids), dict(r.get("meta", {}))))
    queries = tuple(Query(str(q["image"]), str(q["target_type"]), str(q["reference_image"]),
                          int(q["reference_label"]), str(q.get("origin", "native"))) for q in manifest["queries"])
    files = {str(k): str(v) for k, v in manifest["files"].items()}
    dataset = Dataset(str(manifest["name"]), cell_types, tuple(images), queries, dict(manifest.get("meta", {})), root)
    return dataset, files
