"""Cell-type tables that importers take: per image (folder importer) or per instance (typemap importer).

Both read CSV (with a header row) or JSON. Image names are matched by stem: a name given with an image suffix
(`a.png`) or a folder (`images/a.png`) matches the image file `a.<ext>`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath
from typing import Any

from percs.data.io import IMAGE_SUFFIXES, DataFileError


def image_stem(name: str) -> str:
    path = PurePosixPath(str(name).replace("\\", "/"))
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def _read_rows(path: Path) -> Any:
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text())
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise DataFileError(path, f"cannot read table ({type(error).__name__}: {error})") from error


def _column(row: dict, key: str, path: Path) -> str:
    if key not in row:
        raise DataFileError(path, f"has no column {key!r} (columns: {sorted(row)})")
    return str(row[key])


def read_image_types(path: Path | str, name_column: str = "image", type_column: str = "type") -> dict[str, str]:
    """image stem -> cell type, from a CSV with `name_column` and `type_column`, a JSON list of objects with
    those keys (such as dsb2018_stage1_test/index.json with id / group), or a JSON object {image: type}."""
    path = Path(path)
    rows = _read_rows(path)
    if isinstance(rows, dict):
        rows = [{name_column: k, type_column: v} for k, v in rows.items()]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(path, "expected a list of records or an object {image: type}")
    types: dict[str, str] = {}
    for row in rows:
        stem, cell_type = image_stem(_column(row, name_column, path)), _column(row, type_column, path)
        if not cell_type:
            raise DataFileError(path, f"image {stem!r} has an empty cell type")
        if types.setdefault(stem, cell_type) != cell_type:
            raise DataFileError(path, f"image {stem!r} is given two cell types ({types[stem]!r}, {cell_type!r})")
    return types


def read_type_modalities(path: Path | str, type_column: str = "type", modality_column: str = "modality"
                         ) -> dict[str, str]:
    """cell type -> modality group, from the rows of a per-image table (CSV, or a JSON list of objects) that also
    has `modality_column`: every row of a type must give it the same non-empty group."""
    path = Path(path)
    rows = _read_rows(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(path, f"a modality column ({modality_column!r}) needs a CSV or a JSON list of records")
    modalities: dict[str, str] = {}
    for row in rows:
        cell_type, modality = _column(row, type_column, path), _column(row, modality_column, path).strip()
        if not modality:
            raise DataFileError(path, f"cell type {cell_type!r} has an empty {modality_column!r}")
        if modalities.setdefault(cell_type, modality) != modality:
            raise DataFileError(path, f"cell type {cell_type!r} is given two modality groups "
                                      f"({modalities[cell_type]!r}, {modality!r})")
    return modalities


def _class_value(value: Any) -> int | str:
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def read_instance_classes(path: Path | str) -> dict[str, dict[int, int | str]]:
    """image stem -> {instance label: class}, from a CSV with columns image, label, type or a JSON object
    {image: {label: class}}. A class is an integer id (named by the importer's class_names) or a type name."""
    path = Path(path)
    rows = _read_rows(path)
    if isinstance(rows, dict):
        rows = [{"image": image, "label": label, "type": c}
                for image, classes in rows.items() if isinstance(classes, dict) for label, c in classes.items()]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(path, "expected CSV rows (image, label, type) or a JSON object {image: {label: class}}")
    table: dict[str, dict[int, int | str]] = {}
    for row in rows:
        stem, label = image_stem(_column(row, "image", path)), _column(row, "label", path)
        if not label.isdigit() or int(label) == 0:
            raise DataFileError(path, f"image {stem!r} has instance label {label!r}, expected a positive integer")
        table.setdefault(stem, {})[int(label)] = _class_value(_column(row, "type", path))
    return table
