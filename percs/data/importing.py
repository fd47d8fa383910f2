"""What every importer shares: `ImportOptions`, and `ImportWriter`, the DatasetWriter that applies them and keeps
the import's report.

The writer renames and checks cell-type names, gives each type its modality group, reduces stacks to the
plane and channels asked for (percs.data.stacks), keeps or skips images without cells, records each image's
group, and lists in the manifest's meta what it skipped (`skipped`: one entry per image, file or folder, with
its `reason`) and what it guessed (`warnings`, also issued as `DataWarning`s when the dataset is closed).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from percs.data.format import IMAGE_DTYPES, Dataset, DatasetWriter, DataWarning
from percs.data.io import IMAGE_SUFFIXES, LABEL_SUFFIXES, read_image
from percs.data.stacks import StackOptions, select_stack

UNSPECIFIED = "unspecified"
TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
NO_INSTANCES = "no instances"


@dataclass(frozen=True)
class ImportOptions:
    """What every importer takes.

    name: the dataset name (default: the output folder's name). modality: the modality group of every cell
    type; type_modality (from a type table, keyed by the table's type names) and then modality_of (keyed by
    the dataset's type names, after renaming) override it per type; cells are only ever pasted between types
    of one group. rename: source type name -> dataset type name (several may share one, merging them).
    stack: the plane and channels kept of stacks (percs.data.stacks). keep_empty: keep images without cells
    as negative images instead of skipping them. group_pattern: a regex whose first group (or whole match) in
    an image's dataset name is its group (images of a group share a split; references come from another).
    """

    name: str | None = None
    modality: str = UNSPECIFIED
    modality_of: Mapping[str, str] = field(default_factory=dict)
    rename: Mapping[str, str] = field(default_factory=dict)
    type_modality: Mapping[str, str] = field(default_factory=dict)
    stack: StackOptions = field(default_factory=StackOptions)
    keep_empty: bool = False
    group_pattern: str | None = None

    def check(self) -> None:
        self.stack.check()
        for old, new in self.rename.items():
            check_type_name(new, f"rename {old!r}={new!r}", suggest=False)
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as error:
                raise ValueError(f"group_pattern {self.group_pattern!r} is not a regular expression ({error})"
                                 ) from None

    def as_meta(self) -> dict[str, Any]:
        """The options beyond the defaults of every import, for the manifest's meta."""
        meta = {"rename": dict(self.rename) or None, "group_pattern": self.group_pattern,
                "keep_empty": self.keep_empty or None, **self.stack.as_meta()}
        return {k: v for k, v in meta.items() if v is not None}


def suggest_type_name(name: str) -> str:
    """A usable type name close to `name`: runs of other characters become '_'."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_.+-") or "type"


def check_type_name(name: str, where: str, suggest: bool = True) -> None:
    """ValueError unless `name` is a usable cell-type name: letters, digits and _ . + -, starting with a letter or
    digit (type names are given on command lines in comma lists, KEY=VALUE pairs and tables)."""
    if TYPE_NAME.match(name):
        return
    hint = f"; rename it with --rename '{name}={suggest_type_name(name)}'" if suggest else ""
    raise ValueError(f"{where}: cell type {name!r} is not a usable type name (letters, digits and _ . + - only, "
                     f"starting with a letter or digit){hint}")


class ImportWriter(DatasetWriter):
    """A DatasetWriter for importers: applies ImportOptions and keeps the report (see the module docstring)."""

    def __init__(self, out: Path | str, options: ImportOptions, importer: str, source: Path | str):
        options.check()
        meta = {"importer": importer, "source": str(source), "skipped": [], **options.as_meta()}
        super().__init__(out, options.name or Path(out).resolve().name, meta)
        self.options = options
        self._names: dict[str, str] = {}
        self._notes: dict[str, list[str]] = {}
        self._planes = 0

    def add_type(self, source_name: str, where: str) -> str:
        """Adds the type named `source_name` in the source (renamed, checked); returns its name in the dataset."""
        if source_name not in self._names:
            name = self.options.rename.get(source_name, source_name)
            check_type_name(name, where)
            modality = self.options.modality_of.get(
                name, self.options.type_modality.get(source_name, self.options.modality))
            self.add_cell_type(name, modality)
            self._names[source_name] = name
        return self._names[source_name]

    def skip(self, reason: str, **detail: Any) -> None:
        """Lists something not imported in meta["skipped"], with its reason."""
        self.meta["skipped"].append({**detail, "reason": reason})

    def note(self, message: str, example: Path | str) -> None:
        """A warning for the report, given once with the number of images it concerns and an example."""
        self._notes.setdefault(message, []).append(str(example))

    def keeps(self, labels: np.ndarray, /, **detail: Any) -> bool:
        """Whether an image with these labels is imported; one without cells is skipped unless keep_empty."""
        if labels.any() or self.options.keep_empty:
            return True
        self.skip(NO_INSTANCES, **detail)
        return False

    def add_record(self, name: str, image: np.ndarray, labels: np.ndarray, types: Mapping[int, str],
                   split: str | None, meta: Mapping[str, Any], source: Path | None = None) -> None:
        """add_image, with the image's group in its meta when the options give a group pattern."""
        meta = dict(meta)
        if self.options.group_pattern is not None:
            match = re.search(self.options.group_pattern, name)
            if match is None:
                self.note("images match no group_pattern (--group-pattern): each is a group of its own", name)
            meta["group"] = name if match is None else (match.group(1) if match.groups() else match.group(0))
        self.add_image(name, image, labels, types, split, meta, source)

    def add_pair(self, name: str, image_path: Path, labels_path: Path, labels: np.ndarray,
                 types: Mapping[int, str], split: str | None) -> None:
        """Imports one image file with its (H, W) labels and instance types (id -> dataset type name)."""
        if not self.keeps(labels, image=str(image_path), labels=str(labels_path)):
            return
        image, source, selection = self.prepare_image(image_path, labels.shape, labels_path)
        meta = {"source_image": str(image_path), "source_labels": str(labels_path), **selection}
        self.add_record(name, image, labels, types, split, meta, source)

    def prepare_image(self, path: Path, labels_shape: tuple[int, ...], labels_path: Path):
        """(image as stored (H, W[, C]), `path` when the file can be copied byte for byte else None, what was
        taken of a stack for the image's meta)."""
        selected = select_stack(read_image(path), path, labels_shape, labels_path, self.options.stack)
        if selected.guess:
            self.note(selected.guess, path)
        self._planes += "plane" in selected.selection
        image, verbatim = selected.image, selected.verbatim
        if image.dtype not in IMAGE_DTYPES:
            image, verbatim = image.astype(np.float32), False
        return np.ascontiguousarray(image), path if verbatim else None, selected.selection

    def skip_unused(self, folder: Path, used: set[Path]) -> None:
        """Lists every entry of `folder` that the import did not use: subfolders, files of other suffixes,
        image or label files that matched nothing."""
        for path in sorted(folder.iterdir()):
            if path in used:
                continue
            if path.is_dir():
                self.skip("subfolder not searched", folder=str(path))
            elif path.suffix.lower() not in IMAGE_SUFFIXES + LABEL_SUFFIXES:
                self.skip("unsupported suffix", file=str(path))
            else:
                self.skip("unmatched file", file=str(path))

    def close(self) -> Dataset:
        """Checks that every modality_of and rename key was used, writes the report into meta and closes."""
        if self.dataset is not None:
            return self.dataset
        names = set(self._names.values())
        for what, keys in (("modality_of", set(self.options.modality_of) - names),
                           ("rename", set(self.options.rename) - set(self._names))):
            if keys:
                raise ValueError(f"{what} names cell types that were not imported: {sorted(keys)} "
                                 f"(imported: {sorted(self._names)})")
        report = self._warnings()
        if report:
            self.meta["warnings"] = report
        dataset = super().close()
        for message in report:
            warnings.warn(message, DataWarning, stacklevel=2)
        return dataset

    def _warnings(self) -> list[str]:
        notes = [f"{message} ({len(examples)} image(s), e.g. {examples[0]})"
                 for message, examples in self._notes.items()]
        if self.options.stack.plane is not None and not self._planes:
            notes.append(f"--plane {self.options.stack.plane} was given but no image has planes")
        unspecified = sorted(t.name for t in self.cell_types if t.modality == UNSPECIFIED)
        if unspecified:
            notes.append(f"cell types {unspecified} have modality {UNSPECIFIED!r}: every type of that modality, from "
                         "any source of a benchmark, is in one modality group, so their cells are pasted into each "
                         "other's images; give each type its group (--modality GROUP, --modality-of TYPE=GROUP or a "
                         "type table's --modality-column)")
        return notes


def describe_import(dataset: Dataset) -> str:
    """One paragraph for the user: images, cells, types, negative images, what was skipped (count per reason)."""
    cells = sum(r.n_instances for r in dataset.images)
    empty = sum(r.n_instances == 0 for r in dataset.images)
    types = ", ".join(f"{t.name} ({t.modality})" for t in dataset.cell_types)
    text = (f"wrote {dataset.root}: {len(dataset.images)} images, {cells} cells, {len(dataset.cell_types)} cell "
            f"types: {types}")
    if empty:
        text += f"; {empty} images without cells kept (negative images)"
    reasons = Counter(entry.get("reason", "?") for entry in dataset.meta.get("skipped", []))
    if not reasons:
        return text + "; nothing skipped"
    text += f"; skipped {sum(reasons.values())}: " + ", ".join(
        f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    if reasons[NO_INSTANCES]:
        text += " (--keep-empty keeps images without cells as negative images)"
    return text
