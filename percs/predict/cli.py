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
        reference_image, reference_mask, region, jobs = _checked_inputs(args)
        extra = _extra_references(args, reference_image, region)
    except _InputError as error:
        _print_errors(error.lines)
        return 2
    try:
        predict = {key: value for key, value in (("precision", args.precision), ("flow_threshold", args.flow_threshold),
                                                 ("flips", args.flips), ("reference_diameter", args.reference_diameter))
                   if value is not None}
        segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, predict or None,
                                              min_cell_probability=args.min_cell_probability,
                                              backbone_weights=args.backbone_weights)
        mask = region.mask if region else reference_mask
        segmenter.predictor.scale_of(mask)  # a reference out of the scale's range is refused here, before any image
        blockwise = _blockwise_config(args, segmenter, mask, jobs)
        if extra is not None and segmenter.instance is None:
            raise ValueError("several references or negatives need a model with an instance-level decision (the "
                             "default model has one)")
        if args.decision_margin is not None:
            if segmenter.instance is None:
                raise ValueError("--decision-margin needs a model with an instance-level decision (the default "
                                 "model has one)")
            if blockwise is not None:
                raise ValueError("--decision-margin needs whole images: not with large images segmented block by "
                                 "block (it would keep cells in every block)")
            segmenter.instance.margin = args.decision_margin
        if args.expand is not None:
            if segmenter.instance is None:
                raise ValueError("--expand needs a model with an instance-level decision (the default model has one)")
            segmenter.instance.expand = args.expand
    except (CheckpointError, ValueError, OSError) as error:
        _print_errors([str(error)])
        return 2
    print(segmenter.trained_on.summary())
    if segmenter.trained_on.synthetic:
        _warn("the model was trained on synthetic cells (percs.data.synthetic, as the demo's): it is unlikely "
              "to work on real images")
    try:
        failures = segment_files(segmenter, reference_image, reference_mask, jobs, args.out,
                                 progress=not args.no_progress, warn=_warn, blockwise=blockwise,
                                 reference_region=region, extra=extra)
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


def _blockwise_config(args: argparse.Namespace, segmenter, reference_mask, jobs):
    """The BlockwiseConfig of the options, or None without blockwise jobs. ValueError naming the option when
    the block size is smaller than the overlap, or the model cannot be run block by block."""
    if not any(job.blockwise for job in jobs):
        return None
    from percs.predict.blockwise import BlockwiseConfig, default_overlap

    window = segmenter.predictor.config.window
    overlap = args.overlap if args.overlap is not None else default_overlap(reference_mask, window)
    if args.block_size < overlap:
        what = "--overlap" if args.overlap is not None else \
            f"the overlap (the window {window} + 2 x the reference cell's diameter)"
        raise ValueError(f"--block-size {args.block_size} is smaller than {what}, {overlap} pixels: choose a block "
                         f"size of at least {overlap}")
    return BlockwiseConfig(block_size=args.block_size, overlap=args.overlap, workers=args.workers,
                           scheduler=args.dask_scheduler, progress=not args.no_progress, restart=args.overwrite)


def _checked_inputs(args: argparse.Namespace):
    """(reference image, reference mask (H, W) bool, reference region, image jobs) once every input passed its
    checks: the options, the checkpoint file, the reference, every image (read whole, or a large image's store),
    the outputs. The reference is an image and mask, or (for a large reference image) a ReferenceRegion with
    image and mask None. _InputError otherwise."""
    from percs.predict.api import resolve_device
    from percs.data.io import DataFileError, check_file
    from percs.data.scale import check_reference_diameter
    from percs.predict.predictor import check_flow_threshold
    from percs.predict.files import check_images, find_images, plan_outputs
    from percs.predict.large_images import is_blockwise
    from percs.predict.shipped import given_weights_file

    options = {Path(args.reference_image): "--reference-image", Path(args.reference_mask): "--reference-mask"}
    if args.checkpoint:
        options[Path(args.checkpoint)] = "--checkpoint"

    def named(error: Exception) -> str:  # a file's problem, led by the argument that gave the file
        if isinstance(error, DataFileError):
            return f"{options.get(error.path, 'IMAGES')} {error}"
        return str(error)

    if args.min_cell_probability is not None and not 0 <= args.min_cell_probability <= 1:
        raise _InputError([f"--min-cell-probability must be in [0, 1], got {args.min_cell_probability}"])
    if args.decision_margin is not None and not 0 <= args.decision_margin < float("inf"):
        raise _InputError([f"--decision-margin must be a finite number >= 0, got {args.decision_margin}"])
    if args.expand is not None and not 0 <= args.expand <= 1:
        raise _InputError([f"--expand must be a number in [0, 1], got {args.expand}"])
    try:
        if args.flow_threshold is not None:
            check_flow_threshold(args.flow_threshold, "--flow-threshold")
        if args.reference_diameter is not None:
            check_reference_diameter(args.reference_diameter, "--reference-diameter")
    except ValueError as error:
        raise _InputError([str(error)]) from None
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise _InputError([f"--device: {error}"]) from None
    _check_blockwise_options(args)
    try:
        if args.checkpoint:
            check_file(args.checkpoint)
        given_weights_file(args.backbone_weights)
        reference_image, reference_mask, region = _read_reference(args)
        images = find_images(args.images, out=args.out)
    except ValueError as error:
        raise _InputError([named(error)]) from None
    forced = args.blockwise or args.dask_scheduler is not None
    blockwise = [is_blockwise(Path(image), forced) for image in images]
    problems = check_images(images, blockwise)
    if problems:
        raise _InputError([f"IMAGES {problem}" for problem in problems])
    try:
        jobs = plan_outputs(images, args.reference_image, args.out, overwrite=args.overwrite, blockwise=blockwise)
    except ValueError as error:
        raise _InputError([str(error)]) from None
    return reference_image, reference_mask, region, jobs


