"""`percs data ...`: parses arguments and calls percs.data; nothing here that Python callers cannot reach."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from percs.data.format import Dataset, DatasetError
from percs.data.io import DataFileError


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
    from percs.data.synthetic import write_synthetic_dataset

    try:
        dataset = write_synthetic_dataset(args.out, args.images_per_type, args.mixed_images, (args.size, args.size),
                                          args.seed, args.name)
    except (DatasetError, ValueError) as error:
        print(f"percs data synthetic: error: {error}", file=sys.stderr)
        return 1
    print(summary(dataset))
    return 0


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
    q.add_argument("root", type=Path)
    q.add_argument("--type", help="cell type when ROOT holds the images directly")
    q.add_argument("--img-filter", default="_img")
    q.add_argument("--mask-filter", default="_masks")
    q = formats.add_parser("folder", help="an image folder and a mask folder matched by name")
    q.add_argument("images", type=Path)
    q.add_argument("masks", type=Path)
    kind = q.add_mutually_exclusive_group(required=True)
    kind.add_argument("--type", help="one cell type for every image")
    kind.add_argument("--type-table", type=Path, help="CSV or JSON: cell type per image")
    q.add_argument("--name-column", default="image", help="table column/key of the image name (default image)")
    q.add_argument("--type-column", default="type", help="table column/key of the cell type (default type)")
    q.add_argument("--mask-suffix", default="", help="mask name = image name + this, before the suffix")
    q.add_argument("--split", choices=("train", "val", "test", "novel"))
    q = formats.add_parser("typemap", help="instance maps + per-pixel type maps or a per-instance table")
    q.add_argument("root", type=Path)
    q.add_argument("--images-dir", default="images")
    q.add_argument("--instances-dir", default="inst")
    q.add_argument("--type-maps-dir", default="typemap")
    q.add_argument("--type-table", type=Path, help="CSV (image,label,type) or JSON {image: {label: class}}")
    q.add_argument("--class-names", default="", metavar="ID=NAME[,...]", help="e.g. 1=other,2=inflammatory")
    q = formats.add_parser("pannuke", help="PanNuke folds: ROOT/Fold k/{images,masks}/foldk/*.npy")
    q.add_argument("root", type=Path)
    q.add_argument("--fold-splits", default="1=train,2=train,3=test", metavar="FOLD=SPLIT[,...]")
    for parser in formats.choices.values():
        _common(parser)
    p.set_defaults(func=cmd_import)


def add_data_commands(commands) -> None:
    """Adds `data import FORMAT` and `data synthetic` to the top-level subparsers."""
    data = commands.add_parser("data", help="datasets: import public layouts, write synthetic data")
    sub = data.add_subparsers(dest="data_command", required=True)
    _add_import(sub)
    p = sub.add_parser("synthetic", help="write a synthetic dataset (five cell types, two modality groups)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", default="synthetic")
    p.add_argument("--images-per-type", type=int, default=2)
    p.add_argument("--mixed-images", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="image height and width")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synthetic)
