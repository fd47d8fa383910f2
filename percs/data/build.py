"""`percs data build`: a benchmark assembled from imported datasets (docs/dataset_format.md, "Building a benchmark").

Two protocols:
- `percs` (one cell type per image, as cellpose_styles and the dsb2018 groups): split by type (novel types never
  reach train or val, not even pasted), seen images split into train / val / test, and every val, test and
  novel image stored as `variants` seeded mixed-type versions (percs.data.mixing) with one query per type present;
- `pannuke` (multi-class images, as CoNSeP or PanNuke): no pasting; every class present in an evaluation image
  is a target once.
`auto` picks `pannuke` when some image holds more than one type, else `percs`. Both take their references by
the rule of percs.data.queries. Distractor types stay in the images but are never targets.

Images are named `<source dataset name>/<image name>`, variants `<...>/mix<k>`. Images that are not changed are
copied byte for byte. Everything random follows from `seed` and the image names, so a build is reproducible
and one image's variants do not depend on the others. An image's group is the one its importer recorded
(`--group-pattern` at import, per source), else `group_pattern` applied to its benchmark name, else the image.
Images without cells (imported with keep_empty) are split like the others and get no query.

Train-only sources (`--train-only`) add images to train and change nothing else: every one of their images goes
to train; the protocol, novel types, splits, mixed images and queries follow from the other sources alone (an
evaluation image's pasted cells and its queries' references come from its own split), so val, test, novel and
the queries are those of the build without them. Their types that no other source has come after the others in
the vocabulary, so type indices stay the same too. A train-only image holding a novel type is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from percs.data.cells import cell_table
from percs.data.format import (MANIFEST, Dataset, DatasetError, DatasetWriter, DataWarning, ImageRecord,
                               canonical_labels, load_dataset)
from percs.data.mixing import LoadedImage, make_variant, whole_cells_by_type
from percs.data.queries import REFERENCE_RULES, EvalImage, make_queries
from percs.data.split import SplitInput, choose_novel_types, group_of, plan_splits, stable_seed

PROTOCOLS = ("auto", "percs", "pannuke")
EVAL = ("val", "test", "novel")


@dataclass(frozen=True)
class BuildConfig:
    """How to build a benchmark; see the module docstring and percs.data.split / mixing / queries.

    novel_types: names, or "all" (every image novel: a benchmark of unseen types only); without names,
    novel_count types are drawn with the seed. paste_ratio: pasted cells per own cell of an evaluation image;
    variants: mixed versions per evaluation image (0: keep the images as they are); gap: background pixels
    kept between a pasted cell and any other. group_pattern: a regex whose first group names the group of an
    image (images of one group share a split; references come from another group), for the images whose
    source has no groups of its own (see the module docstring).
    """

    protocol: str = "auto"
    novel_types: tuple[str, ...] | str = ()
    novel_count: int = 0
    distractor_types: tuple[str, ...] = ()
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    variants: int = 3
    paste_ratio: float = 0.5
    gap: int = 1
    reference: str = "another-image"
    group_pattern: str | None = None
    seed: int = 0
    name: str | None = None

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if self.reference not in REFERENCE_RULES:
            raise ValueError(f"reference {self.reference!r} is not one of {REFERENCE_RULES}")
        if self.variants < 0 or self.paste_ratio < 0 or self.gap < 1 or self.novel_count < 0:
            raise ValueError(f"variants ({self.variants}), paste_ratio ({self.paste_ratio}) and novel_count "
                             f"({self.novel_count}) must be >= 0 and gap ({self.gap}) >= 1")
        if isinstance(self.novel_types, str) and self.novel_types != "all":
            raise ValueError(f"novel_types {self.novel_types!r}: give a tuple of names or 'all'")


@dataclass(frozen=True)
class SourceImage:
    """One image of a source dataset and its name and group in the benchmark."""

    name: str
    dataset: Dataset
    record: ImageRecord
    group: str


def load_sources(paths: Sequence[Path | str]) -> tuple[list[Dataset], dict[str, str]]:
    """Loads (and verifies) the source datasets; returns them and the merged vocabulary type -> modality."""
    if not paths:
        raise ValueError("no source dataset given")
    datasets, modality, owner = [], {}, {}
    for path in paths:
        dataset = load_dataset(path)
        if any(d.name == dataset.name for d in datasets):
            raise ValueError(f"{Path(path) / MANIFEST}: a source named {dataset.name!r} was already given")
        for t in dataset.cell_types:
            if modality.setdefault(t.name, t.modality) != t.modality:
                raise ValueError(f"{Path(path) / MANIFEST}: cell type {t.name!r} has modality {t.modality!r}, "
                                 f"but {modality[t.name]!r} in {owner[t.name]}")
            owner.setdefault(t.name, Path(path) / MANIFEST)
        datasets.append(dataset)
    return datasets, modality


def build_benchmark(sources: Sequence[Path | str], out: Path | str, config: BuildConfig = BuildConfig(),
                    progress: bool = False, overwrite: bool = False, train_only: Sequence[Path | str] = ()
                    ) -> Dataset:
    """Builds a benchmark from imported datasets into `out`; returns it.

    out must not exist or be empty, unless `overwrite`: then an existing percs dataset folder there (one with a
    manifest, and not one of the sources) is replaced once the new benchmark is complete. progress: tqdm bars
    on stderr. Warns (DataWarning) when types of the unspecified modality group are pasted into each other.
    train_only: more sources, whose images all go to train (named in meta["train_only_sources"]); see the
    module docstring.
    """
    config.check()
    out = Path(out)
    if not sources:
        raise ValueError("no source dataset given (train-only sources alone give no evaluation images)")
    building = _building_folder(out, [*sources, *train_only], overwrite)
    datasets, modality = load_sources([*sources, *train_only])
    images = _source_images(datasets[:len(sources)], config.group_pattern)
    extra = _source_images(datasets[len(sources):], config.group_pattern)
    protocol = _protocol(config, images)
    unknown = sorted(set(config.distractor_types) - set(modality))
    if unknown:
        raise ValueError(f"distractor types {unknown} are not cell types of the sources")
    if protocol == "pannuke" and (config.novel_types not in ((), "all") or config.novel_count):
        raise ValueError("the pannuke protocol keeps every class in every split: novel types can only be 'all'")
    used = sorted({t for im in images for t in im.record.instance_types})
    novel = _novel_types(config, used, extra)
    plan = plan_splits([SplitInput(im.name, frozenset(im.record.instance_types), im.record.split, im.group)
                        for im in images], novel, protocol == "percs", config.test_fraction, config.val_fraction,
                       config.seed)
    vocabulary = used + sorted({t for im in extra for t in im.record.instance_types} - set(used))
    _warn_unspecified(protocol, config, vocabulary, modality)
    meta = {"builder": "percs data build", "protocol": protocol, "config": _config_json(config),
            "sources": [_source_meta(p, d) for p, d in zip([*sources, *train_only], datasets)],
            "novel_types": list(novel), "distractor_types": sorted(config.distractor_types),
            "excluded": list(plan.excluded)}
    if train_only:
        meta["train_only_sources"] = [d.name for d in datasets[len(sources):]]
    splits = {**plan.splits, **{im.name: "train" for im in extra}}
    with DatasetWriter(building, config.name or out.resolve().name, meta) as writer:
        for t in vocabulary:
            writer.add_cell_type(t, modality[t])
        evaluation = _write_images(writer, images + extra, splits, protocol, modality, config, progress)
        for query in make_queries(evaluation, config.distractor_types, config.reference):
            writer.add_query(query)
        dataset = writer.close()
    if building == out:
        return dataset
    shutil.rmtree(out)
    building.rename(out)
    return dataclasses.replace(dataset, root=out)


def _source_images(datasets: Sequence[Dataset], pattern: str | None) -> list[SourceImage]:
    return [SourceImage(f"{d.name}/{r.name}", d, r, source_group(d, r, pattern)) for d in datasets for r in d.images]


def _novel_types(config: BuildConfig, used: list[str], train_only: list[SourceImage]) -> tuple[str, ...]:
    """The novel types, chosen among `used` (the types of the evaluation sources, so that train-only sources
    change nothing); a train-only image holding one (named, drawn or `all`) is an error."""
    named = () if config.novel_types == "all" else config.novel_types
    _refuse_novel_train_only(train_only, named)  # first, as the draw rejects names without evaluation images
    novel = choose_novel_types(used, config.novel_types, config.novel_count, config.seed)
    _refuse_novel_train_only(train_only, novel)
    return novel


def _refuse_novel_train_only(images: list[SourceImage], novel: Sequence[str]) -> None:
    """Raises when an image of a train-only source holds a novel type: it would put that type in train."""
    held = [im for im in images if set(im.record.instance_types) & set(novel)]
    if held:
        held = [im for im in held if im.dataset is held[0].dataset]
        leaked = sorted({t for im in held for t in im.record.instance_types} & set(novel))
        raise ValueError(f"train-only source {held[0].dataset.root}: {len(held)} image(s) hold novel type(s) "
                         f"{leaked} (first: {held[0].record.name!r}), and a novel type must never reach train; "
                         "hold out other novel types or leave those images out of the train-only source")


def source_group(dataset: Dataset, record: ImageRecord, pattern: str | None) -> str:
    """The group of a source image in the benchmark: `<source name>/<group>` from its importer's meta["group"],
    else `pattern` on its benchmark name (percs.data.split.group_of)."""
    if "group" in record.meta:
        return f"{dataset.name}/{record.meta['group']}"
    return group_of(f"{dataset.name}/{record.name}", pattern)


def _building_folder(out: Path, sources: Sequence[Path | str], overwrite: bool) -> Path:
    """The folder to write into: `out`, or, to replace an existing benchmark, a sibling renamed to `out` at the end."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: output folder exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return out
    if not overwrite:
        raise DatasetError(f"{out}: output folder exists and is not empty; give --overwrite (overwrite=True) to "
                           "replace the dataset in it")
    if not (out / MANIFEST).is_file():
        raise DatasetError(f"{out}: --overwrite replaces a percs dataset folder only, and this one has no "
                           f"{MANIFEST}; remove it yourself or choose another --out")
    for source in sources:
        if out.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
            raise DatasetError(f"{out}: is (or holds) the source {source}; choose another --out")
    building = out.parent / f".{out.name}.building-{os.getpid()}"
    if building.exists():
        shutil.rmtree(building)
    return building


