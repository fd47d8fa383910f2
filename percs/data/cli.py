"""`percs data ...`: parses arguments and calls percs.data; nothing here that Python callers cannot reach."""

from __future__ import annotations

import argparse
import sys
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
    cells = sum(r.n_instances for r in dataset.images)
    skipped = len(dataset.meta.get("skipped", []))
    types = ", ".join(f"{t.name} ({t.modality})" for t in dataset.cell_types)
    return (f"wrote {dataset.root}: {len(dataset.images)} images, {cells} cells, {len(dataset.cell_types)} cell "
            f"types: {types}; {skipped} images skipped (no instances)")


def _options(args):
    from percs.data.importers import ImportOptions

    modality_of = {}
    for text in args.modality_of:
        modality_of.update(parse_pairs(text, "--modality-of"))
    default = "histology" if args.format == "pannuke" else "unspecified"
    return ImportOptions(args.name, args.modality or default, modality_of)


def cmd_import(args: argparse.Namespace) -> int:
    from percs.data import importers
    from percs.data.format import DatasetError
    from percs.data.io import DataFileError
    from percs.data.pannuke import import_pannuke

    try:
        options = _options(args)
        if args.format == "cellpose":
            dataset = importers.import_cellpose(args.root, args.out, options, args.type, args.img_filter,
                                                args.mask_filter)
        elif args.format == "folder":
            types = args.type or importers.read_image_types(args.type_table, args.name_column, args.type_column)
            dataset = importers.import_folder(args.images, args.masks, args.out, types, options, args.mask_suffix,
                                              args.split)
        elif args.format == "typemap":
            class_names = int_keys(parse_pairs(args.class_names, "--class-names"), "--class-names") or None
            table = importers.read_instance_classes(args.type_table) if args.type_table else None
            layout = importers.TypemapLayout(args.images_dir, args.instances_dir, args.type_maps_dir)
            dataset = importers.import_typemap(args.root, args.out, options, class_names, table, layout)
        else:
            splits = int_keys(parse_pairs(args.fold_splits, "--fold-splits"), "--fold-splits")
            dataset = import_pannuke(args.root, args.out, options, splits)
    except (DataFileError, DatasetError, argparse.ArgumentTypeError, ValueError) as error:
        print(f"percs data import {args.format}: error: {error}", file=sys.stderr)
        return 1
    print(summary(dataset))
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
    from percs.data.format import DatasetError
    from percs.data.io import DataFileError
    from percs.data.stats import format_stats

    novel = "all" if args.novel_types == "all" else _names(args.novel_types)
    config = BuildConfig(args.protocol, novel, args.novel_count, _names(args.distractor_types), args.test_fraction,
                         args.val_fraction, args.variants, args.paste_ratio, args.gap, args.reference,
                         args.group_pattern, args.seed, args.name)
    try:
        dataset = build_benchmark(args.sources, args.out, config)
    except (DataFileError, DatasetError, ValueError) as error:
        print(f"percs data build: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {dataset.root}")
    print(format_stats(dataset))
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
    p.add_argument("--out", required=True, type=Path, help="new benchmark folder (must not exist or be empty)")
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
                   help="images whose names give the same first regex group (e.g. a tile) share a split")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the novel-type draw, splits, mixed images and references (default 0)")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("stats", help="images, cells, types and queries per split of a dataset")
    p.add_argument("dataset", type=Path, help="a percs dataset or benchmark folder")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the sha256 checks")
    p.set_defaults(func=cmd_stats)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="new dataset folder (must not exist or be empty)")
    p.add_argument("--name", help="dataset name (default: the --out folder's name)")
    p.add_argument("--modality", help="modality group of every cell type (default: unspecified; pannuke: histology)")
    p.add_argument("--modality-of", action="append", default=[], metavar="TYPE=GROUP[,...]",
                   help="modality group of particular cell types (repeatable)")


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
    for parser in formats.choices.values():
        _common(parser)
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
