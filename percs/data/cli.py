"""`percs data ...`: parses arguments and calls percs.data; nothing here that Python callers cannot reach."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parsers import no dataset code (NumPy, fastremap): the commands do, when they run
    from percs.data.format import Dataset


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """'a=x,b=y' -> {'a': 'x', 'b': 'y'}."""
    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{what}: {item!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def int_keys(pairs: dict[str, str], what: str) -> dict[int, str]:
    if not all(k.isdigit() for k in pairs):
        raise argparse.ArgumentTypeError(f"{what}: keys must be integers, got {sorted(pairs)}")
    return {int(k): v for k, v in pairs.items()}


def summary(dataset: Dataset) -> str:
    from percs.data.importing import describe_import

    return describe_import(dataset)


def parse_rename(texts: list[str]) -> dict[str, str]:
    """['OLD=NEW', ...] -> {OLD: NEW}; split at the last '=', so OLD may hold '=' and ',' (folder names do)."""
    rename = {}
    for text in texts:
        old, sep, new = text.rpartition("=")
        if not sep or not old or not new.strip():
            raise argparse.ArgumentTypeError(f"--rename: {text!r} is not OLD=NEW")
        if rename.setdefault(old, new.strip()) != new.strip():
            raise argparse.ArgumentTypeError(f"--rename: {old!r} is renamed twice ({rename[old]!r}, {new.strip()!r})")
    return rename


def _options(args):
    from percs.data.importers import ImportOptions, read_type_modalities
    from percs.data.stacks import StackOptions, parse_axes, parse_channels, parse_plane

    modality_of = {}
    for text in args.modality_of:
        modality_of.update(parse_pairs(text, "--modality-of"))
    default = "histology" if args.format == "pannuke" else "unspecified"
    stack = StackOptions()
    if args.format != "pannuke":
        stack = StackOptions(parse_plane(args.plane), parse_channels(args.channels), parse_axes(args.axes))
    type_modality = {}
    if getattr(args, "modality_column", None):
        if args.type_table is None:
            raise argparse.ArgumentTypeError("--modality-column: needs --type-table")
        type_modality = read_type_modalities(args.type_table, args.type_column, args.modality_column)
    return ImportOptions(args.name, args.modality or default, modality_of, parse_rename(args.rename), type_modality,
                         stack, args.keep_empty, args.group_pattern)


def print_warnings(command: str, caught) -> None:
    """Prints the warnings caught while a command ran (DataWarnings as 'warning: ...') on stderr."""
    from percs.data.format import DataWarning

    for w in caught:
        kind = "" if issubclass(w.category, DataWarning) else f"{w.category.__name__}: "
        print(f"{command}: warning: {kind}{w.message}", file=sys.stderr)


def _import(args: argparse.Namespace):
    from percs.data import importers
    from percs.data.pannuke import import_pannuke

    options = _options(args)
    if args.format == "cellpose":
        return importers.import_cellpose(args.root, args.out, options, args.type, args.img_filter, args.mask_filter)
    if args.format == "folder":
        types = args.type or importers.read_image_types(args.type_table, args.name_column, args.type_column)
        return importers.import_folder(args.images, args.masks, args.out, types, options, args.mask_suffix,
                                       args.split)
    if args.format == "typemap":
        class_names = int_keys(parse_pairs(args.class_names, "--class-names"), "--class-names") or None
        table = importers.read_instance_classes(args.type_table) if args.type_table else None
        layout = importers.TypemapLayout(args.images_dir, args.instances_dir, args.type_maps_dir)
        return importers.import_typemap(args.root, args.out, options, class_names, table, layout)
    splits = int_keys(parse_pairs(args.fold_splits, "--fold-splits"), "--fold-splits")
    return import_pannuke(args.root, args.out, options, splits)


def cmd_import(args: argparse.Namespace) -> int:
    from percs.data.format import DatasetError, DataWarning
    from percs.data.io import DataFileError

    command = f"percs data import {args.format}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            dataset = _import(args)
    except (DataFileError, DatasetError, argparse.ArgumentTypeError, ValueError) as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 1
    print(summary(dataset))
    print_warnings(command, caught)
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from percs.data.format import DatasetError
    from percs.data.synthetic import write_synthetic_dataset

    try:
        dataset = write_synthetic_dataset(args.out, args.images_per_type, args.mixed_images, (args.size, args.size),
                                          args.seed, args.name)
    except (DatasetError, ValueError) as error:
        print(f"percs data synthetic: error: {error}", file=sys.stderr)
        return 1
    print(summary(dataset))
    return 0


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def cmd_build(args: argparse.Namespace) -> int:
    from percs.data.build import BuildConfig, build_benchmark
    from percs.data.format import DatasetError, DataWarning
    from percs.data.io import DataFileError
    from percs.data.stats import format_stats

    novel = "all" if args.novel_types == "all" else _names(args.novel_types)
    config = BuildConfig(args.protocol, novel, args.novel_count, _names(args.distractor_types), args.test_fraction,
                         args.val_fraction, args.variants, args.paste_ratio, args.gap, args.reference,
                         args.group_pattern, args.seed, args.name)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            dataset = build_benchmark(args.sources, args.out, config, progress=True, overwrite=args.overwrite,
                                      train_only=args.train_only)
    except (DataFileError, DatasetError, ValueError) as error:
        print(f"percs data build: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {dataset.root}")
    print(format_stats(dataset))
    print_warnings("percs data build", caught)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from percs.data.format import DatasetError, load_dataset
    from percs.data.io import DataFileError
    from percs.data.stats import format_stats

    try:
        dataset = load_dataset(args.dataset, verify=args.verify)
    except (DataFileError, DatasetError) as error:
        print(f"percs data stats: error: {error}", file=sys.stderr)
        return 1
    print(format_stats(dataset))
    return 0


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="assemble a benchmark (splits, mixed-type images, fixed queries) from "
                                     "imported datasets")
    p.add_argument("sources", nargs="+", type=Path, help="imported dataset folders (percs data import)")
    p.add_argument("--train-only", action="append", default=[], type=Path, metavar="SOURCE",
                   help="an imported dataset folder whose images all go to train (repeatable): val, test, novel "
                        "and the queries stay those of the build without it; an image of a novel type is an error")
    p.add_argument("--out", required=True, type=Path,
                   help="new benchmark folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the percs dataset already in --out (once the new one is complete; a folder that "
                        "is not a percs dataset is never removed)")
    p.add_argument("--name", help="benchmark name (default: the --out folder's name)")
    p.add_argument("--protocol", choices=("auto", "percs", "pannuke"), default="auto",
                   help="percs: one type per image, split by type, pasting; pannuke: multi-class images, no "
                        "pasting; auto: pannuke when an image holds several types (default)")
    novel = p.add_mutually_exclusive_group()
    novel.add_argument("--novel-types", metavar="A,B|all", help="types held out as novel, or all")
    novel.add_argument("--novel-count", type=int, default=0, help="number of novel types drawn with --seed")
    p.add_argument("--distractor-types", metavar="A,B", help="types kept in the images but never targets")
    p.add_argument("--test-fraction", type=float, default=0.2, help="of the seen images per type (default 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of the seen images per type (default 0.1)")
    p.add_argument("--variants", type=int, default=3, help="mixed-type versions per evaluation image (default 3)")
    p.add_argument("--paste-ratio", type=float, default=0.5, help="pasted cells per own cell (default 0.5)")
    p.add_argument("--gap", type=int, default=1, help="background pixels between a pasted cell and any cell")
    p.add_argument("--reference", choices=("another-image", "same-image"), default="another-image",
                   help="where fixed references come from (default: another image of the type where one exists)")
    p.add_argument("--group-pattern", metavar="REGEX",
                   help="group of the images whose source has no groups of its own (percs data import "
                        "--group-pattern): the first regex group found in <source name>/<image name>, e.g. "
                        "'^(.*)_[0-9]+$' for tiles; images of a group share a split, and a query's reference comes "
                        "from another group (default: each image is its own group)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the novel-type draw, splits, mixed images and references (default 0)")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("stats", help="images, cells, types and queries per split and per type of a dataset, and "
                                     "the pasted cells that found no room")
    p.add_argument("dataset", type=Path, help="a percs dataset or benchmark folder")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the sha256 checks")
    p.set_defaults(func=cmd_stats)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="new dataset folder (must not exist or be empty)")
    p.add_argument("--name", help="dataset name (default: the --out folder's name)")
    p.add_argument("--modality", help="modality group of every cell type (default: unspecified; pannuke: histology)")
    p.add_argument("--modality-of", action="append", default=[], metavar="TYPE=GROUP[,...]",
                   help="modality group of particular cell types, by their names after --rename (repeatable)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="rename a cell type of the source (a folder, table or class name), e.g. "
                        "--rename 'weird type (v2)?=weird_type_v2'; type names may hold letters, digits and "
                        "_ . + - only; several OLD may share one NEW, merging them (repeatable)")
    p.add_argument("--keep-empty", action="store_true",
                   help="keep images without cells as negative images (no query, training crops with an absent "
                        "target); default: skip them and print their count, as the benchmarks in docs/benchmarks.md do")
    p.add_argument("--group-pattern", metavar="REGEX",
                   help="group of each image: the first regex group (or the whole match) found in its name in the "
                        "dataset, e.g. '^(.*)_[0-9]+$' for tiles cut into patches; kept in the manifest and used by "
                        "percs data build: images of a group share a split, and a query's reference comes from "
                        "another group (default: each image is its own group)")


def _stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plane", metavar="mid|max|N",
                   help="for stacks (z-slices or time points): keep the middle plane (mid, plane (n-1)//2), the "
                        "maximum projection (max) or plane N (from 0); needed by images whose axes metadata (or "
                        "--axes) has Z, and it makes the unlabelled first axis of a 3-D TIFF planes, not channels")
    p.add_argument("--channels", metavar="I[,J...]",
                   help="channels to keep, in this order, e.g. 0 (a grey image) or 0,1 (default: all)")
    p.add_argument("--axes", metavar="LETTERS",
                   help="axes of every image file, letters Y, X, C (channels) and Z (planes), e.g. ZYX, CYX, ZCYX "
                        "(default: from the TIFF's axes metadata, else guessed, with a warning saying what was "
                        "guessed)")


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="import a dataset in a public layout into the percs format")
    formats = p.add_subparsers(dest="format", required=True)
    q = formats.add_parser("cellpose", help="ROOT[/split]/<type>/<n>_img.<ext> + <n>_masks.<ext>")
    q.add_argument("root", type=Path,
                   help="folder of [split/]<type>/ folders of images and masks (or of the files, with --type)")
    q.add_argument("--type", help="cell type when ROOT holds the images directly")
    q.add_argument("--img-filter", default="_img", help="end of an image's name before its suffix (default _img)")
    q.add_argument("--mask-filter", default="_masks",
                   help="end of a mask's name replacing --img-filter (default _masks: 001_img.png -> 001_masks.png)")
    q = formats.add_parser("folder", help="an image folder and a mask folder matched by name")
    q.add_argument("images", type=Path, help="folder of the images (PNG, JPEG, TIFF)")
    q.add_argument("masks", type=Path, help="folder of the label images (PNG, TIFF, NPY, MAT)")
    kind = q.add_mutually_exclusive_group(required=True)
    kind.add_argument("--type", help="one cell type for every image")
    kind.add_argument("--type-table", type=Path, help="CSV or JSON: cell type per image")
    q.add_argument("--name-column", default="image", help="table column/key of the image name (default image)")
    q.add_argument("--type-column", default="type", help="table column/key of the cell type (default type)")
    q.add_argument("--modality-column", metavar="COLUMN",
                   help="table column/key of each type's modality group (every row of a type gives the same; "
                        "--modality-of overrides it)")
    q.add_argument("--mask-suffix", default="",
                   help="mask name = image name + this, before the file suffix (e.g. _masks matches cell01.png "
                        "with cell01_masks.tif; default: the same name)")
    q.add_argument("--split", choices=("train", "val", "test", "novel"), help="split of every image (default none)")
    q = formats.add_parser("typemap", help="instance maps + per-pixel type maps or a per-instance table")
    q.add_argument("root", type=Path, help="folder of the layout's folders, or of split folders (train/, test/) "
                                          "holding them")
    q.add_argument("--images-dir", default="images", help="images folder under ROOT[/split] (default images)")
    q.add_argument("--instances-dir", default="inst",
                   help="instance maps folder under ROOT[/split], named as the images (default inst)")
    q.add_argument("--type-maps-dir", default="typemap",
                   help="per-pixel type maps folder under ROOT[/split] (default typemap)")
    q.add_argument("--type-table", type=Path, help="CSV (image,label,type) or JSON {image: {label: class}}")
    q.add_argument("--class-names", default="", metavar="ID=NAME[,...]", help="e.g. 1=other,2=inflammatory")
    q = formats.add_parser("pannuke", help="PanNuke folds: ROOT/Fold k/{images,masks}/foldk/*.npy")
    q.add_argument("root", type=Path, help="folder of the fold folders ('Fold 1', ...), or one fold folder")
    q.add_argument("--fold-splits", default="1=train,2=train,3=test", metavar="FOLD=SPLIT[,...]",
                   help="split of each fold (default 1=train,2=train,3=test)")
    for name, parser in formats.choices.items():
        _common(parser)
        if name != "pannuke":
            _stack_options(parser)
    p.set_defaults(func=cmd_import)


def add_data_commands(commands) -> None:
    """Adds `data import FORMAT`, `data synthetic`, `data build` and `data stats` to the top-level subparsers."""
    data = commands.add_parser("data", help="datasets: import public layouts, write synthetic data, build "
                                            "benchmarks")
    sub = data.add_subparsers(dest="data_command", required=True)
    _add_import(sub)
    _add_build(sub)
    p = sub.add_parser("synthetic", help="write a synthetic dataset (five cell types, two modality groups)")
    p.add_argument("--out", required=True, type=Path, help="new dataset folder (must not exist or be empty)")
    p.add_argument("--name", default="synthetic", help="dataset name (default synthetic)")
    p.add_argument("--images-per-type", type=int, default=2, help="one-type images per cell type (default 2)")
    p.add_argument("--mixed-images", type=int, default=2, help="images holding several types (default 2)")
    p.add_argument("--size", type=int, default=256, help="image height and width in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images (default 0)")
    p.set_defaults(func=cmd_synthetic)
