"""`percs eval` and `percs eval-table`: parse, build the method and call percs.evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _Failure(Exception):
    """A user error already phrased for the command line (names the option)."""


def cmd_eval(args: argparse.Namespace) -> int:
    from percs.evaluate.methods import MethodUnavailable
    from percs.evaluate.runner import EvalConfig, EvalError, run_eval
    from percs.evaluate.shots import ShotsConfig
    from percs.evaluate.summary import BootstrapConfig
    from percs.evaluate.table import ordinal
    from percs.train.checkpoint import CheckpointError

    try:  # every input (options, checkpoint file, dataset, split, out) is checked before a model is loaded
        entry, dataset = _method_and_dataset(args)
        bootstrap = BootstrapConfig(resamples=args.bootstrap, seed=args.bootstrap_seed)
        shots = ShotsConfig(args.shots, args.negatives, args.shots_seed, args.negatives_from, args.positives_from)
        config = EvalConfig(args.split, args.control, args.control_seed, bootstrap, args.worst, args.progress,
                            args.every, shots)
        _check_split_and_out(dataset, args)
        method = entry.factory(args, dataset)
    except (_Failure, ValueError, OSError, MethodUnavailable, CheckpointError, EvalError) as error:
        print("percs eval: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    try:
        metrics = run_eval(method, dataset, args.out, config, method_key=args.method)
    except EvalError as error:  # anything else is a bug in a method or in percs: keep its traceback
        print(f"percs eval: error: {error}", file=sys.stderr)
        return 1
    at50 = metrics["overall"]["iou"]["0.5"]["mean"]["ap"]
    control = metrics["control"]
    skipped = f" ({control['skipped_queries']} without a wrong reference left out)" if control else ""
    subset = metrics["query_subset"]
    subset = f" (every {ordinal(subset['every'])} of {subset['split_queries']})" if subset else ""
    subset += f" with {shots.label()}" if shots.active else ""
    print(f"{metrics['method']} on {metrics['dataset']['name']} {metrics['split']}: {metrics['n_queries']} queries"
          f"{subset}{skipped}, AP@0.5 {at50['value']:.3f} [{at50['ci'][0]:.3f}, {at50['ci'][1]:.3f}]; wrote {args.out}")
    return 0


def _method_and_dataset(args: argparse.Namespace):
    from percs.data.format import load_dataset
    from percs.data.io import DataFileError, check_file
    from percs.evaluate.methods import get_method

    entry = get_method(args.method)
    if getattr(args, "checkpoint", None):  # a method's model file: checked before the (slower) dataset
        try:
            check_file(args.checkpoint)
        except DataFileError as error:
            raise _Failure(f"--checkpoint {error}") from None
    try:
        dataset = load_dataset(args.data, verify=args.verify)
    except (DataFileError, ValueError, OSError) as error:
        raise _Failure(f"--data {args.data}: {error}") from None
    return entry, dataset


def _check_split_and_out(dataset, args: argparse.Namespace) -> None:
    from percs.evaluate.runner import split_queries

    try:
        split_queries(dataset, args.split)
    except ValueError as error:
        raise _Failure(f"--split: {error}") from None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _Failure(f"--out {out} exists and is not an empty folder")


def cmd_eval_table(args: argparse.Namespace) -> int:
    from percs.evaluate.report import read_metrics
    from percs.evaluate.table import render_table

    try:
        text = render_table([read_metrics(path) for path in args.runs], args.digits, args.paired)
    except ValueError as error:
        print(f"percs eval-table: error: {error}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _add_eval(sub) -> None:
    from percs.evaluate.controls import CONTROLS
    from percs.evaluate.methods import available_methods

    methods = available_methods()
    # Methods may share an option (same flag, dest and meaning, e.g. --checkpoint): the last definition stands.
    p = sub.add_parser("eval", conflict_handler="resolve",
                       help="score a method on the fixed queries of a benchmark split (metrics.json, table.md)")
    p.add_argument("--method", required=True, metavar="NAME",
                   help="one of: " + "; ".join(f"{name} ({entry.help})" for name, entry in methods.items()))
    p.add_argument("--data", required=True, type=Path, help="a built percs benchmark (percs data build)")
    p.add_argument("--split", default="test", help="the split whose queries are run (default test)")
    p.add_argument("--out", required=True, type=Path,
                   help="new folder: metrics.json, table.md, predictions/, worst/")
    p.add_argument("--device", default="auto", help="torch device for methods with a model (default auto)")
    p.add_argument("--control", choices=CONTROLS, help="wrong-reference: each query's reference replaced by a "
                                                       "cell of a type absent from the query image")
    p.add_argument("--control-seed", type=int, default=0, help="seed of the control's choices (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the images for the 95%% intervals (default 1000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="run every K-th query of the split (default 1: all); for methods too slow for a whole "
                        "split, marked in metrics.json and the table's row")
    p.add_argument("--shots", type=int, default=1, metavar="K",
                   help="positive references per query, the fixed one included (default 1); the K - 1 more are "
                        "random cells of the target type from other images of the split (seeded, in metrics.json)")
    p.add_argument("--positives-from", choices=("other-images", "query-image"), default="other-images",
                   help="other-images (default): the --shots positives come from other images of the split; "
                        "query-image: from the query image itself (cells a user clicks there; left out of the scoring)")
    p.add_argument("--negatives", type=int, default=0, metavar="M",
                   help="negative references per query (default 0): random cells of other types in the query "
                        "image, the cells a user would click as wrongly taken")
    p.add_argument("--negatives-from", choices=("random", "false-positives"), default="random",
                   help="random (default): other-type cells of the query image, the same for every method; "
                        "false-positives: other-type cells the method took with the positives alone (a user's "
                        "clicks on a result; one more pass per query)")
    p.add_argument("--shots-seed", type=int, default=0, help="seed of the --shots / --negatives draws (default 0)")
    p.add_argument("--worst", type=int, default=8, metavar="N", help="overlays of the N worst queries (default 8)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the dataset's sha256 checks")
    for name, entry in methods.items():
        if entry.add_arguments is not None:
            entry.add_arguments(p.add_argument_group(f"--method {name}", entry.help))
    p.set_defaults(func=cmd_eval)


def add_eval_commands(sub) -> None:
    """Adds `percs eval` and `percs eval-table` to the subcommands of the percs parser."""
    _add_eval(sub)
    p = sub.add_parser("eval-table", help="merge metrics.json of several runs into one Table-1-style markdown")
    p.add_argument("runs", nargs="+", type=Path, help="eval output folders (or their metrics.json)")
    p.add_argument("--out", type=Path, help="write the markdown here (default: standard output)")
    p.add_argument("--digits", type=int, default=3, help="decimals of every figure (default 3)")
    p.add_argument("--paired", action="store_true",
                   help="add each run's mean AP minus that of the first run on its dataset and split, over the same "
                        "queries, with an interval from bootstrap draws of images shared by both runs")
    p.set_defaults(func=cmd_eval_table)
