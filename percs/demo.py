"""`percs demo`: the whole method, end to end, on synthetic cells, with nothing read from disk or downloaded.

1. OUT/source: synthetic one-type images of the five `percs.data.synthetic` cell types;
2. OUT/benchmark: a PerCS benchmark built from them (train / val / test splits, test images mixed with pasted
   cells of other types, one fixed reference per query), as `percs data build` makes it;
3. OUT/run: PerCS-DINO trained by `percs.train.train`: by default a small ViT initialised at random and trained
   from scratch with its head (`--weights FILE`: a DINOv2 ViT-S/14 file instead, frozen, its features cached);
4. OUT/eval: `percs eval` of the trained checkpoint on the test queries (metrics.json, table.md, overlays of
   the worst queries), and OUT/eval-wrong-reference: the same with every reference swapped for a cell of a
   type absent from the query image, which must collapse the AP if the model uses its reference;
5. OUT/table.md: both as a table laid out like the paper's Table 1.

While it trains, the demo says after the first epoch and at each validation (with its AP@0.5) how long the
whole demo has left (`DemoProgress`).

Sized for a 2-core CPU (a few minutes); the same code runs on a GPU when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The demo's training run (percs.train.config keys). Paper choices kept: an Adam-family optimiser, LR / 10 for
# the last epochs, flips, the three losses; made small so it fits minutes on a CPU: 112-pixel crops and windows,
# batches of 4, a 4-block 96-wide ViT trained from scratch, a 96-wide head. Three keys that are not the paper's
# (see docs/training.md): the decoder's detail branch (synthetic round cells are 10-14 pixels across, one token),
# the similarity term in the same-type logit, and the contrastive loss on the backbone's features, which is what
# teaches a backbone that starts from random weights to tell the types apart (measured on this demo's
# benchmark, 640 steps: AP@0.5 on val 0.04 without the last two, 0.25 with the similarity term alone).
DEMO_TRAINING = {
    "model": {"backbone": "vits14", "backbone_weights": "", "backbone_depth": 4, "backbone_embed_dim": 96,
              "backbone_num_heads": 3,
              "head": {"dim": 96, "depth": 2, "num_heads": 4, "decoder_channels": [48, 24], "detail_channels": 16,
                       "similarity_logit": True}},
    "data": {"items_per_epoch": 64, "val_max_queries": 12,
             "sampling": {"crop_size": 112, "reference_size": 112}},
    "optim": {"optimizer": "adamw", "lr": 1e-3, "backbone_lr": 1e-3, "weight_decay": 0.05, "freeze_backbone": False,
              "grad_clip": 1.0},
    "loss": {"contrastive_on": "backbone"},
    "schedule": {"epochs": 60, "batch_size": 4, "lr_drop_epochs": 8},
    "train": {"seed": 0},
    "log": {"log_every": 16, "val_every": 10},
    "predict": {"window": 112, "stride": 84},
}
# With DINOv2 ViT-S/14 weights: the backbone is frozen and its features cached, only the head trains.
PRETRAINED_CHANGES = {
    "model": {"backbone_depth": 0, "backbone_embed_dim": 0, "backbone_num_heads": 0},
    "optim": {"freeze_backbone": True, "lr": 5e-4},
    "train": {"feature_cache_variants": 4},
    "schedule": {"batch_size": 1},
    "data": {"items_per_epoch": 0},
    "loss": {"contrastive_on": "fused"},
}


@dataclass(frozen=True)
class DemoConfig:
    """out: the demo's folder (must not exist or be empty). weights: "" (a random ViT trained from scratch) or
    a DINOv2 ViT-S/14 state-dict file. images_per_type, shape: the synthetic source images. epochs: training
    epochs (0: DEMO_TRAINING's). device: auto, cpu or cuda. seed: data and training."""

    out: Path
    weights: str = ""
    images_per_type: int = 8
    shape: tuple[int, int] = (192, 192)
    epochs: int = 0
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.images_per_type < 4:
            raise ValueError(f"images_per_type must be >= 4 (train, val and test need images), got {self.images_per_type}")
        if min(self.shape) < 112:
            raise ValueError(f"shape {self.shape} is smaller than the demo's 112-pixel crop")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.weights and not Path(self.weights).is_file():
            raise ValueError(f"weights file {self.weights} does not exist (a DINOv2 ViT-S/14 state dict)")


@dataclass(frozen=True)
class DemoResult:
    """Where everything went, the test AP@0.5 (mean over queries) with the real and the wrong references, and
    the seconds each stage took."""

    out: Path
    checkpoint: Path
    ap50: float
    wrong_reference_ap50: float
    seconds: dict[str, float]


def training_config(demo: DemoConfig, dataset: Path):
    """The resolved TrainConfig of the demo's run."""
    from percs.train.config import apply_overrides, config_from_dict

    data = _merge(DEMO_TRAINING, PRETRAINED_CHANGES) if demo.weights else _merge(DEMO_TRAINING, {})
    data["model"]["backbone_weights"] = str(demo.weights)
    data["data"]["dataset"] = str(dataset)
    data["train"].update(seed=demo.seed, device=demo.device)
    data["log"]["progress"] = demo.progress
    if demo.epochs:
        data["schedule"].update(epochs=demo.epochs, lr_drop_epochs=max(1, demo.epochs * 2 // 15))
    return config_from_dict(apply_overrides(data, []))


class DemoProgress:
    """The demo's `report` for `percs.train.train`: after the first epoch and at each validation (with its
    AP@0.5), one line through `say` with the time the whole demo has left: the training's own estimate (its pace
    so far) plus `eval_queries` queries at the last validation's seconds per query (both evaluations predict
    what a validation predicts). Before the first validation the evaluations are not timed yet."""

    def __init__(self, eval_queries: int, say: Callable[[str], None] = print):
        self.eval_queries, self.say = eval_queries, say
        self.query_seconds: float | None = None

    def __call__(self, record: dict) -> None:
        from percs.train.trainer import validation_line

        if record["event"] == "val":
            self.query_seconds = record["seconds"] / max(record["queries"], 1)
            self.say(f"{validation_line(record)}; {self.time_left(record['eta_s'])}")
        elif record["event"] == "epoch" and record["epoch"] == 0:
            self.say(f"epoch 1/{record['epochs']} done; {self.time_left(record['eta_s'])}")

    def time_left(self, train_seconds: float | None) -> str:
        """'demo: about 2.6 min left (training 2.2 min, evaluations 24 s)'."""
        from percs.train.trainer import duration

        train_seconds = train_seconds or 0.0
        if self.query_seconds is None:
            return f"demo: about {duration(train_seconds)} of training left, then the evaluations"
        evaluations = self.eval_queries * self.query_seconds
        return (f"demo: about {duration(train_seconds + evaluations)} left (training {duration(train_seconds)}, "
                f"evaluations {duration(evaluations)})")


def run_demo(demo: DemoConfig, say=print) -> DemoResult:
    """Runs the five steps of the module docstring into demo.out; `say` reports each step."""
    from percs.data.build import BuildConfig, build_benchmark
    from percs.data.synthetic import write_synthetic_dataset
    from percs.train import train

    out, seconds = Path(demo.out), {}
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; give a new folder")
    clock = time.perf_counter()
    say(f"[1/4] synthetic images -> {out / 'source'}")
    write_synthetic_dataset(out / "source", demo.images_per_type, mixed_images=0, shape=demo.shape, seed=demo.seed)
    benchmark = build_benchmark([out / "source"], out / "benchmark", BuildConfig(
        variants=1, val_fraction=0.15, test_fraction=0.25, seed=demo.seed, name="percs-demo"))
    test_queries = sum(benchmark.record(q.image).split == "test" for q in benchmark.queries)
    seconds["data"], clock = time.perf_counter() - clock, time.perf_counter()
    kind = f"DINOv2 weights {demo.weights}, frozen" if demo.weights else "a random ViT trained from scratch"
    say(f"[2/4] training PerCS-DINO ({kind}) -> {out / 'run'}")
    result = train(training_config(demo, out / "benchmark"), out / "run", report=DemoProgress(2 * test_queries, say))
    checkpoint = out / "run" / ("best.pt" if (out / "run" / "best.pt").is_file() else "last.pt")
    seconds["train"], clock = time.perf_counter() - clock, time.perf_counter()
    say(f"[3/4] evaluating {checkpoint.name} on the test queries -> {out / 'eval'}")
    metrics = _evaluate(demo, checkpoint, out / "benchmark", out / "eval", control=None)
    say(f"[4/4] control: wrong references -> {out / 'eval-wrong-reference'}")
    control = _evaluate(demo, checkpoint, out / "benchmark", out / "eval-wrong-reference", control="wrong-reference")
    seconds["eval"] = time.perf_counter() - clock
    from percs.evaluate.table import render_table

    (out / "table.md").write_text(render_table([metrics, control]))
    say(f"test AP@0.5 {_ap50(metrics):.3f} (wrong references: {_ap50(control):.3f}); trained "
        f"{result.state.global_step} steps; table: {out / 'table.md'}")
    return DemoResult(out, checkpoint, _ap50(metrics), _ap50(control), seconds)


def _evaluate(demo: DemoConfig, checkpoint: Path, benchmark: Path, out: Path, control: str | None) -> dict:
    from percs.api import Segmenter, load_model
    from percs.data.format import load_dataset
    from percs.evaluate.percs_method import PercsMethod, method_name
    from percs.evaluate.runner import EvalConfig, run_eval

    model, train_config = load_model(checkpoint, demo.device)
    name = method_name(train_config.model, model.generic)
    method = PercsMethod(Segmenter(model, train_config.predict), name, {"checkpoint": str(checkpoint)})
    config = EvalConfig(split="test", control=control, progress=demo.progress)
    return run_eval(method, load_dataset(benchmark), out, config, method_key="percs")


def _ap50(metrics: dict) -> float:
    """The headline AP@0.5 of a metrics.json object: the mean over queries."""
    return float(metrics["overall"]["iou"]["0.5"]["mean"]["ap"]["value"])


def _merge(base: dict, changes: dict) -> dict:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in changes.items():
        merged.setdefault(section, {}).update(values)
    merged["model"]["head"] = dict(merged["model"]["head"])
    return merged




def cmd_demo(args) -> int:
    import sys

    try:
        demo = DemoConfig(Path(args.out), args.weights or "", args.images_per_type, epochs=args.epochs,
                          device=args.device, seed=args.seed)
        result = run_demo(demo)
    except (ValueError, OSError) as error:
        print(f"percs demo: error: {error}", file=sys.stderr)
        return 1
    print((result.out / "table.md").read_text())
    minutes = sum(result.seconds.values()) / 60
    print(f"done in {minutes:.1f} min: {', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())}")
    return 0


def add_demo_command(sub) -> None:
    """Adds `percs demo` to the subcommands of the percs parser."""
    p = sub.add_parser("demo", help="synthetic benchmark -> train -> evaluate -> table, offline, a few CPU minutes")
    p.add_argument("--out", default="percs-demo", help="new or empty folder for everything (default ./percs-demo)")
    p.add_argument("--weights", help="a DINOv2 ViT-S/14 file: frozen pretrained backbone instead of a random ViT")
    p.add_argument("--images-per-type", type=int, default=8, help="synthetic images per cell type (default 8)")
    p.add_argument("--epochs", type=int, default=0, help="training epochs (default: the demo's 60)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where training and evaluation run (default auto: CUDA when usable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the training (default 0)")
    p.set_defaults(func=cmd_demo)


__all__ = ["DEMO_TRAINING", "DemoConfig", "DemoProgress", "DemoResult", "add_demo_command", "run_demo",
           "training_config"]
