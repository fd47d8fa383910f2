"""The GPU check's plumbing (bench/gpu) at toy size on the CPU: the report writer on stages that passed, were
skipped, timed out with partial results, crashed or never started; the benchmarks' CPU-against-CUDA
comparisons with the second device played by CPU tensors; the parsers of pytest's junit XML and of
compute-sanitizer's output; the memcheck test selection; the training overrides of both profiles.
The whole CPU dry run (`bash bench/gpu/check.sh --cpu-dry-run`) runs in CI after the tests.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

sys.path[:0] = [str(REPO_ROOT / "bench" / "gpu"), str(REPO_ROOT / "bench")]

import cuda_tests  # noqa: E402
import report_markdown  # noqa: E402
import reporting  # noqa: E402
import toolchain  # noqa: E402
import training  # noqa: E402
from check import STAGES  # noqa: E402
from common import Context, Part  # noqa: E402

from percs.flows import renumber  # noqa: E402
from percs.synthetic_labels import touching_cells  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ENVIRONMENT = {"python": "3.12.3", "torch": "2.11.0", "torch_cuda": "13.0", "cpu_count": 16, "torch_threads": 16,
               "omp_num_threads": None, "nvcc": "release 13.0", "compute_sanitizer": "Version 2025.3",
               "cmake": "cmake version 3.31", "gpu": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0",
                                                      "memory_gib": 79.2, "count": 1}, "driver": "580.159.04"}


def write_stage(ctx: Context, name: str, part: dict | None, box: dict | None, log: str = "") -> None:
    parts = ctx.work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if part is not None:
        (parts / f"{name}.json").write_text(json.dumps(part))
    if box is not None:
        (parts / f"{name}.rc.json").write_text(json.dumps(box))
    if log:
        ctx.log(name).parent.mkdir(parents=True, exist_ok=True)
        ctx.log(name).write_text(log)


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> Context:
    monkeypatch.setattr(toolchain, "environment", lambda: ENVIRONMENT)
    (tmp_path / "carry").mkdir()
    (tmp_path / "carry" / "carry.json").write_text(json.dumps({"commit": "0123abcd", "total_mib": 51.9}))
    return Context(tmp_path / "carry", tmp_path / "work", dry_run=False)


def test_report_states_every_kind_of_stage_end(ctx, tmp_path):
    partial = {"flows": {"real": {"masks_to_flows": {"cpu": {"mean_s": 2.0, "min_s": 2.0, "rounds": 1,
                                                             "megapixels": 4.0, "s_per_mp": 0.5}}}}}
    write_stage(ctx, "build", {"status": "passed", "results": {}}, {"rc": 0, "seconds": 20, "limit_s": 180})
    write_stage(ctx, "tests", {"status": "skipped", "reason": "no GPU", "results": {}}, {"rc": 0, "seconds": 5,
                                                                                         "limit_s": 90})
    write_stage(ctx, "sanitizer", {"status": "running", "results": {"tests_selected": 40}},
                {"rc": 124, "seconds": 75, "limit_s": 75}, log="memcheck slow\n")
    write_stage(ctx, "bench", {"status": "running", "results": partial}, {"rc": 1, "seconds": 3, "limit_s": 110},
                log="Traceback (most recent call last):\nRuntimeError: boom\n")
    write_stage(ctx, "train_frozen", None, {"rc": None, "skipped": "no time left in the budget of 470 s"})
    status = reporting.write_report(ctx, list(STAGES), tmp_path / "out", time.time() - 9)

    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    stages = report["stages"]
    assert status == 1 and report["ok"] is False
    assert [stages[n]["status"] for n in STAGES] == ["passed", "skipped", "timed out", "failed", "skipped", "skipped"]
    assert "killed at its time box of 75 s" in stages["sanitizer"]["reason"]
    assert stages["sanitizer"]["results"] == {"tests_selected": 40}  # partial results are kept
    assert "RuntimeError: boom" in stages["bench"]["log_tail"]
    assert stages["train_frozen"]["reason"] == "no time left in the budget of 470 s"
    assert "left out with --only" in stages["train_finetuned"]["reason"]
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert markdown.startswith("# percs GPU check: NVIDIA H100 80GB HBM3 (gpu)")
    assert "| sanitizer | timed out | 75 | 75 |" in markdown and "RuntimeError: boom" in markdown
    assert "| real | masks_to_flows | 4.000 | 0.500 |" in markdown  # the partial bench results are tabulated
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "===== bench" in log and "memcheck slow" in log


def test_report_is_ok_when_every_stage_passed_or_was_skipped(ctx, tmp_path):
    for name in STAGES:
        write_stage(ctx, name, {"status": "skipped" if name == "sanitizer" else "passed", "results": {}},
                    {"rc": 0, "seconds": 1, "limit_s": 60})
    assert reporting.write_report(ctx, list(STAGES), tmp_path / "out", time.time()) == 0
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["ok"] is True


def cpu_as_second_device(monkeypatch):
    """The benchmarks' "cuda" inputs become CPU tensors (percs runs them on its C++ kernels and returns tensors)."""
    import timing

    monkeypatch.setattr(timing, "on", lambda device, arrays: arrays if device == "cpu" else
                        [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    return timing


def test_benchmark_comparisons_and_their_table(ctx, monkeypatch):
    timing = cpu_as_second_device(monkeypatch)
    images = [renumber(touching_cells((40, 52), 9, 6.0, seed=seed)) for seed in range(2)]
    part = Part(ctx.work / "parts" / "bench.json")
    timing.bench_flows(ctx, part, "toy", images, ["cpu", "cuda"])
    timing.bench_metrics(ctx, part, images, ["cpu", "cuda"])
    flows = part.results["flows"]["toy"]
    assert flows["masks_to_flows"]["cuda_max_abs_difference"] == 0.0
    assert flows["flows_to_masks"]["cuda_equals_cpu"] is True
    assert flows["flows_to_masks"]["cuda"]["ap50_vs_truth"] == 1.0
    assert part.results["metrics"]["real"]["cuda_equals_cpu"] is True
    megapixels = 2 * 40 * 52 / 1e6
    assert flows["masks_to_flows"]["cpu"]["megapixels"] == pytest.approx(megapixels)
    lines = report_markdown.bench_lines(part.results)
    row = next(line for line in lines if line.startswith("| toy | flows_to_masks"))
    assert row.endswith("| yes | 1.000 |") and row.count("|") == 11
    assert json.loads((ctx.work / "parts" / "bench.json").read_text())["results"] == part.results


def test_junit_summary_counts_failures_and_skip_reasons(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2">'
        '<testcase classname="tests.test_flows_cuda" name="test_a"/>'
        '<testcase classname="tests.test_flows_cuda" name="test_b"><failure message="masks differ">x</failure>'
        '</testcase><testcase classname="t" name="c"><skipped message="needs two GPUs"/></testcase>'
        '<testcase classname="t" name="d"><skipped message="needs two GPUs"/></testcase></testsuite></testsuites>')
    summary = cuda_tests.junit_summary(path)
    assert (summary["passed"], summary["failures"], summary["skipped"]) == (1, 1, 2)
    assert summary["failed"] == [{"test": "tests.test_flows_cuda::test_b", "kind": "failure",
                                  "message": "masks differ"}]
    assert summary["skip_reasons"] == {"needs two GPUs": 2}
    assert cuda_tests.junit_summary(tmp_path / "missing.xml") == {"junit": "missing"}


def test_memcheck_findings():
    output = ("========= COMPUTE-SANITIZER\n....\n========= Invalid __global__ write of size 4 bytes\n"
              "=========     at fill_holes_kernel+0x1d0\n========= ERROR SUMMARY: 1 error\n")
    findings = cuda_tests.memcheck_findings(output)
    assert findings["errors"] == 1 and findings["reports"][1] == "========= Invalid __global__ write of size 4 bytes"
    assert cuda_tests.memcheck_findings("========= ERROR SUMMARY: 0 errors\n")["errors"] == 0
    assert cuda_tests.memcheck_findings("Device not supported")["errors"] is None


def test_sanitizer_selection_spreads_and_excludes():
    nodes = [f"tests/test_flows_cuda.py::test_fill[{i}]" for i in range(10)]
    nodes += ["tests/test_flows_cuda.py::test_large_image_uses_grid_stride_loops", "tests/test_metrics.py::test_one"]
    chosen = cuda_tests.spread(nodes)
    assert chosen == [nodes[0], nodes[4], nodes[9], "tests/test_metrics.py::test_one"]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
def test_training_overrides_resolve(tmp_path, dry_run, frozen):
    """Every key the stage sets exists in the config (the GPU profile's too, which the dry run never reads)."""
    from percs.train import load_config

    ctx = Context(tmp_path / "carry", tmp_path, dry_run)
    config = load_config(training.RECIPE, training.overrides(ctx, frozen, "cpu" if dry_run else "cuda"))
    assert config.optim.freeze_backbone is frozen and config.train.amp_dtype == "bfloat16"
    assert config.schedule.epochs * config.data.items_per_epoch == ctx.profile.train_steps
    assert config.data.dataset == str(tmp_path / "carry" / "benchmark")


def test_run_logged_kills_the_whole_process_group_at_its_timeout(tmp_path):
    from common import run_logged

    clock = time.monotonic()
    result = run_logged(["bash", "-c", "echo started; sleep 60 & wait"], tmp_path / "log", cwd=tmp_path, timeout=1)
    assert result.returncode == 124 and "started" in result.stdout and time.monotonic() - clock < 30
    assert "[killed after 1 s]" in (tmp_path / "log").read_text()


def test_check_sh_reports_stages_it_had_no_time_for(tmp_path):
    import subprocess

    (tmp_path / "carry").mkdir()
    (tmp_path / "carry" / "carry.json").write_text("{}")
    command = ["bash", str(REPO_ROOT / "bench" / "gpu" / "check.sh"), "--cpu-dry-run", "--carry",
               str(tmp_path / "carry"), "--out", str(tmp_path / "out"), "--budget", "30"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]
    assert list(stages) == list(STAGES)
    assert all(s["status"] == "skipped" and "no time left" in s["reason"] for s in stages.values())


def test_a_terminated_stage_kills_the_commands_it_runs(tmp_path):
    """check.sh's `timeout` signals the stage; the stage's commands run in their own process groups."""
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import signal; from pathlib import Path; "
            "from common import kill_running, run_logged; signal.signal(signal.SIGTERM, kill_running); "
            "run_logged(['bash', '-c', 'echo $$ > ' + sys.argv[2] + '; sleep 60'], Path(sys.argv[3]))")
    pid_file = tmp_path / "pid"
    stage = subprocess.Popen([sys.executable, "-c", code, str(REPO_ROOT / "bench" / "gpu"), str(pid_file),
                              str(tmp_path / "log")])
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    stage.terminate()
    assert stage.wait(timeout=30) == 128 + 15
    child = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"the command {child} outlived its stage")
