"""gpu_check.md: the report of reporting.py as markdown (a summary table, then one section per stage)."""

from __future__ import annotations

import json


def number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(number(v) for v in row) + " |" for row in rows]


def speedup(cpu: dict | None, cuda: dict | None) -> float | None:
    return cpu["mean_s"] / cuda["mean_s"] if cpu and cuda and cuda.get("mean_s") else None


def environment_lines(report: dict) -> list[str]:
    env, carry = report["environment"], report.get("carry") or {}
    gpu = env.get("gpu") or {}
    rows = [["GPU", f"{gpu.get('name', 'none')} (capability {gpu.get('capability', '-')}, "
                    f"{gpu.get('memory_gib', '-')} GiB), driver {env.get('driver', '-')}"],
            ["CUDA", f"torch {env['torch']} (CUDA {env['torch_cuda']}); nvcc: {env.get('nvcc')}; "
                     f"compute-sanitizer: {env.get('compute_sanitizer')}"],
            ["host", f"Python {env['python']}, {env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, "
                     f"OMP_NUM_THREADS {env.get('omp_num_threads')}; {env.get('cmake')}"],
            ["checkout", f"commit {carry.get('commit', '?')} (when the carry was packed), carry "
                         f"{carry.get('total_mib', '?')} MiB"]]
    return table(["", ""], rows)


def tests_lines(results: dict) -> list[str]:
    pytest = results.get("pytest", {})
    lines = [f"`{results.get('command', '')}`: {pytest.get('passed', '-')} passed, {pytest.get('failures', '-')} "
             f"failed, {pytest.get('errors', '-')} errors, {pytest.get('skipped', '-')} skipped."]
    lines += [f"- FAILED {f['test']}: {f['message']}" for f in pytest.get("failed", [])]
    lines += [f"- skipped ({count}): {reason}" for reason, count in pytest.get("skip_reasons", {}).items()]
    return lines


def sanitizer_lines(results: dict) -> list[str]:
    memcheck = results.get("memcheck", {})
    lines = [f"{results.get('tests_selected', '-')} tests ({results.get('selection', '')}) under "
             f"`compute-sanitizer --tool memcheck`: {number(memcheck.get('errors'))} errors."]
    return lines + [f"    {line}" for line in memcheck.get("reports", [])]


def flows_rows(results: dict) -> list[list]:
    rows = []
    cellpose = results.get("cellpose") if isinstance(results.get("cellpose"), dict) else {}
    for name, ops in results.get("flows", {}).items():
        for op, by_device in ops.items():
            cpu, cuda = by_device.get("cpu"), by_device.get("cuda")
            peer = (cellpose.get(name) or {}).get(op)
            same = by_device.get("cuda_equals_cpu", by_device.get("cuda_max_abs_difference"))
            ap = (cuda or cpu or {}).get("ap50_vs_truth")
            rows.append([name, op, (cpu or {}).get("megapixels"), (cpu or {}).get("s_per_mp"),
                         (cuda or {}).get("s_per_mp"), speedup(cpu, cuda), (peer or {}).get("s_per_mp"),
                         speedup(peer, cuda), same, ap])
    return rows


