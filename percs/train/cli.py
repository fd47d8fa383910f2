"""`percs train`: parses the arguments, resolves the config and calls percs.train.train."""

from __future__ import annotations

import argparse
import sys


def cmd_train(args: argparse.Namespace) -> int:
    from percs.train import CheckpointError, ConfigError, NonFiniteLossError, load_config, resolve_resume_config, train

    try:
        config = load_config(args.config, args.set) if args.config or args.set else None
        if args.resume:
            config = resolve_resume_config(config, args.out)
        elif config is None:
            raise ConfigError("--config is required (or --resume to continue the run in --out)")
        result = train(config, args.out, resume=args.resume)
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError, OSError) as error:
        print(f"percs train: error: {error}", file=sys.stderr)
        return 1
    ap = result.last_validation["ap50"] if result.last_validation else None
    print(f"trained {result.state.global_step} steps into {result.run_dir} (last validation AP@0.5: {ap})")
    return 0


def add_train_command(sub) -> None:
    """Adds `percs train` to the subcommands of the percs parser."""
    p = sub.add_parser("train", help="train a PerCS-DINO model (single process, or one per device under torchrun)")
    p.add_argument("--config", help="TOML, YAML (with PyYAML) or JSON config file (see percs.train.config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 --set data.dataset=/data/bench (repeatable)")
    p.add_argument("--out", required=True, help="run folder: config.json, log.jsonl, last.pt, best.pt")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=cmd_train)