def _check_blockwise_options(args: argparse.Namespace) -> None:
    problems = []
    if args.block_size <= 0 or args.block_size % 16:
        problems.append(f"--block-size must be a positive multiple of 16, got {args.block_size}")
    if args.overlap is not None and args.overlap < 0:
        problems.append(f"--overlap must be >= 0, got {args.overlap}")
    elif args.overlap is not None and args.block_size < args.overlap:
        problems.append(f"--block-size {args.block_size} is smaller than --overlap {args.overlap}")
    if args.workers < 1:
        problems.append(f"--workers must be at least 1, got {args.workers}")
    if problems:
        raise _InputError(problems)


def _read_reference(args: argparse.Namespace):
    """(image, mask, None) for a reference image read whole; (None, None, ReferenceRegion) for a large one."""
    from percs.predict.files import read_reference, read_reference_mask
    from percs.predict.large_images import is_blockwise, reference_region

    path = Path(args.reference_image)
    if path.exists() and is_blockwise(path):
        if args.reference_offset is None:
            raise ValueError(f"--reference-offset Y,X is needed: the reference image {path} is large (read block by "
                             "block), so --reference-mask is a small mask placed at that offset")
        mask = read_reference_mask(args.reference_mask, _first(args.reference_label))
        return None, None, reference_region(path, mask, args.reference_offset)
    image, mask = read_reference(path, args.reference_mask, _first(args.reference_label), args.reference_offset)
    return image, mask, None


def _first(labels: list[int] | None) -> int | None:
    return labels[0] if labels else None


def _extra_references(args: argparse.Namespace, reference_image, region):
    """(positives, negatives) [(image, mask)] beyond the first reference cell, or None when there are none:
    the other --reference-label cells, --negative-label cells (of the --reference-mask label image), and the
    cells of each --extra-reference / --extra-negative IMAGE MASK [LABEL ...]. _InputError otherwise."""
    from percs.predict.files import read_reference

    same = [(args.reference_image, args.reference_mask, [label]) for label in (args.reference_label or [])[1:]]
    negatives = [(args.reference_image, args.reference_mask, [label]) for label in args.negative_label or []]
    if args.negative_label and not args.reference_label:
        raise _InputError(["--negative-label names cells of a label image: give --reference-label too"])
    groups = [same + _extra_option(args.extra_reference or [], "--extra-reference"),
              negatives + _extra_option(args.extra_negative or [], "--extra-negative")]
    if not groups[0] and not groups[1]:
        return None
    if region is not None or args.reference_offset is not None:
        raise _InputError(["several references are read from whole images: not with --reference-offset"])
    try:
        return tuple([read_reference(image, mask, label) for image, mask, labels in group for label in labels]
                     for group in groups)
    except ValueError as error:
        raise _InputError([str(error)]) from None


def _extra_option(values: list[list[str]], option: str) -> list[tuple[str, str, list]]:
    """[(image, mask, labels)] of repeated `option IMAGE MASK [LABEL ...]` (labels [None]: MASK is one cell)."""
    parsed = []
    for given in values:
        if len(given) < 2:
            raise _InputError([f"{option} takes IMAGE MASK [LABEL ...], got {' '.join(given)}"])
        try:
            labels = [int(v) for v in given[2:]] or [None]
        except ValueError:
            raise _InputError([f"{option} {' '.join(given)}: LABEL must be integers"]) from None
        parsed.append((given[0], given[1], labels))
    return parsed


def _offset(text: str) -> tuple[int, int]:
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X (two integers, pixels), got {text!r}") from None
    return y, x


