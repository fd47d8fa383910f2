"""`percs predict`: parses the arguments and calls percs.predict_files with a percs.api.Segmenter."""

from __future__ import annotations

import argparse
import sys


def cmd_predict(args: argparse.Namespace) -> int:
    from percs.api import Segmenter
    from percs.predict_files import find_images, plan_outputs, read_reference, segment_files
    from percs.train.checkpoint import CheckpointError

    try:  # every input is checked before the model is loaded and anything is written
        images = find_images(args.images, out=args.out)
        reference_image, reference_mask = read_reference(args.reference_image, args.reference_mask,
                                                         args.reference_label)
        jobs = plan_outputs(images, args.reference_image, args.out, overwrite=args.overwrite)
        segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device,
                                              min_cell_probability=args.min_cell_probability)
        failures = segment_files(segmenter, reference_image, reference_mask, jobs, args.out,
                                 progress=not args.no_progress)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"percs predict: error: {error}", file=sys.stderr)
        return 1
    for failure in failures:
        print(f"percs predict: error: {failure}", file=sys.stderr)
    print(f"segmented {len(jobs) - len(failures)} of {len(jobs)} images into {args.out}")
    return 1 if failures else 0


def add_predict_command(sub) -> None:
    """Adds `percs predict` to the subcommands of the percs parser."""
    p = sub.add_parser("predict", help="segment the cells of a reference cell's type in image files")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files or folders of them (TIFF, PNG, JPEG; grey or colour; 8 or 16 bit)")
    p.add_argument("--checkpoint", required=True, help="a percs train checkpoint (best.pt / last.pt)")
    p.add_argument("--reference-image", required=True, help="the image holding the reference cell")
    p.add_argument("--reference-mask", required=True,
                   help="mask of the reference cell (one non-zero value), or a label image with --reference-label")
    p.add_argument("--reference-label", type=int, help="the reference cell's id in the --reference-mask label image")
    p.add_argument("--out", required=True,
                   help="folder for <stem>_labels.tif, <stem>_overlay.png, <stem>_cells.csv, reference_overlay.png")
    p.add_argument("--min-cell-probability", type=float,
                   help="drop cells whose mean same-type probability is below this (0..1; default: keep all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_predict)
