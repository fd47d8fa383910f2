"""percs.metrics.evaluate next to stardist.matching.matching_dataset and cellpose.metrics.average_precision.

Run in the bench environment (see bench/README.md):
    pytest bench/bench_metrics.py --benchmark-only --benchmark-json=bench/metrics.json
    python bench/report.py bench/metrics.json
Data: every label image of ../shared/data (true) against a perturbed copy (shifted by 2 px, 5% of the labels
dropped, seed 0), int32, thresholds 0.3 and 0.5 with the '>=' rule. Every implementation's TP / FP / FN are
checked against StarDist's after its timed run; numba JIT compilation happens before timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sd_matching = pytest.importorskip("stardist.matching")
cp_metrics = pytest.importorskip("cellpose.metrics")

from percs import _backend  # noqa: E402
from percs import metrics as M  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import real_label_images  # noqa: E402
from label_noise import perturbed  # noqa: E402

THRESHOLDS = (0.3, 0.5)
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data():
    names = ("cellpose_styles", "dsb2018_stage1_test", "consep", "stardist_sample")
    true = [labels for _, labels in real_label_images(*names)]
    return true, perturbed(true)


@pytest.fixture(scope="module")
def stardist_counts(data):
    """(TP, FP, FN) per threshold, untimed; also compiles StarDist's and Cellpose's numba kernels."""
    true, pred = data
    cp_metrics.average_precision(true[:1], pred[:1], threshold=list(THRESHOLDS))
    stats = sd_matching.matching_dataset(true, pred, thresh=THRESHOLDS, show_progress=False)
    return [(s.tp, s.fp, s.fn) for s in stats]


def run_percs(true, pred):
    return [(s.tp, s.fp, s.fn) for s in M.evaluate(true, pred, THRESHOLDS, iou_rule="ge")]


def run_percs_cuda(true, pred):
    counts = run_percs(true, pred)
    torch.cuda.synchronize()
    return counts


def run_stardist(true, pred):
    stats = sd_matching.matching_dataset(true, pred, thresh=THRESHOLDS, show_progress=False)
    return [(s.tp, s.fp, s.fn) for s in stats]


def run_cellpose(true, pred):
    _, tp, fp, fn = cp_metrics.average_precision(true, pred, threshold=list(THRESHOLDS))
    return [(int(tp[:, k].sum()), int(fp[:, k].sum()), int(fn[:, k].sum())) for k in range(len(THRESHOLDS))]


RUNS = {"percs": run_percs, "percs_cuda": run_percs_cuda, "stardist": run_stardist, "cellpose": run_cellpose}


@pytest.mark.parametrize("impl", list(RUNS))
def test_evaluate_all_shared_data(benchmark, data, stardist_counts, impl):
    true, pred = data
    if impl == "percs_cuda":
        if not (torch.cuda.is_available() and _backend._cuda is not None):
            pytest.skip("needs a CUDA device and percs._cuda")
        true, pred = [torch.from_numpy(x).cuda() for x in true], [torch.from_numpy(x).cuda() for x in pred]
    benchmark.group = f"evaluate {len(true)} images of shared/data at IoU >= {THRESHOLDS}"
    rounds = 5 if impl.startswith("percs") else 1
    counts = benchmark.pedantic(RUNS[impl], args=(true, pred), rounds=rounds, iterations=1, warmup_rounds=1)
    assert counts == stardist_counts
