"""What every stage of the GPU check shares: the carry folder's layout, the stage context, part files, timing.

A stage writes its part, `WORK/parts/<stage>.json`, as it goes (after every measurement), so a stage killed
by its time box still leaves what it measured; `reporting.py` merges the parts with the exit status and
seconds that check.sh records for each stage (`<stage>.rc.json`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]

# The carry folder (bench/gpu/pack.py writes it): `shared/` mirrors ../shared for the tests and bench/ files
# (PERCS_SHARED points there), `benchmark/` is a small percs-mini, `wheels/` what the GPU machine lacks.
CARRY_MANIFEST = "carry.json"
CARRY_SHARED = "shared"
CARRY_WEIGHTS = "shared/weights/dinov2_vits14_pretrain.pth"
CARRY_STYLES = "shared/data/cellpose_styles"
CARRY_BENCHMARK = "benchmark"
CARRY_WHEELS = "wheels"
PREDICT_IMAGE = "cytomembrane/290"  # bench/bench_predict.py's image


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the real check on a GPU machine, or the CPU dry run at toy size."""

    name: str
    real_masks: int  # cellpose_styles label images used by the flows and metrics benchmarks (0: all)
    synthetic_shape: tuple[int, int]
    synthetic_cells: int
    rounds_cpu: int
    rounds_cuda: int
    predict_crop: int  # side of the predictor's image, cut from PREDICT_IMAGE (0: the whole 512 x 512)
    predict_tiles: int  # the large-image case tiles PREDICT_IMAGE tiles x tiles times (CUDA only)
    train_steps: int
    train_epochs: int
    val_queries: int
    train_overrides: tuple[str, ...] = ()


GPU = Profile("gpu", real_masks=0, synthetic_shape=(2048, 2048), synthetic_cells=2400, rounds_cpu=3,
              rounds_cuda=10, predict_crop=0, predict_tiles=4, train_steps=300, train_epochs=3, val_queries=16,
              train_overrides=("data.num_workers=6",))
DRY = Profile("cpu-dry-run", real_masks=3, synthetic_shape=(192, 256), synthetic_cells=40, rounds_cpu=1,
              rounds_cuda=1, predict_crop=224, predict_tiles=0, train_steps=4, train_epochs=2, val_queries=1,
              train_overrides=("data.num_workers=1", "model.backbone_depth=1", "data.sampling.crop_size=112",
                               "data.sampling.reference_size=112", "predict.window=112", "predict.stride=84",
                               "predict.reference_window=112", "predict.niter=50"))


@dataclass
class Context:
    """One stage's inputs: the carry folder, the work folder (parts, logs, runs) and the profile."""

    carry: Path
    work: Path
    dry_run: bool
    limit_s: float | None = None  # the stage's time box, from check.sh
    started: float = field(default_factory=time.monotonic)

    @property
    def profile(self) -> Profile:
        return DRY if self.dry_run else GPU

    def path(self, relative: str) -> Path:
        return self.carry / relative

    def log(self, stage: str) -> Path:
        return self.work / "logs" / f"{stage}.log"

    @property
    def site(self) -> Path:
        """Where the build stage installs percs and the carried wheels (pip --target; check.sh puts it first on
        PYTHONPATH for every stage), so the machine's own environment is never written to."""
        return self.work / "site"


def cuda_ready() -> tuple[bool, str]:
    """(True, "") when torch sees a GPU and percs._cuda is loaded, else (False, why not)."""
    import torch

    from percs import _backend

    if not torch.cuda.is_available():
        return False, "no GPU"
    if _backend._cuda is None:
        return False, f"percs._cuda is not loaded ({_backend.CUDA_IMPORT_ERROR or 'built without nvcc'})"
    return True, ""


@dataclass
class Part:
    """A stage's part of the report, rewritten whole on every `save` (atomic rename)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data.setdefault("status", "running")
        self.data.setdefault("results", {})
        self.save()

    @property
    def results(self) -> dict[str, Any]:
        return self.data["results"]

    def put(self, keys: tuple[str, ...], value: Any) -> None:
        """results[k0][k1]...[kn] = value, then save."""
        node = self.results
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        self.save()

    def finish(self, status: str, reason: str = "") -> None:
        self.data["status"] = status
        if reason:
            self.data["reason"] = reason
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        temporary.replace(self.path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy and torch scalars
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def measure(function: Callable[[], Any], rounds: int, cuda: bool, warmup: int = 1) -> tuple[dict[str, float], Any]:
    """({"mean_s", "min_s", "rounds"}, last result) of `function` timed `rounds` times after `warmup` calls;
    with cuda, the GPU is waited for inside each timed call, so its time counts."""
    import torch

    def run():
        result = function()
        if cuda:
            torch.cuda.synchronize()
        return result

    for _ in range(warmup):
        result = run()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return {"mean_s": sum(seconds) / len(seconds), "min_s": min(seconds), "rounds": rounds}, result


def pytest_command() -> list[str]:
    """The pytest of this interpreter as a script, not `python -m pytest`: -m would put the working directory
    (the source tree, whose percs/ has no compiled kernels) ahead of the installed percs."""
    script = Path(sys.executable).with_name("pytest")
    return [str(script)] if script.is_file() else ["pytest"]


_RUNNING: set[int] = set()  # process groups of the commands run_logged is waiting for


def kill_running(signum: int, frame) -> None:
    """SIGTERM handler of a stage (check.sh's `timeout`): the commands it started run in their own process
    groups, out of the signal's reach, so they are killed here before the stage exits."""
    for group in list(_RUNNING):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def run_logged(command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """Runs command with stdout and stderr appended to log (after a line naming the command) and kept in the
    result (text) for parsing; never raises for a non-zero exit status. After `timeout` seconds the command's
    whole process group is killed and the result has exit status 124 and what it printed until then."""
    log.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    _RUNNING.add(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output, status = f"{output}\n[killed after {timeout:.0f} s]", 124
    finally:
        _RUNNING.discard(process.pid)
    with open(log, "a") as file:
        file.write(f"$ {' '.join(command)}\n{output}\n[exit status {status}]\n")
    return subprocess.CompletedProcess(command, status, output)


def seconds_left(ctx: Context, reserve: float = 15.0) -> float | None:
    """Seconds this stage may still give a subprocess: its time box (check.sh's --limit) less what has gone
    and a reserve for writing its part; None without a time box."""
    if ctx.limit_s is None:
        return None
    return max(ctx.limit_s - (time.monotonic() - ctx.started) - reserve, 1.0)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
