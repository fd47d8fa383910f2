"""Flow kernels next to cellpose 4 in the same run: masks -> flows, and flows -> masks with the flow check.

Run in the bench environment (see bench/README.md):
    pytest bench/bench_flows.py --benchmark-only --benchmark-json=bench/flows.json
    python bench/report.py bench/flows.json
Each group holds a percs and a cellpose benchmark on the same inputs; report.py prints the ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dynamics = pytest.importorskip("cellpose.dynamics")
cp_metrics = pytest.importorskip("cellpose.metrics")

from percs import flows as F  # noqa: E402
from percs.synthetic_labels import touching_cells  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import real_label_images  # noqa: E402

CPU = torch.device("cpu")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def datasets():
    real = [F.renumber(labels) for _, labels in real_label_images("cellpose_styles", "dsb2018_stage1_test")]
    synthetic = [F.renumber(touching_cells((2048, 2048), 2400, 26.0, seed=0))]
    return {"real95": real, "synthetic2048": synthetic}


def percs_flows(images):
    return [F.masks_to_flows(labels) for labels in images]


def cellpose_flows(images):
    return [dynamics.masks_to_flows_gpu(labels, device=CPU)[0] for labels in images]


def cellprob_of(labels):
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


def percs_masks(images, flows):
    return [F.flows_to_masks(F.FLOW_SCALE * f, cellprob_of(m)) for m, f in zip(images, flows)]


def cellpose_masks(images, flows):
    return [
        dynamics.compute_masks(F.FLOW_SCALE * f, cellprob_of(m), niter=200, cellprob_threshold=0.0,
                               flow_threshold=0.4, min_size=15, device=CPU)
        for m, f in zip(images, flows)
    ]


def mean_ap50(true, pred):
    return float(cp_metrics.average_precision(list(true), list(pred), threshold=[0.5])[0][:, 0].mean())


@pytest.mark.parametrize("name", ["real95", "synthetic2048"])
@pytest.mark.parametrize("impl", ["percs", "cellpose"])
def test_masks_to_flows(benchmark, datasets, name, impl):
    benchmark.group = f"masks_to_flows {name}"
    images = datasets[name]
    run = percs_flows if impl == "percs" else cellpose_flows
    flows = benchmark.pedantic(run, args=(images,), rounds=1 if impl == "cellpose" else 3, iterations=1)
    assert len(flows) == len(images)


@pytest.mark.parametrize("name", ["real95", "synthetic2048"])
@pytest.mark.parametrize("impl", ["percs", "cellpose"])
def test_flows_to_masks(benchmark, datasets, name, impl):
    """Both start from percs' flows (the peers' flows differ slightly, see docs/flows.md); masks are compared."""
    benchmark.group = f"flows_to_masks {name}"
    images = datasets[name]
    flows = percs_flows(images)
    run = percs_masks if impl == "percs" else cellpose_masks
    masks = benchmark.pedantic(run, args=(images, flows), rounds=1 if impl == "cellpose" else 3, iterations=1)
    benchmark.extra_info["mean_ap50_vs_truth"] = mean_ap50(images, masks)
    assert benchmark.extra_info["mean_ap50_vs_truth"] >= 0.99


@pytest.mark.parametrize("name", ["real95", "synthetic2048"])
def test_same_masks_as_cellpose(datasets, name):
    """Round trip of each implementation on its own flows; percs' masks scored against cellpose's."""
    images = datasets[name]
    ours = percs_masks(images, percs_flows(images))
    theirs = cellpose_masks(images, cellpose_flows(images))
    assert mean_ap50(theirs, ours) >= 0.99
