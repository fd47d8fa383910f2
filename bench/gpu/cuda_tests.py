"""Stages `tests` (every CUDA test: `pytest tests -k cuda`, CPU against CUDA) and `sanitizer` (compute-sanitizer
memcheck on a spread of the CUDA kernel tests).

The tests compare integer outputs (labels, seeds, end points, overlap counts) with assert_array_equal and
flows to 1e-6 (tests/test_flows_cuda.py says where and why), so a pass is the bit-for-bit claim of the
README. They read real label images from the carry's `shared/` (PERCS_SHARED). Without a GPU every CUDA test
skips: the dry run runs the same pytest command, so collection, the junit report and its parsing are proven.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

from common import CARRY_SHARED, Context, Part, cuda_ready, pytest_command, run_logged, seconds_left, tail
from toolchain import find_sanitizer

KERNEL_TEST_FILES = ("tests/test_flows_cuda.py", "tests/test_metrics.py")
# Too big for memcheck's slowdown (17M points, a 4200 x 4100 image, 30 real images) or needing two GPUs.
SANITIZER_EXCLUDED = ("many_points", "large_image", "real_images", "second_gpu")
PER_FUNCTION = 3  # parametrisations per test function under memcheck: first, middle and last


def junit_summary(path: Path) -> dict:
    """Counts of a pytest junit XML file, the failed tests with the first line of their message, and the skip
    reasons with how many tests each skipped."""
    if not path.is_file():
        return {"junit": "missing"}
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed, skips = [], Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error"):
            for node in case.findall(kind):
                failed.append({"test": name, "kind": kind, "message": (node.get("message") or "")[:300]})
        for node in case.findall("skipped"):
            skips[(node.get("message") or "")[:120]] += 1
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return {**totals, "failed": failed[:30], "skip_reasons": dict(skips.most_common(8))}


def run_tests(ctx: Context, part: Part) -> None:
    ready, why = cuda_ready()
    junit = ctx.work / "tests.xml"
    command = [*pytest_command(), "-q", "-p", "no:cacheprovider", "-rfE", "-k", "cuda", f"--junitxml={junit}",
               "tests"]
    result = run_logged(command, ctx.log("tests"), {"PERCS_SHARED": str(ctx.path(CARRY_SHARED))},
                        timeout=seconds_left(ctx))
    summary = junit_summary(junit)
    part.put(("command",), " ".join(command))
    part.put(("pytest",), {"exit_status": result.returncode, **summary, "output": tail(result.stdout, 12)})
    if result.returncode == 124:
        part.finish("timed out", f"pytest did not finish in its time box; {tail(result.stdout, 1)}")
    elif result.returncode not in (0, 5) or summary.get("failures") or summary.get("errors"):
        part.finish("failed", f"{summary.get('failures', '?')} failed, {summary.get('errors', '?')} errors "
                              f"(pytest exit status {result.returncode})")
    elif not ready:
        part.finish("skipped" if ctx.dry_run else "failed", f"{why}: {summary.get('skipped', 0)} CUDA tests skipped")
    elif summary.get("passed", 0) == 0:
        part.finish("failed", "no CUDA test ran")
    else:
        part.finish("passed", f"{summary['passed']} passed, {summary['skipped']} skipped")


def collect_kernel_tests(ctx: Context) -> list[str]:
    """Node ids of the CUDA kernel tests, as pytest collects them here."""
    command = [*pytest_command(), "-q", "-p", "no:cacheprovider", "--collect-only", "-k", "cuda", *KERNEL_TEST_FILES]
    result = run_logged(command, ctx.log("sanitizer"))
    if result.returncode != 0:
        raise RuntimeError(f"pytest --collect-only failed: {tail(result.stdout, 5)}")
    return [line.strip() for line in result.stdout.splitlines() if "::" in line and " " not in line.strip()]


def spread(node_ids: list[str], per_function: int = PER_FUNCTION) -> list[str]:
    """At most `per_function` parametrisations of each test function (first, middle, last, in collection order),
    none of the SANITIZER_EXCLUDED ones."""
    by_function: dict[str, list[str]] = {}
    for node in node_ids:
        if not any(word in node for word in SANITIZER_EXCLUDED):
            by_function.setdefault(node.split("[")[0], []).append(node)
    chosen = []
    for nodes in by_function.values():
        picks = sorted({i * (len(nodes) - 1) // max(per_function - 1, 1) for i in range(per_function)})
        chosen += [nodes[i] for i in picks if i < len(nodes)]
    return chosen


def memcheck_findings(output: str) -> dict:
    """The memcheck summary of compute-sanitizer's output: error count (None when no summary was printed) and
    the first reports."""
    counts = [int(m) for m in re.findall(r"ERROR SUMMARY: (\d+) error", output)]
    reports = [line for line in output.splitlines()
               if line.startswith("=========") and "ERROR SUMMARY" not in line and line.strip("= ")][:20]
    return {"errors": sum(counts) if counts else None, "reports": reports}


def run_sanitizer(ctx: Context, part: Part) -> None:
    selected = spread(collect_kernel_tests(ctx))
    part.put(("tests_selected",), len(selected))
    part.put(("selection",), f"up to {PER_FUNCTION} parametrisations per test function of {KERNEL_TEST_FILES}, "
                             f"without {SANITIZER_EXCLUDED}")
    ready, why = cuda_ready()
    sanitizer = find_sanitizer()
    if not ready or sanitizer is None:
        part.finish("skipped" if ctx.dry_run or sanitizer is None else "failed",
                    why or "compute-sanitizer not found")
        return
    junit = ctx.work / "sanitizer.xml"
    command = [sanitizer, "--tool", "memcheck", "--leak-check", "no", "--report-api-errors", "no",
               "--print-limit", "20", "--error-exitcode", "86", *pytest_command(), "-v", "-p", "no:cacheprovider",
               "-rfE", f"--junitxml={junit}", *selected]
    # Without torch's caching allocator every tensor is its own allocation, so memcheck sees its bounds.
    result = run_logged(command, ctx.log("sanitizer"), {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1",
                                                        "PERCS_SHARED": str(ctx.path(CARRY_SHARED))},
                        timeout=seconds_left(ctx))
    findings = memcheck_findings(result.stdout)
    summary = junit_summary(junit)
    part.put(("memcheck",), {"exit_status": result.returncode, **findings, "pytest": summary,
                             "output": tail(result.stdout, 12)})
    if result.returncode == 124:
        part.finish("timed out", f"memcheck reached the stage's time box after {result.stdout.count(' PASSED')} of "
                                 f"{len(selected)} tests passed; {len(findings['reports'])} report lines so far")
    elif findings["errors"] is None:
        part.finish("failed", f"no memcheck summary (exit status {result.returncode})")
    elif findings["errors"] or summary.get("failures") or summary.get("errors"):
        part.finish("failed", f"{findings['errors']} memcheck errors, {summary.get('failures')} tests failed")
    else:
        part.finish("passed", f"0 memcheck errors in {summary.get('passed')} tests")
