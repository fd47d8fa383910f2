"""The `percs` command line: each subcommand parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_info(args: argparse.Namespace) -> int:
    from percs.info import info

    print(json.dumps(info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `percs` parser. Its modules import only argparse-level code (no torch, SciPy or model code), so that
    `percs --help` answers at once; each command imports what it runs."""
    parser = argparse.ArgumentParser(prog="percs", description="Personalized cell segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print versions and the kernel backends (compiled, usable here) as JSON")
    p.set_defaults(func=cmd_info)

    from percs.data.cli import add_data_commands  # `percs data ...`: parsers next to the library they call

    add_data_commands(sub)

    from percs.train.cli import add_export_model_command, add_train_command, add_train_scorer_command

    add_train_command(sub)  # `percs train`, `train-scorer`, `export-model`
    add_train_scorer_command(sub)
    add_export_model_command(sub)

    from percs.evaluate.cli import add_eval_commands  # `percs eval`, `percs eval-table`

    add_eval_commands(sub)

    from percs.predict.cli import add_predict_command  # `percs predict`

    add_predict_command(sub)

    from percs.demo import add_demo_command  # `percs demo`

    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
