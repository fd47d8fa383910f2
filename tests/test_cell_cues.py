"""scripts/cell_cues.py --class-probe: the linear type probe learns types it can separate, and reports the true
type's ranking, the ranking through the reference's posterior, and the reference's type accuracy."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("cell_cues", REPO_ROOT / "scripts" / "cell_cues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CENTRES = np.random.default_rng(7).normal(size=(3, 8)) * 3


def _queries(rng, images: int, confusable_reference: bool = False) -> list[dict]:
    """Images of 3 types whose layer-0 vectors sit near a type centre (CENTRES); one query per type present."""
    centres = CENTRES
    names = np.array(["a", "b", "c"])
    queries = []
    for index in range(images):
        kinds = rng.integers(0, 3, 20)
        cells = rng.normal(size=(20, 2, 8))
        cells[:, 0] += centres[kinds]
        for kind in np.unique(kinds):
            shown = (kind + 1) % 3 if confusable_reference else kind    # a reference that looks like another type
            reference = rng.normal(size=(2, 8))
            reference[0] += centres[shown]
            queries.append(dict(image=f"image{index}", types=names[kinds], cells=torch.tensor(cells).half(),
                                descriptors=torch.zeros(20, 3), reference=torch.tensor(reference).half(),
                                reference_descriptors=torch.zeros(3), target=torch.from_numpy(kinds == kind),
                                target_type=str(names[kind])))
    return queries


def test_the_probe_ranks_a_known_type_and_reads_it_from_the_reference():
    cues = _script()
    rng = np.random.default_rng(0)
    probe = cues.train_probe(_queries(rng, 20))
    assert probe.classes == ["a", "b", "c"]
    result = cues.probe_aucs(probe, _queries(rng, 10))
    assert np.mean(result["probe_true_class"]) > 0.98
    assert np.mean(result["probe_reference_class"]) > 0.98 and np.mean(result["probe_reference_accuracy"]) > 0.95
    misleading = cues.probe_aucs(probe, _queries(rng, 10, confusable_reference=True))
    assert np.mean(misleading["probe_true_class"]) > 0.98                  # the cells still rank by their type
    assert np.mean(misleading["probe_reference_class"]) < 0.4               # the reference names another type
    assert np.mean(misleading["probe_reference_accuracy"]) < 0.05


def test_the_probe_skips_unknown_types_and_needs_cell_types():
    cues = _script()
    rng = np.random.default_rng(1)
    probe = cues.train_probe(_queries(rng, 10))
    novel = [dict(q, target_type="z") for q in _queries(rng, 2)]
    assert all(values == [] for values in cues.probe_aucs(probe, novel).values())
    with pytest.raises(SystemExit, match="needs cell types"):
        cues.train_probe([{k: v for k, v in q.items() if k != "types"} for q in _queries(rng, 2)])
