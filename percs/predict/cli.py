"""`percs predict`: parses the arguments and calls percs.predict.files with a percs.predict.api.Segmenter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 2 when an input (or the checkpoint) is refused, before the model is loaded and anything is
    written; 1 when some images failed while being segmented; 0 otherwise."""
    from percs.predict.api import Segmenter
    from percs.predict.files import segment_files
    from percs.train.checkpoint import CheckpointError

    try:
        reference_image, reference_mask, jobs = _checked_inputs(args)
    except _InputError as error:
        _print_errors(error.lines)
        return 2
    try:
        segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device,
                                              min_cell_probability=args.min_cell_probability)
    except (CheckpointError, ValueError, OSError) as error:
        _print_errors([str(error)])
        return 2
    print(segmenter.trained_on.summary())
    if segmenter.trained_on.synthetic:
        _warn("the model was trained on synthetic cells (percs.data.synthetic, as the demo's): it is unlikely "
              "to work on real images")
    try:
        failures = segment_files(segmenter, reference_image, reference_mask, jobs, args.out,
                                 progress=not args.no_progress, warn=_warn)
    except (ValueError, OSError) as error:
        _print_errors([str(error)])
        return 1
    _print_errors(failures)
    print(f"segmented {len(jobs) - len(failures)} of {len(jobs)} images into {args.out}")
    return 1 if failures else 0


class _InputError(Exception):
    """Inputs refused before the model loads: one message per problem, each naming the argument and file."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _warn(message: str) -> None:
    """One warning line on stderr, written past a running progress bar."""
    from tqdm import tqdm

    tqdm.write(f"percs predict: warning: {message}", file=sys.stderr)


def _print_errors(messages) -> None:
    for message in messages:
        print("percs predict: error: " + " ".join(str(message).splitlines()), file=sys.stderr)


def _checked_inputs(args: argparse.Namespace):
    """(reference image, reference mask (H, W) bool, image jobs) once every input passed its checks: the
    options, the checkpoint file, the reference, every image read whole, the outputs. _InputError otherwise."""
    from percs.predict.api import resolve_device
    from percs.data.io import DataFileError, check_file
    from percs.predict.files import check_images, find_images, plan_outputs, read_reference

    options = {Path(args.checkpoint): "--checkpoint", Path(args.reference_image): "--reference-image",
               Path(args.reference_mask): "--reference-mask"}

    def named(error: Exception) -> str:  # a file's problem, led by the argument that gave the file
        if isinstance(error, DataFileError):
            return f"{options.get(error.path, 'IMAGES')} {error}"
        return str(error)

    if args.min_cell_probability is not None and not 0 <= args.min_cell_probability <= 1:
        raise _InputError([f"--min-cell-probability must be in [0, 1], got {args.min_cell_probability}"])
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise _InputError([f"--device: {error}"]) from None
    try:
        check_file(args.checkpoint)
        reference_image, reference_mask = read_reference(args.reference_image, args.reference_mask,
                                                         args.reference_label)
        images = find_images(args.images, out=args.out)
    except ValueError as error:
        raise _InputError([named(error)]) from None
    problems = check_images(images)
    if problems:
        raise _InputError([f"IMAGES {problem}" for problem in problems])
    try:
        jobs = plan_outputs(images, args.reference_image, args.out, overwrite=args.overwrite)
    except ValueError as error:
        raise _InputError([str(error)]) from None
    return reference_image, reference_mask, jobs


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
