"""A tiny synthetic benchmark and tiny training configs for the trainer tests."""

from __future__ import annotations

from pathlib import Path

from percs.data.build import BuildConfig, build_benchmark
from percs.data.synthetic import write_synthetic_dataset
from percs.train.config import TrainConfig, config_from_dict


def make_benchmark(root: Path) -> Path:
    """Five 112 x 112 synthetic images per type built into a percs benchmark (train / val / test); its folder."""
    write_synthetic_dataset(root / "source", images_per_type=3, mixed_images=0, shape=(112, 112))
    build_benchmark([root / "source"], root / "bench", BuildConfig(variants=1, val_fraction=0.2, test_fraction=0.2))
    return root / "bench"


def tiny_config(dataset: Path, **sections) -> TrainConfig:
    """A one-block, 32-wide random backbone under a 32-wide head on 56-pixel crops; `sections` update the
    sections' dicts (e.g. schedule={"epochs": 3})."""
    data = {
        "model": {"backbone": "vits14", "backbone_depth": 1, "backbone_embed_dim": 32, "backbone_num_heads": 2,
                  "head": {"dim": 32, "depth": 1, "num_heads": 4, "decoder_channels": [16, 8]}},
        "data": {"dataset": str(dataset), "items_per_epoch": 4, "val_max_queries": 1,
                 "sampling": {"crop_size": 56, "reference_size": 56}},
        "optim": {"lr": 1e-3},
        "schedule": {"epochs": 2, "lr_drop_epochs": 1},
        "train": {"feature_cache_variants": 2},
        "log": {"log_every": 1, "val_every": 0, "progress": False},
        "predict": {"window": 56, "stride": 42, "niter": 50},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)