def _warn_unspecified(protocol: str, config: BuildConfig, used: list[str], modality: dict[str, str]) -> None:
    unspecified = [t for t in used if modality[t] == "unspecified"]
    if protocol == "percs" and config.variants > 0 and config.paste_ratio > 0 and len(unspecified) > 1:
        warnings.warn(f"cell types {unspecified} have modality 'unspecified', so they are one modality group and "
                      "their cells are pasted into each other's images; re-import their sources with --modality "
                      "GROUP or --modality-of TYPE=GROUP to keep modalities apart", DataWarning, stacklevel=3)


def _protocol(config: BuildConfig, images: list[SourceImage]) -> str:
    if config.protocol != "auto":
        return config.protocol
    return "pannuke" if any(len(set(im.record.instance_types)) > 1 for im in images) else "percs"


def _config_json(config: BuildConfig) -> dict:
    values = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _source_meta(path, dataset: Dataset) -> dict:
    digest = hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    return {"name": dataset.name, "path": str(Path(path).resolve()), "manifest_sha256": digest}


def _write_images(writer: DatasetWriter, images: list[SourceImage], splits: dict[str, str], protocol: str,
                  modality: dict[str, str], config: BuildConfig, progress: bool = False) -> list[EvalImage]:
    """Writes every image that has a split; returns the evaluation images as the reference rule needs them."""
    from tqdm import tqdm

    kept = sorted((im for im in images if im.name in splits), key=lambda im: im.name)
    mixing = protocol == "percs" and config.variants > 0 and config.paste_ratio > 0
    to_load = [im for im in kept if mixing and splits[im.name] in EVAL]
    loaded = {im.name: LoadedImage.read(im.name, im.dataset, im.record)
              for im in tqdm(to_load, desc="reading evaluation images", unit="image", disable=not progress,
                             file=sys.stderr)}
    evaluation = []
    for im in tqdm(kept, desc="writing images", unit="image", disable=not progress, file=sys.stderr):
        split = splits[im.name]
        donors = _donors(im, loaded, splits, modality) if mixing and split in EVAL else {}
        if not donors:
            labels = _copy(writer, im, split)
            if split in EVAL:
                source_labels = np.arange(1, im.record.n_instances + 1)
                evaluation.append(_eval_image(im, im.name, split, 0, labels, im.record.instance_types, source_labels))
            continue
        evaluation += [_write_variant(writer, im, split, k, loaded[im.name], donors, config)
                       for k in range(config.variants)]
    return evaluation


