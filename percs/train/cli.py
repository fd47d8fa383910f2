"""`percs train`: parses the arguments, resolves the config and calls percs.train.train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def cmd_train_scorer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from percs.baselines.generic import generic_overrides
    from percs.predict.predictor import check_flow_threshold
    from percs.train.scorer import ScorerTraining, train_scorer

    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        print(f"percs train-scorer: error: --backbone-weights {args.backbone_weights} does not exist",
              file=sys.stderr)
        return 2
    if bool(args.generic_checkpoint) != bool(args.model_out):
        print("percs train-scorer: error: --generic-checkpoint and --model-out go together", file=sys.stderr)
        return 2
    predict = generic_overrides(args)
    if predict and not args.generic_checkpoint:
        print("percs train-scorer: error: --flow-threshold and --flips set the attached model's; they need "
              "--generic-checkpoint", file=sys.stderr)
        return 2
    try:
        if args.flow_threshold is not None:
            check_flow_threshold(args.flow_threshold, "--flow-threshold")
    except ValueError as error:
        print(f"percs train-scorer: error: {error}", file=sys.stderr)
        return 2
    if args.tune_blocks < 0 or not 0 < args.tune_lr < float("inf"):
        print(f"percs train-scorer: error: --tune-blocks must be >= 0 (got {args.tune_blocks}) and --tune-lr a "
              f"finite number > 0 (got {args.tune_lr})", file=sys.stderr)
        return 2
    if args.tune_blocks and args.embedding != "window":
        print("percs train-scorer: error: --tune-blocks needs --embedding window (cells embedded alone, through "
              "the tuned blocks)", file=sys.stderr)
        return 2
    if not (args.context_window == 0 or 1 <= args.context_window < float("inf")) or (
            args.context_window and args.embedding != "window"):
        print(f"percs train-scorer: error: --context-window must be 0 (none) or a finite number >= 1, with "
              f"--embedding window (got {args.context_window:g}, {args.embedding})", file=sys.stderr)
        return 2
    if args.objective == "types" and args.tune_blocks:
        print("percs train-scorer: error: --objective types reads the frozen backbone: --tune-blocks must be 0",
              file=sys.stderr)
        return 2
    if not 0 <= args.type_l2 < float("inf"):
        print(f"percs train-scorer: error: --type-l2 must be a finite number >= 0, got {args.type_l2:g}",
              file=sys.stderr)
        return 2
    if args.cell_flips and args.objective != "types":
        print("percs train-scorer: error: --cell-flips applies to --objective types (a type classifier)",
              file=sys.stderr)
        return 2
    if not 0 <= args.expand <= 1:
        print(f"percs train-scorer: error: --expand must be a number in [0, 1], got {args.expand:g}", file=sys.stderr)
        return 2
    if args.generic_checkpoint and not Path(args.generic_checkpoint).is_file():
        print(f"percs train-scorer: error: --generic-checkpoint {args.generic_checkpoint} does not exist",
              file=sys.stderr)
        return 2
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"percs train-scorer: error: --data {args.data} is not a built benchmark (no manifest.json)",
              file=sys.stderr)
        return 2
    try:
        settings = ScorerTraining(items=args.items, epochs=args.epochs, lr=args.lr, seed=args.seed,
                                  embedding=args.embedding, reference_sampling=args.reference_sampling,
                                  window_size=args.window_size, context=args.context, rank_weight=args.rank_weight,
                                  tune_blocks=args.tune_blocks, tune_lr=args.tune_lr,
                                  context_window=args.context_window, objective=args.objective,
                                  type_l2=args.type_l2, cell_flips=args.cell_flips)
        digest = train_scorer(args.data, args.backbone_weights, args.out, settings, args.backbone, args.cache)
        print(f"wrote {args.out} (sha256 {digest})")
        if args.generic_checkpoint:
            from percs.evaluate.instance_method import tune_threshold
            from percs.train.scorer import attach_scorer

            threshold = args.threshold
            if threshold is None:
                threshold, ap = tune_threshold(args.generic_checkpoint, args.out, args.data, args.val_queries,
                                               backbone_weights=args.backbone_weights,
                                               predict=predict, expand=args.expand)
                print(f"threshold {threshold:g} chosen on val (mean AP@0.5 {ap:.3f})")
            attach_scorer(args.generic_checkpoint, args.out, threshold, args.model_out, args.backbone_weights,
                          predict, args.expand)
            print(f"wrote {args.model_out}: {args.generic_checkpoint} with the scorer attached (percs predict, "
                  "percs eval --method percs and Segmenter load it)")
    except (ValueError, OSError) as error:
        print(f"percs train-scorer: error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from percs.predict.api import ModelLoadError
    from percs.predict.shipped import export_head
    from percs.train.checkpoint import CheckpointError

    try:
        record = export_head(args.checkpoint, args.out)
    except (CheckpointError, ModelLoadError, ValueError, OSError) as error:
        print("percs export-model: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB, head in float16; backbone {record['backbone']}, fingerprint "
          f"{record['backbone_fingerprint'][:12]}...)")
    return 0


def add_export_model_command(sub) -> None:
    """Adds `percs export-model` to the subcommands of the percs parser."""
    p = sub.add_parser("export-model", help="write a model without its frozen DINOv2 backbone, the head in float16 "
                                            "(what percs ships; loaded with the backbone weights given at use)")
    p.add_argument("--checkpoint", required=True, help="a percs train checkpoint (with a scorer attached or not)")
    p.add_argument("--out", required=True, help="the head-only model file to write")
    p.set_defaults(func=cmd_export_model)


def add_train_scorer_command(sub) -> None:
    """Adds `percs train-scorer` to the subcommands of the percs parser."""
    p = sub.add_parser("train-scorer", help="train the instance-level cell scorer (percs eval --method "
                                            "percs-instance) on a benchmark's train split, frozen DINOv2 features")
    p.add_argument("--data", required=True, help="a built benchmark (percs data build); its train split is used")
    p.add_argument("--backbone", default="vits14", help="DINOv2 variant (default vits14)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="its weights, e.g. ../shared/weights/dinov2_vits14_pretrain.pth (default: the official "
                        "checkpoint from torch's download cache); must be the generic model's frozen backbone")
    p.add_argument("--items", type=int, default=3000, help="training draws (crops) whose cells become pairs")
    p.add_argument("--epochs", type=int, default=1, help="passes over the collected pairs (default 1)")
    p.add_argument("--embedding", choices=("window", "patch"), default="window",
                   help="window (default): each cell embedded alone, resampled to a fixed size; patch: the image's "
                        "DINOv2 features pooled under the cell")
    p.add_argument("--window-size", type=int, default=56,
                   help="window embedding: each cell's window resampled to this many pixels (a multiple of 14)")
    p.add_argument("--context", type=float, default=2.0,
                   help="window embedding: the window's side over the cell's equivalent diameter (default 2)")
    p.add_argument("--context-window", type=float, default=0.0, metavar="SIDE",
                   help="window embedding: also embed each cell in a second window SIDE x its diameter wide (its "
                        "surroundings; default 0: none)")
    p.add_argument("--reference-sampling", choices=("type", "cell"), default="type",
                   help="the reference type of a draw: uniformly among the crop's types (default, as benchmark "
                        "queries ask each type) or that of a uniformly drawn cell (as percs train)")
    p.add_argument("--objective", choices=("pairs", "types"), default="pairs",
                   help="pairs (default): a metric learned on cell pairs of training draws, for any types; types: "
                        "a classifier of the train split's cell types on every true cell, a cell kept by the dot "
                        "product of its type posterior and the reference's (only where evaluation types are "
                        "training types, as consep's; --items, --epochs, --lr, --rank-weight do not apply)")
    p.add_argument("--type-l2", type=float, default=0.02,
                   help="--objective types: the L2 weight on the classifier's weights (default 0.02)")
    p.add_argument("--cell-flips", action="store_true",
                   help="--objective types: embed every train cell in its four flips (x, y, both), each one sample, "
                        "and average each cell's and the reference's vectors over the four at inference (4x the "
                        "embedding time; default: one view)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--rank-weight", type=float, default=0.0,
                   help="weight of a within-image ranking loss (each crop's same-type cells above its others) "
                        "added to the cross-entropy (default 0: none; 5 measured best on percs-mini val)")
    p.add_argument("--tune-blocks", type=int, default=0, metavar="K",
                   help="fine-tune the backbone's last K blocks with the scorer, on tokens kept before them in the "
                        "pairs (default 0: frozen features, the paper's; window embedding only)")
    p.add_argument("--tune-lr", type=float, default=1e-4, help="the tuned blocks' AdamW learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the fit")
    p.add_argument("--cache", metavar="FILE", help="pairs cache (.pt): read when it exists, else written")
    p.add_argument("--out", required=True, help="the scorer file to write (a .sha256 file is written beside it)")
    p.add_argument("--generic-checkpoint", metavar="FILE",
                   help="a generic percs model (model.head.generic=true) on the same frozen backbone: with "
                        "--model-out, also write it with the scorer attached, one model file (a head-only file, "
                        "such as the shipped model, takes its backbone from --backbone-weights)")
    p.add_argument("--model-out", metavar="FILE", help="where to write the model with the scorer attached")
    p.add_argument("--threshold", type=float,
                   help="the attached scorer's probability threshold (default: chosen on --data's val split)")
    p.add_argument("--expand", type=float, default=0.0, metavar="A",
                   help="the attached model's weight in [0, 1] of the image's best match as a second reference, "
                        "also while the threshold is chosen on val (default 0: the reference alone; 0.5 for the "
                        "shipped model)")
    p.add_argument("--val-queries", type=int, default=0, metavar="N",
                   help="choose the threshold on the first N val queries (default 0: all)")
    p.add_argument("--flow-threshold", type=float, metavar="F",
                   help="the attached model's flow check (predict.flow_threshold), also while the threshold is "
                        "chosen on val (default: the generic checkpoint's; 0.6 chosen on percs-mini val for the "
                        "shipped model, Cellpose's 0.4 before)")
    p.add_argument("--flips", type=int, choices=(1, 2, 4), metavar="N",
                   help="the attached model's flip averaging (predict.flips: 1, 2 or 4 views), also while the "
                        "threshold is chosen on val (default: the generic checkpoint's; 2 for the shipped model)")
    p.set_defaults(func=cmd_train_scorer)