def add_predict_command(sub) -> None:
    """Adds `percs predict` to the subcommands of the percs parser."""
    p = sub.add_parser("predict", help="segment the cells of a reference cell's type in image files")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files or folders of them (TIFF, PNG, JPEG; grey or colour; 8 or 16 bit), and Zarr / "
                        "OME-Zarr stores")
    p.add_argument("--checkpoint", help="a percs model: a percs train checkpoint (best.pt / last.pt) or a "
                                        "`percs export-model` file (default: the model shipped with percs)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="DINOv2 weights for a model shipped without them (the default model): default "
                        "$PERCS_SHARED/weights/dinov2_vits14_pretrain.pth, else the official download")
    p.add_argument("--reference-image", required=True, help="the image holding the reference cell")
    p.add_argument("--reference-mask", required=True,
                   help="mask of the reference cell (one non-zero value), or a label image with --reference-label")
    p.add_argument("--reference-label", type=int, action="append", metavar="LABEL",
                   help="the reference cell's id in the --reference-mask label image; repeated: more positive "
                        "references (several references need a model with an instance-level decision)")
    p.add_argument("--negative-label", type=int, action="append", metavar="LABEL",
                   help="a cell of the --reference-mask label image that is NOT of the type, a negative reference "
                        "(repeatable)")
    p.add_argument("--extra-reference", nargs="+", action="append", metavar="ARG",
                   help="IMAGE MASK [LABEL ...]: more positive references from another image (repeatable; put the "
                        "IMAGES before it, or end its values with --)")
    p.add_argument("--extra-negative", nargs="+", action="append", metavar="ARG",
                   help="IMAGE MASK [LABEL ...]: negative references from another image (repeatable)")
    p.add_argument("--out", required=True,
                   help="folder for <stem>_labels.tif, <stem>_overlay.png, <stem>_cells.csv, reference_overlay.png")
    p.add_argument("--min-cell-probability", type=float,
                   help="drop cells whose mean same-type probability is below this (0..1; default: keep all)")
    p.add_argument("--decision-margin", type=float, metavar="D",
                   help="with an instance-level model (the shipped one): keep the cells whose same-type logit is "
                        "within D of the image's best cell's, instead of those over the model's threshold (whole "
                        "images only; docs/type_decision.md)")
    p.add_argument("--expand", type=float, metavar="A",
                   help="with an instance-level model: the weight in [0, 1] of the image's best match as a second "
                        "reference (0: the reference alone; default: the model's, 0.5 for the shipped one, whose "
                        "threshold was chosen with it; docs/type_decision.md)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default=None,  # percs.model.precision
                   help="the network's arithmetic: auto (bfloat16 on a CPU with AMX or AVX512-BF16, else float32), "
                        "float32 or bfloat16 (default: the model's, auto for the shipped one)")
    p.add_argument("--flow-threshold", type=float, metavar="F",
                   help="largest flow error of a kept cell (default: the model's, 0.6 for the shipped one; "
                        "Cellpose's 0.4 keeps fewer, 0 keeps every cell the flows form)")
    p.add_argument("--flips", type=int, choices=(1, 2, 4), metavar="N",
                   help="average the network's output over the image and its flips: 1 (none), 2 or 4 views, each "
                        "one more network pass (default: the model's, 1)")
    p.add_argument("--reference-diameter", type=float, metavar="D",
                   help="resize each image so that the reference cell is D px across before the network runs, "
                        "labels back at the image's size; 0 runs at the image's own scale (default: the model's, "
                        "what it was trained with)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("large images", "Zarr / OME-Zarr stores and TIFFs over 64 MP are segmented block by "
                             "block on dask and written as <stem>_labels.zarr (and .tif up to 256 MP) with "
                             "<stem>_cells.csv; a killed run started again resumes its finished blocks")
    g.add_argument("--reference-offset", type=_offset, metavar="Y,X",
                   help="top-left pixel of a --reference-mask smaller than the reference image (needed when the "
                        "reference image is large: the mask is then a small file around the cell)")
    g.add_argument("--block-size", type=int, default=2048,
                   help="side of a block's core in pixels, a multiple of 16 (default 2048); also the Zarr chunk")
    g.add_argument("--overlap", type=int,
                   help="context added around each block, in pixels (default: the model's window + 2 x the "
                        "reference cell's diameter); at most --block-size")
    g.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="run the blocks on this dask.distributed scheduler (e.g. tcp://10.0.0.5:8786; workers must "
                        "see --out and the images at the same paths); implies --blockwise")
    g.add_argument("--workers", type=int, default=1,
                   help="threads of dask's local scheduler when there is no --dask-scheduler (default 1)")
    g.add_argument("--blockwise", action="store_true", help="segment every image block by block, whatever its size")
    p.set_defaults(func=cmd_predict)