def bench_lines(results: dict) -> list[str]:
    lines = [f"Devices: {', '.join(results.get('devices', []))}; CPU threads: {results.get('threads')}. "
             "Seconds per megapixel, mean of the rounds; speedups are mean times' ratios.", "", "Flows:", ""]
    lines += table(["input", "op", "Mpx", "CPU s/MP", "CUDA s/MP", "CPU/CUDA", "Cellpose GPU s/MP",
                    "Cellpose/CUDA", "CUDA = CPU (masks) / max flow diff", "AP@0.5 vs truth"], flows_rows(results))
    if isinstance(results.get("cellpose"), str):
        lines += ["", results["cellpose"]]
    elif results.get("cellpose"):
        lines += ["", f"Cellpose {results['cellpose'].get('version')}: `dynamics.masks_to_flows_gpu` and "
                      "`compute_masks(niter=200, flow_threshold=0.4, min_size=15)` with device cuda, from percs' "
                      "flows, one round after a warm-up image."]
    metrics = results.get("metrics", {}).get("real", {})
    if metrics:
        cpu, cuda = metrics.get("cpu"), metrics.get("cuda")
        lines += ["", "Metrics (`percs.metrics.evaluate`, IoU >= 0.3 and 0.5):", ""]
        lines += table(["Mpx", "CPU s/MP", "CUDA s/MP", "CPU/CUDA", "same TP/FP/FN"],
                       [[cpu["megapixels"], cpu["s_per_mp"], (cuda or {}).get("s_per_mp"), speedup(cpu, cuda),
                         metrics.get("cuda_equals_cpu")]])
    predictor = results.get("predictor", {})
    if predictor:
        cpu, cuda = predictor.get("cpu", {}), predictor.get("cuda", {})
        lines += ["", f"Predictor (ViT-S/14, random head; image {predictor.get('image')}):", ""]
        rows = [[part, row.get("s_per_mp"), (cuda.get(part) or {}).get("s_per_mp"), speedup(row, cuda.get(part))]
                for part, row in cpu.items()]
        rows += [[part, None, row.get("s_per_mp"), None] for part, row in cuda.items() if part not in cpu]
        lines += table(["part", "CPU s/MP", "CUDA s/MP", "CPU/CUDA"], rows)
    return lines


def training_lines(results: dict) -> list[str]:
    run = results.get("run")
    if not run:
        return []
    validation = run.get("validation", {})
    lines = table(["device", "amp", "steps", "steps/s (median)", "steps/s (overall)", "loss first / last logged",
                   "val AP@0.5", "val AP@0.3", "val queries", "peak GPU GiB", "wall s"],
                  [[run["device"], run["amp"], run["steps"], run.get("steps_per_s_median"),
                    run.get("steps_per_s_overall"),
                    f"{number(run.get('loss_first_logged'))} / {number(run.get('loss_last_logged'))}",
                    validation.get("ap50"), validation.get("ap30"), validation.get("queries"),
                    run.get("peak_gpu_memory_gib"), run.get("wall_seconds")]])
    return [f"`{results.get('command', '')}`", ""] + lines


def build_lines(results: dict) -> list[str]:
    toolchain = results.get("toolchain", {})
    missing = [n for group in ("build", "runtime", "peer") for n, row in toolchain.get(group, {}).items()
               if not row["ok"]]
    lines = [f"cmake: {toolchain.get('cmake')}; nvcc: {toolchain.get('nvcc')}; missing or too old before the "
             f"carried wheels: {', '.join(missing) or 'none'}."]
    for key in ("build_cuda", "build_cpu_fallback"):
        if key in results:
            lines.append(f"`{results[key]['command']}` ({results[key]['env']}): exit status "
                         f"{results[key]['exit_status']}")
    return lines


RENDER = {"build": build_lines, "tests": tests_lines, "sanitizer": sanitizer_lines, "bench": bench_lines,
          "train_frozen": training_lines, "train_finetuned": training_lines}



def markdown(report: dict) -> str:
    gpu = (report["environment"].get("gpu") or {}).get("name", "no GPU")
    verdict = "every stage passed or was skipped" if report["ok"] else "SOME STAGES FAILED"
    lines = [f"# percs GPU check: {gpu} ({report['mode']})", "",
             f"{report['started']}, {report['wall_seconds']} s in all; {verdict}.", ""]
    lines += environment_lines(report) + [""]
    lines += table(["stage", "status", "seconds", "time box (s)", "note"],
                   [[name, s["status"], s.get("seconds"), s.get("limit_s"), s["reason"]]
                    for name, s in report["stages"].items()])
    for name, stage in report["stages"].items():
        lines += ["", f"## {name}: {stage['status']}", ""]
        try:
            lines += RENDER[name](stage["results"])
        except (KeyError, TypeError, ValueError) as error:  # a partial part: show it raw rather than nothing
            lines += [f"(results not tabulated: {type(error).__name__} {error})", "", "```",
                      json.dumps(stage["results"], indent=1)[:4000], "```"]
        if stage.get("log_tail"):
            lines += ["", "```", stage.get("traceback", "") + stage["log_tail"], "```"]
    return "\n".join(lines) + "\n"
