"""The training loop of `percs train`: one process, or one per GPU / CPU shard under torchrun.

RUN_DIR holds config.json (the resolved config), log.jsonl (one JSON record per logged step, epoch, validation
and checkpoint), last.pt (written every `log.checkpoint_every` epochs and when the run stops early) and best.pt
(the checkpoint of the best validation AP@0.5). Checkpoints are written by rank 0 only (see
percs.train.checkpoint: atomic, SHA-256 checked) and hold the config, model, optimizer, GradScaler, the loop
position (epoch, batch within the epoch, global step, best AP), the Python / NumPy / torch RNG states and
`trained_on`, the record of the training data (percs.train.provenance; the start record of log.jsonl has it too).
Each log record also goes to a report function: by default (log.progress) a console line per validation.

Resuming continues exactly: every item is a pure function of (seed, epoch, index), the epoch's order of
items is a pure function of (seed, epoch), the LR a pure function of the epoch, so restoring the state and
skipping the batches already done in the epoch replays the uninterrupted run step for step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from percs.data.dataset import TrainDataset, collate
from percs.data.format import load_dataset
from percs.model.losses import LossTerms, percs_loss
from percs.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from percs.train.config import TrainConfig, config_from_dict, config_to_dict, write_config
from percs.train.distributed import DistInfo, barrier, init_distributed, shutdown
from percs.train.features import FeatureCache, HeadBatch, TrainStep, as_output, head_batch
from percs.train.provenance import training_data
from percs.train.setup import build_model, build_optimizer, set_backbone_frozen, set_lr, train_mode
from percs.train.validate import Validator

LAST, BEST, LOG, CONFIG = "last.pt", "best.pt", "log.jsonl", "config.json"
LOSS_TERMS = ("total", "flow", "same_type", "contrastive")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


@dataclass
class LoopState:
    """Where the run is: `epoch` in progress (0-based), batches of it done, optimizer steps done, best AP."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_ap: float = -1.0


@dataclass
class TrainResult:
    """How a call to `train` ended: the loop state, the last validation (None if none) and the run folder."""

    state: LoopState
    last_validation: dict | None
    run_dir: Path


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, stop_after_steps: int | None = None,
          report: Callable[[dict], None] | None = None) -> TrainResult:
    """Trains as `config` says into `run_dir`; resume=True continues from run_dir/last.pt (the config stored
    there is used and must equal `config`). stop_after_steps: stop (with a checkpoint) once that many
    optimizer steps are done in total, as an interrupted run would. report: called (rank 0) with every
    log.jsonl record as it is written; None: `console_report` when log.progress is on."""
    info = init_distributed(config.train.device)
    try:
        return Trainer(config, Path(run_dir), info, report).fit(resume, stop_after_steps)
    finally:
        shutdown(info)


def resolve_resume_config(config: TrainConfig | None, run_dir: str | Path) -> TrainConfig:
    """The config stored in run_dir/last.pt; when `config` is given it must be the same (ValueError naming
    the first differing key)."""
    stored = config_from_dict(load_checkpoint(Path(run_dir) / LAST)["config"])
    if config is not None and config != stored:
        a, b = _flatten(config_to_dict(config)), _flatten(config_to_dict(stored))
        key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        raise ValueError(f"--resume: {key} is {a.get(key)!r} here but {b.get(key)!r} in {Path(run_dir) / LAST}")
    return stored


