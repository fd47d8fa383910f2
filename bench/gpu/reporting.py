"""The GPU check's report: every stage's part merged with what check.sh recorded of it (exit status, seconds,
time box), written as OUT/gpu_check.json, OUT/gpu_check.md and OUT/gpu_check.log (the stages' log tails).

A stage's status: what its part says, except "timed out" when `timeout` killed it (exit status 124 or 137;
what it measured before is kept), "failed" when it crashed before saying anything, "skipped" when check.sh did
not start it (no time left, or left out with --only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import CARRY_MANIFEST, Context, tail

TIMED_OUT = (124, 137)
BAD = ("failed", "timed out")
LOG_LINES = 400  # per stage in gpu_check.log


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_entry(ctx: Context, name: str) -> dict:
    """One stage of the report: status, reason, seconds, time box, exit status, results (and the log's tail when
    it failed)."""
    part = read_json(ctx.work / "parts" / f"{name}.json") or {}
    box = read_json(ctx.work / "parts" / f"{name}.rc.json")
    entry = {"status": part.get("status", "not run"), "reason": part.get("reason", ""),
             "results": part.get("results", {})}
    if box is None:
        entry.update(status="skipped", reason="not run (left out with --only)")
        return entry
    entry.update(seconds=box.get("seconds"), limit_s=box.get("limit_s"), exit_status=box.get("rc"))
    if box.get("rc") is None:
        entry.update(status="skipped", reason=box.get("skipped", "not run"))
    elif box["rc"] in TIMED_OUT:
        entry.update(status="timed out", reason=f"killed at its time box of {box.get('limit_s')} s; results "
                                                f"measured before are kept. {entry['reason']}".strip())
    elif entry["status"] in ("running", "not run"):
        entry.update(status="failed", reason=f"exited with status {box['rc']} before finishing")
    if "traceback" in part:
        entry["traceback"] = part["traceback"]
    if entry["status"] in BAD:
        log = ctx.log(name)
        entry["log_tail"] = tail(log.read_text(errors="replace"), 40) if log.is_file() else ""
    return entry


def gather(ctx: Context, stages: list[str], started: float) -> dict:
    from toolchain import environment

    report = {"check": "percs GPU check (bench/gpu)", "mode": ctx.profile.name,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
              "wall_seconds": round(time.time() - started, 1), "carry": read_json(ctx.path(CARRY_MANIFEST)),
              "environment": environment(), "stages": {name: stage_entry(ctx, name) for name in stages}}
    report["ok"] = not any(s["status"] in BAD for s in report["stages"].values())
    return report


def write_report(ctx: Context, stages: list[str], out: Path, started: float) -> int:
    """Writes the three files; 0 when no stage failed or timed out, else 1."""
    from report_markdown import markdown

    report = gather(ctx, stages, started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    logs = []
    for name in stages:
        log = ctx.log(name)
        if log.is_file():
            logs.append(f"===== {name} (last {LOG_LINES} lines)\n{tail(log.read_text(errors='replace'), LOG_LINES)}")
    (out / "gpu_check.log").write_text("\n\n".join(logs) + "\n")
    for name, entry in report["stages"].items():
        print(f"{name:16s} {entry['status']:9s} {entry.get('seconds', '-')!s:>5} s  {entry['reason']}")
    print(f"report: {out / 'gpu_check.md'} ({'ok' if report['ok'] else 'FAILED'})")
    return 0 if report["ok"] else 1
