"""percs.train: overfitting one image, exact resume, checkpoint checksums and training-data records, the
console line of each validation, non-finite losses, 2-process DDP.

All runs use `train_helpers.tiny_config`: a one-block 32-wide random backbone and a 32-wide head on 56-pixel
crops of a synthetic benchmark, on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from percs.data.format import MANIFEST, load_dataset
from percs.data.io import sha256
from percs.train import CheckpointError, NonFiniteLossError, load_checkpoint, train
from percs.train.config import write_config
from percs.train.distributed import init_distributed
from percs.train.features import FeatureCache
from percs.train.trainer import Trainer
from train_helpers import make_benchmark, tiny_config

ONE_IMAGE = {"items_per_epoch": 1, "sampling": {"crop_size": 56, "reference_size": 56, "paste": False,
                                                "flip_probability": 0.0, "absent_fraction": 0.0}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("train"))


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_overfits_one_image(bench, tmp_path):
    # Weight decay off: Adam's L2 of 0.1 (the paper's) holds a 32-wide random head near zero on this toy.
    config = tiny_config(bench, data=ONE_IMAGE, optim={"lr": 3e-3, "weight_decay": 0.0},
                         train={"feature_cache_variants": 1})
    trainer = Trainer(config, tmp_path, init_distributed("cpu"))
    trainer.cache = FeatureCache(trainer.train_set, trainer.model, [0], 1, trainer.info.device)
    batch = trainer.cache.batch([0], 0)
    first = trainer.step(batch).as_floats()
    for _ in range(149):
        last = trainer.step(batch).as_floats()
    # From about 1.65 and 0.74: flows and same-type map learned (150 steps; the contrastive term of 3 cells of
    # one type cannot go below log 2).
    assert first["flow"] > 1.0 and last["flow"] < 0.15, (first, last)
    assert last["same_type"] < 0.05, (first, last)


def test_feature_cache_keeps_the_images_for_a_detail_branch(bench, tmp_path):
    """The cached path and the uncached path give the detail branch the same query crop."""
    config = tiny_config(bench, model={"backbone": "vits14", "backbone_depth": 1, "backbone_embed_dim": 32,
                                       "backbone_num_heads": 2, "head": {"dim": 32, "depth": 1, "num_heads": 4,
                                                                          "decoder_channels": [16, 8],
                                                                          "detail_channels": 4}})
    trainer = Trainer(config, tmp_path, init_distributed("cpu"))
    cache = FeatureCache(trainer.train_set, trainer.model, [0], 1, trainer.info.device)
    cached = cache.batch([0], 0)
    trainer.train_set.set_epoch(0)
    item = trainer.train_set[0]
    assert cached.images is not None
    torch.testing.assert_close(cached.images[0], item.image, atol=2e-3, rtol=1e-3)  # float16 storage
    assert trainer.step(cached).as_floats()["total"] > 0


@pytest.mark.parametrize("cache, stop", [("off", 3), ("on", 6)])
def test_resume_reproduces_the_uninterrupted_run(bench, tmp_path, cache, stop):
    config = tiny_config(bench, train={"feature_cache": cache, "feature_cache_variants": 2},
                         log={"val_every": 1, "progress": False}, data={"items_per_epoch": 4, "val_max_queries": 1})
    whole = train(config, tmp_path / "whole")
    assert whole.state.global_step == 8 and whole.last_validation is not None
    stopped = train(config, tmp_path / "parts", stop_after_steps=stop)
    assert stopped.state.global_step == stop
    resumed = train(config, tmp_path / "parts", resume=True)
    assert resumed.state.global_step == 8
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "parts" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["loop"] == b["loop"]
    assert (tmp_path / "whole" / "best.pt").is_file()
    assert [r["total"] for r in records(tmp_path / "whole", "step")][stop:] == \
        [r["total"] for r in records(tmp_path / "parts", "step")][stop:]


def test_checkpoint_tampering_is_detected(bench, tmp_path):
    run = train(tiny_config(bench, schedule={"epochs": 1, "lr_drop_epochs": 0}, data={"items_per_epoch": 1}),
                tmp_path).run_dir
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["config"]["data"]["dataset"] == str(bench)
    assert json.loads((run / "config.json").read_text()) == checkpoint["config"]
    data = bytearray((run / "last.pt").read_bytes())
    data[-100] ^= 1
    (run / "last.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        load_checkpoint(run / "last.pt")
    (run / "last.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt is not a percs checkpoint"):
        train(tiny_config(bench), run, resume=True)


def test_checkpoints_record_the_training_data_and_validations_print_their_ap(bench, tmp_path, capsys):
    config = tiny_config(bench, log={"val_every": 1, "progress": True})  # progress: the console's default report
    run = train(config, tmp_path).run_dir
    dataset = load_dataset(bench)
    types = sorted({t for r in dataset.in_split("train") for t in r.instance_types})
    for name in ("last.pt", "best.pt"):
        record = load_checkpoint(run / name)["trained_on"]
        assert record == {"dataset": "bench", "cell_types": types, "synthetic": True, "split": "train",
                          "path": str(bench.resolve()), "manifest_sha256": sha256(bench / MANIFEST)}, name
    assert records(run, "start")[0]["trained_on"] == record
    validations = records(run, "val")
    lines = [line for line in capsys.readouterr().out.splitlines() if "val AP@0.5" in line]
    assert len(lines) == len(validations) == 2
    for line, val in zip(lines, validations):
        assert line.startswith(f"epoch {val['epoch'] + 1}/2: val AP@0.5 {val['ap50']:.3f} (AP@0.3 {val['ap30']:.3f}, "
                               f"1 queries, {val['seconds']:.1f} s); training: about "), line
    assert validations[0]["eta_s"] > 0 and validations[-1]["eta_s"] == 0


def test_report_gets_every_record_and_replaces_the_console(bench, tmp_path, capsys):
    seen = []
    train(tiny_config(bench, log={"val_every": 2, "progress": False}), tmp_path / "quiet")
    train(tiny_config(bench, log={"val_every": 2, "progress": True}), tmp_path / "run", report=seen.append)
    assert "val AP@0.5" not in capsys.readouterr().out
    assert [r["event"] for r in seen] == [json.loads(line)["event"]
                                          for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in seen if r["event"] == "epoch"]
    assert [r["epochs"] for r in epochs] == [2, 2] and epochs[0]["eta_s"] > 0


def test_non_finite_loss_stops_the_run(bench, tmp_path, monkeypatch):
    import percs.train.trainer as trainer_module

    real = trainer_module.percs_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms.flow = terms.flow * float("nan")
        terms.total = terms.total + terms.flow
        return terms

    monkeypatch.setattr(trainer_module, "percs_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 0\): total=nan, flow=nan"):
        train(tiny_config(bench), tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_two_process_gloo_run(bench, tmp_path):
    config_file = tmp_path / "config.json"
    write_config(tiny_config(bench, schedule={"epochs": 1, "lr_drop_epochs": 0}), config_file)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "percs", "train", "--config", str(config_file), "--out", str(tmp_path / "run")]
    # cwd outside the source tree: `-m percs` would otherwise import the uncompiled checkout.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt", "log.jsonl"]
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["world_size"] == 2
    # 4 items over 2 ranks at batch 1: 2 steps per epoch, each on the two ranks' gradients averaged.
    assert checkpoint["loop"]["global_step"] == 2
    assert records(run, "start")[0]["world_size"] == 2