class Trainer:
    """One process's share of a run (see the module docstring)."""

    def __init__(self, config: TrainConfig, run_dir: Path, info: DistInfo,
                 report: Callable[[dict], None] | None = None):
        if not config.data.dataset:
            raise ValueError("data.dataset is not set (the folder of a built percs dataset)")
        self.config, self.run_dir, self.info = config, run_dir, info
        torch.manual_seed(config.train.seed)
        self.frozen = config.optim.freeze_backbone
        self.model = build_model(config.model).to(info.device)
        set_backbone_frozen(self.model, self.frozen)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.amp = config.train.amp and info.device.type == "cuda"
        self.amp_dtype = getattr(torch, config.train.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.dataset = load_dataset(config.data.dataset)
        self.train_set = TrainDataset(self.dataset, config.data.train_split, config.data.sampling,
                                      config.train.seed, config.data.items_per_epoch or None,
                                      config.predict.reference_diameter)
        self.trained_on = training_data(self.dataset, config.data.train_split, self.train_set.reference_types)
        self.report = report if report is not None else (console_report if config.log.progress else None)
        cache = config.train.feature_cache
        self.cached = cache == "on" or (cache == "auto" and self.frozen and info.device.type == "cpu")
        if self.cached and not self.frozen:
            raise ValueError("train.feature_cache is 'on' but optim.freeze_backbone is false")
        self.state = LoopState()
        self.validator = Validator(self.dataset, config.data.val_split, config.predict, config.data.val_max_queries)
        self.cache: FeatureCache | None = None
        step = TrainStep(self.model, self.frozen)
        self.step_module = DistributedDataParallel(step) if info.world_size > 1 else step
        self.last_validation: dict | None = None
        self.pace = (time.perf_counter(), 0)  # (clock, global step) where this process's pace is measured from

    # ---- epoch order ----------------------------------------------------------------------------------
    def shard(self) -> list[int]:
        """Item indices this process owns in cached mode (fixed, padded like DistributedSampler's)."""
        n, world = len(self.train_set), self.info.world_size
        padded = [i % n for i in range(math.ceil(n / world) * world)]
        return padded[self.info.rank :: world]

    def epoch_order(self, epoch: int) -> list[int]:
        """This process's item indices for `epoch`, in order (a function of seed and epoch only)."""
        if self.cached:
            shard = self.shard()
            generator = torch.Generator().manual_seed(self.config.train.seed * 100_003 + epoch)
            return [shard[i] for i in torch.randperm(len(shard), generator=generator).tolist()]
        sampler = DistributedSampler(self.train_set, self.info.world_size, self.info.rank, shuffle=True,
                                     seed=self.config.train.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def batches(self, epoch: int, first_batch: int):
        """The epoch's HeadBatches from batch `first_batch` on (earlier ones were done before a resume)."""
        size = self.config.schedule.batch_size
        order = self.epoch_order(epoch)
        groups = [order[k : k + size] for k in range(0, len(order), size)][first_batch:]
        if self.cached:
            return (self.cache.batch(group, epoch) for group in groups)
        self.train_set.set_epoch(epoch)
        loader = DataLoader(self.train_set, batch_sampler=groups, collate_fn=collate,
                            num_workers=self.config.data.num_workers, pin_memory=self.info.device.type == "cuda")
        return (head_batch(batch, self.model.generic) for batch in loader)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.epoch_order(0)) / self.config.schedule.batch_size)

    # ---- one step --------------------------------------------------------------------------------------
    def step(self, batch: HeadBatch) -> LossTerms:
        """Forward, loss, backward and optimizer step on one batch; raises NonFiniteLossError."""
        batch = batch.to(self.info.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp):
            output = as_output(self.step_module(batch))
        terms = percs_loss(output, batch.unit_flows, batch.same_type, batch.instances, batch.instance_types,
                           self.config.loss)
        self.check_finite(terms)
        self.scaler.scale(terms.total).backward()
        if self.config.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return terms

    def check_finite(self, terms: LossTerms) -> None:
        values = torch.stack([getattr(terms, name).detach().float() for name in LOSS_TERMS])
        if not bool(torch.isfinite(values).all()):
            bad = [f"{n}={float(v)}" for n, v in zip(LOSS_TERMS, values) if not math.isfinite(float(v))]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step + 1} (epoch {self.state.epoch}): {', '.join(bad)}; "
                f"the run stops (try a lower optim.lr, optim.grad_clip, or train.amp = false)")

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self, resume: bool, stop_after_steps: int | None) -> TrainResult:
        config, main = self.config, self.info.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(config, self.run_dir / CONFIG)
        if self.cached:
            self.cache = FeatureCache(self.train_set, self.model, self.shard(), config.train.feature_cache_variants,
                                      self.info.device, progress=main and config.log.progress)
        if resume:
            self.restore(self.run_dir / LAST)
        self.pace = (time.perf_counter(), self.state.global_step)
        self.log({"event": "start", "resume": resume, "world_size": self.info.world_size, "cached": self.cached,
                  "device": str(self.info.device), "step": self.state.global_step,
                  "trained_on": self.trained_on.to_record()})
        while self.state.epoch < config.schedule.epochs:
            if self.run_epoch(stop_after_steps):
                self.end_epoch()
            if stop_after_steps is not None and self.state.global_step >= stop_after_steps:
                self.save(LAST)
                break
        barrier(self.info)
        return TrainResult(self.state, self.last_validation, self.run_dir)

    def run_epoch(self, stop_after_steps: int | None) -> bool:
        """Trains the rest of the current epoch (up to stop_after_steps in total); True when it is complete."""
        state, config = self.state, self.config
        lr = set_lr(self.optimizer, state.epoch, config.schedule)
        train_mode(self.model, self.frozen)
        total = self.steps_per_epoch()
        bar = self.progress(total, state.batch_in_epoch)
        sums, tick, since = dict.fromkeys(LOSS_TERMS, 0.0), time.perf_counter(), 0
        for batch in self.batches(state.epoch, state.batch_in_epoch):
            values = self.step(batch).as_floats()
            state.batch_in_epoch += 1
            state.global_step += 1
            since += 1
            for name in LOSS_TERMS:
                sums[name] += values[name]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['total']:.4f}", lr=f"{lr:.1e}")
            if state.global_step % config.log.log_every == 0:
                now = time.perf_counter()
                self.log({"event": "step", "epoch": state.epoch, "step": state.global_step, "lr": lr,
                          "steps_per_s": since / max(now - tick, 1e-9), **values})
                tick, since = now, 0
            if stop_after_steps is not None and state.global_step >= stop_after_steps:
                break
        if bar is not None:
            bar.close()
        done = state.batch_in_epoch
        self.log({"event": "epoch", "epoch": state.epoch, "epochs": config.schedule.epochs, "step": state.global_step,
                  "lr": lr, "batches": done, "eta_s": self.seconds_left(),
                  **{f"mean_{k}": v / max(done, 1) for k, v in sums.items()}})
        return state.batch_in_epoch >= total

    def end_epoch(self) -> None:
        """Validation, best and last checkpoints after a finished epoch."""
        state, log = self.state, self.config.log
        finished = state.epoch + 1
        state.epoch, state.batch_in_epoch = finished, 0
        improved = False
        if log.val_every and finished % log.val_every == 0 and len(self.validator):
            if self.info.is_main:
                clock = time.perf_counter()
                self.last_validation = self.validator.run(self.model)
                self.log({"event": "val", "epoch": finished - 1, "epochs": self.config.schedule.epochs,
                          "step": state.global_step, **self.last_validation,
                          "seconds": time.perf_counter() - clock, "eta_s": self.seconds_left()})
                improved = self.last_validation["ap50"] > state.best_ap
                if improved:
                    state.best_ap = self.last_validation["ap50"]
            barrier(self.info)
        if improved:
            self.save(BEST)
        if finished % log.checkpoint_every == 0 or finished == self.config.schedule.epochs:
            self.save(LAST)

    # ---- checkpoints and logs --------------------------------------------------------------------------
    def save(self, name: str) -> None:
        """Writes run_dir/name from rank 0 (every rank's RNG state is the same function of the seed)."""
        if self.info.is_main:
            save_checkpoint({
                "format": 1, "config": config_to_dict(self.config), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "loop": vars(self.state).copy(), "rng": rng_state(), "world_size": self.info.world_size,
                "trained_on": self.trained_on.to_record(),
            }, self.run_dir / name)
            self.log({"event": "checkpoint", "file": name, "epoch": self.state.epoch, "step": self.state.global_step})
        barrier(self.info)

    def restore(self, path: Path) -> None:
        """Loads model, optimizer, scaler, loop position and RNG states from a checkpoint of this run."""
        checkpoint = load_checkpoint(path)
        if config_from_dict(checkpoint["config"]) != self.config:
            raise ValueError(f"--resume: the config in {path} differs from this run's")
        if checkpoint["world_size"] != self.info.world_size:
            raise ValueError(f"--resume: {path} was written by {checkpoint['world_size']} processes, this run has "
                             f"{self.info.world_size} (the shards would differ)")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = LoopState(**checkpoint["loop"])
        set_rng_state(checkpoint["rng"])

    def seconds_left(self) -> float | None:
        """Estimated seconds until the last epoch ends, at this process's mean pace so far (validations
        included); None before its first step."""
        clock, first_step = self.pace
        done = self.state.global_step - first_step
        if done <= 0:
            return None
        remaining = self.config.schedule.epochs * self.steps_per_epoch() - self.state.global_step
        return max(remaining, 0) * (time.perf_counter() - clock) / done

    def log(self, record: dict) -> None:
        """Appends `record` to log.jsonl and passes it to the report function (rank 0 only)."""
        if self.info.is_main:
            with open(self.run_dir / LOG, "a") as file:
                file.write(json.dumps(record) + "\n")
            if self.report is not None:
                self.report(record)

    def progress(self, total: int, initial: int):
        if not (self.info.is_main and self.config.log.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=f"epoch {self.state.epoch + 1}/{self.config.schedule.epochs}",
                    unit="step", dynamic_ncols=True)


def duration(seconds: float) -> str:
    """'40 s', '2.5 min' or '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def validation_line(record: dict) -> str:
    """The console line of a log.jsonl "val" record: epoch, AP@0.5 and AP@0.3, queries and seconds."""
    return (f"epoch {record['epoch'] + 1}/{record['epochs']}: val AP@0.5 {record['ap50']:.3f} "
            f"(AP@0.3 {record['ap30']:.3f}, {record['queries']} queries, {record['seconds']:.1f} s)")


def console_report(record: dict) -> None:
    """`percs train`'s console: one line per validation with the training time left (stdout)."""
    if record["event"] == "val":
        left = "" if record["eta_s"] is None else f"; training: about {duration(record['eta_s'])} left"
        print(validation_line(record) + left, flush=True)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
