"""Training steps per second and peak memory of PerCS-DINO with ViT-S/14 at 224 x 224 on the CPU.

    pytest bench/bench_train.py --benchmark-only --benchmark-json=/tmp/train-bench.json

Two cases, batch 1, the default head (256 wide, 2 layers), Adam:
- frozen: the step of a frozen-backbone run on the CPU, i.e. the head on cached backbone features (what an
  epoch costs once the feature cache is built);
- finetuned: query and reference windows through the backbone, gradients into all of it.
Peak memory is the process's maximum resident set size (resource.getrusage), read after each case and stored
in the benchmark's extra_info as maxrss_mib: it is a running maximum over the process, so the frozen case runs
first. Skips when ../shared/weights/dinov2_vits14_pretrain.pth is missing (weights do not change the speed,
but the run should be the real model).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import shared_dir  # noqa: E402
from train_helpers import make_benchmark  # noqa: E402

from percs.train.config import config_from_dict  # noqa: E402
from percs.train.distributed import init_distributed  # noqa: E402
from percs.train.features import FeatureCache  # noqa: E402
from percs.train.trainer import Trainer  # noqa: E402

torch.set_num_threads(2)
WEIGHTS = shared_dir() / "weights" / "dinov2_vits14_pretrain.pth"


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory) -> Path:
    if not WEIGHTS.is_file():
        pytest.skip(f"ViT-S weights {WEIGHTS} are missing")
    return make_benchmark(tmp_path_factory.mktemp("bench-train"))


def trainer_for(dataset: Path, frozen: bool, run_dir: Path) -> Trainer:
    config = config_from_dict({
        "model": {"backbone": "vits14", "backbone_weights": str(WEIGHTS)},
        "data": {"dataset": str(dataset), "items_per_epoch": 1},
        "optim": {"freeze_backbone": frozen},
        "train": {"device": "cpu", "feature_cache": "on" if frozen else "off", "feature_cache_variants": 1},
        "log": {"progress": False},
    })
    return Trainer(config, run_dir, init_distributed("cpu"))


@pytest.mark.parametrize("mode", ["frozen", "finetuned"])
def test_train_step(benchmark, bench_data, tmp_path, mode):
    trainer = trainer_for(bench_data, mode == "frozen", tmp_path)
    if mode == "frozen":
        trainer.cache = FeatureCache(trainer.train_set, trainer.model, [0], 1, trainer.info.device)
        batch = trainer.cache.batch([0], 0)
    else:
        batch = next(iter(trainer.batches(0, 0)))
    trainer.step(batch)  # warm-up: allocator, Adam state
    benchmark.group = "train step, ViT-S/14, 224, CPU"
    benchmark.pedantic(trainer.step, args=(batch,), rounds=5 if mode == "frozen" else 3, iterations=1)
    benchmark.extra_info["steps_per_s"] = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    benchmark.extra_info["threads"] = torch.get_num_threads()