def _write_variant(writer: DatasetWriter, im: SourceImage, split: str, k: int, target: LoadedImage,
                   donors: dict, config: BuildConfig) -> EvalImage:
    """Writes mixed-type variant k of an image (`<name>/mix<k>`, seeded by seed, name and k)."""
    rng = np.random.default_rng(stable_seed(config.seed, "paste", im.name, k))
    variant = make_variant(target, donors, config.paste_ratio, config.gap, rng)
    name = f"{im.name}/mix{k}"
    labels, types = canonical_labels(variant.labels, variant.types, f"{writer.root}: image {name!r}")
    old_of_new = np.zeros(len(types) + 1, np.int64)
    old_of_new[labels] = variant.labels
    new_of_old = {int(old): new for new, old in enumerate(old_of_new)}
    meta = {"source_dataset": im.dataset.name, "source_image": im.record.name, "variant": k,
            "native_cells": im.record.n_instances, "pasted_requested": variant.requested,
            "pasted": [[new_of_old[label], donor, donor_label] for label, donor, donor_label in variant.pasted]}
    writer.add_image(name, variant.image, labels, dict(enumerate(types, start=1)), split, meta)
    native = np.where(old_of_new[1:] <= im.record.n_instances, old_of_new[1:], -1)
    pasted_from = frozenset((donor, int(label)) for _, donor, label in variant.pasted)
    return _eval_image(im, name, split, k, labels, types, native, pasted_from)


