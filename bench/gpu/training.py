"""Stages `train_frozen` and `train_finetuned`: the percs-mini recipe (configs/percs_mini_vits14.toml) for a few
hundred steps on the carry's small benchmark, backbone frozen or fine-tuned, bfloat16 autocast on the GPU.

Every step sees a fresh crop (no feature cache, as on a GPU); the only validation is at the end, on the first
`val_queries` val queries, through the predictor and percs' metrics (on the GPU: the CUDA kernels). Reported:
steps per second (median of the logged intervals after the first, and over the whole loop with data loading),
the loss at the start and the end, validation AP@0.5 / AP@0.3 and the peak GPU memory. A run this short
measures speed and that the loop works end to end; its AP is not a result of the method. The dry run trains
a one-block backbone on 112-pixel crops on the CPU for a few steps.
"""

from __future__ import annotations

import statistics
import time

import torch

from common import CARRY_BENCHMARK, CARRY_WEIGHTS, REPO_ROOT, Context, Part, cuda_ready
from percs.train import load_config, train

RECIPE = REPO_ROOT / "configs" / "percs_mini_vits14.toml"


def overrides(ctx: Context, frozen: bool, device: str) -> list[str]:
    """The recipe's keys changed for a short run on the carry (`percs train --set` syntax)."""
    profile = ctx.profile
    return [f"data.dataset={ctx.path(CARRY_BENCHMARK)}", f"model.backbone_weights={ctx.path(CARRY_WEIGHTS)}",
            f"optim.freeze_backbone={'true' if frozen else 'false'}", f"train.device={device}", "train.amp=true",
            "train.amp_dtype=bfloat16", "train.feature_cache=off", f"schedule.epochs={profile.train_epochs}",
            "schedule.lr_drop_epochs=1", f"data.items_per_epoch={profile.train_steps // profile.train_epochs}",
            f"data.val_max_queries={profile.val_queries}", f"log.val_every={profile.train_epochs}",
            f"log.checkpoint_every={profile.train_epochs}", f"log.log_every={max(profile.train_steps // 15, 1)}",
            "log.progress=false", *profile.train_overrides]


class Recorder:
    """The trainer's report function: keeps every log record with the time it arrived."""

    def __init__(self):
        self.records: list[tuple[float, dict]] = []

    def __call__(self, record: dict) -> None:
        self.records.append((time.perf_counter(), record))

    def events(self, name: str) -> list[tuple[float, dict]]:
        return [(t, r) for t, r in self.records if r["event"] == name]


def summarise(recorder: Recorder, steps: int) -> dict:
    """Speed and losses of a finished run from its log records."""
    logged = [r for _, r in recorder.events("step")]
    rates = [r["steps_per_s"] for r in logged[1:]] or [r["steps_per_s"] for r in logged]
    start = recorder.events("start")[0][0]
    end = recorder.events("epoch")[-1][0]  # the last epoch record comes before the final validation
    summary = {"steps": steps, "steps_per_s_median": statistics.median(rates) if rates else None,
               "steps_per_s_overall": steps / max(end - start, 1e-9), "loop_seconds": end - start}
    if logged:
        summary["loss_first_logged"] = logged[0]["total"]
        summary["loss_last_logged"] = logged[-1]["total"]
    validations = [r for _, r in recorder.events("val")]
    if validations:
        summary["validation"] = {k: validations[-1][k] for k in ("ap50", "ap30", "queries", "seconds")}
    return summary


def run(ctx: Context, part: Part, frozen: bool) -> None:
    ready, why = cuda_ready()
    if not ctx.dry_run and not torch.cuda.is_available():
        part.finish("failed", f"{why}: the training run needs the GPU")
        return
    device = "cpu" if ctx.dry_run else "cuda"
    sets = overrides(ctx, frozen, device)
    part.put(("command",), f"percs train --config {RECIPE.relative_to(REPO_ROOT)} "
                           + " ".join(f"--set {s}" for s in sets))
    config = load_config(RECIPE, sets)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    recorder = Recorder()
    clock = time.perf_counter()
    result = train(config, ctx.work / "runs" / ("frozen" if frozen else "finetuned"), report=recorder)
    summary = summarise(recorder, result.state.global_step)
    summary["wall_seconds"] = time.perf_counter() - clock
    summary["device"] = device
    summary["amp"] = "bfloat16 autocast" if device == "cuda" else "off (autocast is for CUDA only)"
    if device == "cuda":
        summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    part.put(("run",), summary)
    if "validation" not in summary:
        part.finish("failed", "the run ended without a validation")
    else:
        note = "" if device == "cuda" else f"CPU dry run ({why or 'no GPU'}): toy model, a few steps"
        part.finish("passed", note)
