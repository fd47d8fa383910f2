"""The GPU check's driver (bench/gpu/README.md); check.sh calls it once per stage, each call under `timeout`.

    python bench/gpu/check.py plan [--cpu-dry-run]                  # stage names and time boxes, in order
    python bench/gpu/check.py stage NAME --carry DIR --work DIR [--cpu-dry-run]
    python bench/gpu/check.py report --carry DIR --work DIR --out DIR --started EPOCH [--cpu-dry-run]

A stage writes WORK/parts/NAME.json as it goes and exits 0 unless it failed; `report` writes OUT/gpu_check.json,
OUT/gpu_check.md and OUT/gpu_check.log and exits 1 when a stage failed or timed out (0 when every stage passed
or was skipped, e.g. the CUDA stages of the CPU dry run).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "tests"), str(HERE.parent)]  # conftest, bench_predict

from common import Context, Part, kill_running  # noqa: E402

# name -> (time box on the GPU machine, time box in the CPU dry run), seconds; run in this order. The GPU
# boxes add up to more than the budget (check.sh's --budget, 470 s by default): a stage never gets more than
# what is left of it, less a reserve for the report.
STAGES = {
    "build": (180, 60),
    "tests": (90, 90),
    "sanitizer": (75, 60),
    "bench": (110, 90),
    "train_frozen": (75, 90),
    "train_finetuned": (90, 90),
}


def run_stage(name: str, ctx: Context) -> int:
    signal.signal(signal.SIGTERM, kill_running)
    part = Part(ctx.work / "parts" / f"{name}.json")
    try:
        if name == "build":
            import toolchain

            toolchain.run(ctx, part)
        elif name in ("tests", "sanitizer"):
            import cuda_tests

            (cuda_tests.run_tests if name == "tests" else cuda_tests.run_sanitizer)(ctx, part)
        elif name == "bench":
            import timing

            timing.run(ctx, part)
        else:
            import training

            training.run(ctx, part, frozen=name == "train_frozen")
    except Exception as error:  # the report says what broke; the other stages go on
        part.data["traceback"] = traceback.format_exc(limit=8)
        part.finish("failed", f"{type(error).__name__}: {error}")
    return 1 if part.data["status"] == "failed" else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("plan", "stage", "report"))
    parser.add_argument("name", nargs="?", choices=tuple(STAGES), help="the stage (command stage)")
    parser.add_argument("--carry", type=Path, default=Path("gpu-carry"), help="folder written by pack.py")
    parser.add_argument("--work", type=Path, help="folder for parts, logs and training runs")
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json / .md / .log (command report)")
    parser.add_argument("--started", type=float, help="epoch seconds when check.sh started (command report)")
    parser.add_argument("--limit", type=float, help="the stage's time box in seconds (command stage)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every stage at toy size on the CPU")
    args = parser.parse_args(argv)
    if args.command == "plan":
        for name, limits in STAGES.items():
            print(name, limits[1] if args.cpu_dry_run else limits[0])
        return 0
    if args.work is None:
        parser.error(f"{args.command} needs --work")
    ctx = Context(args.carry.resolve(), args.work.resolve(), args.cpu_dry_run, args.limit)
    if args.command == "stage":
        if args.name is None:
            parser.error("stage needs a NAME")
        return run_stage(args.name, ctx)
    if args.out is None or args.started is None:
        parser.error("report needs --out and --started")
    import reporting

    return reporting.write_report(ctx, list(STAGES), args.out, args.started)


if __name__ == "__main__":
    sys.exit(main())