def _donors(im: SourceImage, loaded: dict[str, LoadedImage], splits: dict[str, str], modality: dict[str, str]):
    """type -> whole cells of the same split's other images, of other types of the image's modality groups."""
    own = set(im.record.instance_types)
    groups = {modality[t] for t in own}
    same_split = [image for name, image in loaded.items() if name != im.name and splits[name] == splits[im.name]]
    pool = whole_cells_by_type(same_split)
    return {t: cells for t, cells in pool.items() if t not in own and modality[t] in groups}


def _copy(writer: DatasetWriter, im: SourceImage, split: str) -> np.ndarray:
    """Copies an image unchanged (the file byte for byte); returns its labels."""
    labels = im.dataset.read_labels(im.record)
    types = dict(enumerate(im.record.instance_types, start=1))
    meta = {"source_dataset": im.dataset.name, "source_image": im.record.name, "source_meta": im.record.meta}
    source = im.dataset.root / im.record.image
    writer.add_image(im.name, im.dataset.read_image(im.record), labels, types, split, meta, source)
    return labels


def _eval_image(im: SourceImage, name: str, split: str, variant: int, labels: np.ndarray, types: Sequence[str],
                source_labels: np.ndarray, pasted_from: frozenset = frozenset()) -> EvalImage:
    """The EvalImage of a stored image with canonical `labels` (H, W); source_labels (n,): -1 for pasted cells."""
    table = cell_table(labels)
    return EvalImage(name, split, im.name, variant, im.group, table.labels, tuple(types), table.areas, table.whole,
                     np.asarray(source_labels, np.int64), pasted_from)
