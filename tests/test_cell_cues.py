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


NAMES = np.array(["a", "b", "c"])


def _typed_cells(rng) -> tuple[np.ndarray, np.ndarray]:
    """(kinds (20,), vectors (20, 2, 8)): 20 cells of 3 types whose layer-0 vectors sit near a type centre."""
    kinds = rng.integers(0, 3, 20)
    cells = rng.normal(size=(20, 2, 8))
    cells[:, 0] += CENTRES[kinds]
    return kinds, cells


def _queries(rng, images: int, confusable_reference: bool = False) -> list[dict]:
    """Images of 3 types whose layer-0 vectors sit near a type centre (CENTRES); one query per type present."""
    centres = CENTRES
    names = NAMES
    queries = []
    for index in range(images):
        kinds, cells = _typed_cells(rng)
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


def _image_cells(rng, images: int) -> list[dict]:
    """Per image: `_typed_cells` (no queries)."""
    out = []
    for index in range(images):
        kinds, cells = _typed_cells(rng)
        out.append(dict(image=f"train{index}", cells=torch.tensor(cells).half(), descriptors=torch.zeros(20, 3),
                        types=NAMES[kinds]))
    return out


def test_the_probe_fits_on_the_cells_of_images_without_queries():
    cues = _script()
    rng = np.random.default_rng(2)
    probe = cues.fit_probe(_image_cells(rng, 20))
    result = cues.probe_aucs(probe, _queries(rng, 10))
    assert np.mean(result["probe_true_class"]) > 0.98 and np.mean(result["probe_reference_accuracy"]) > 0.95
    q = _queries(rng, 1)[0]
    same = cues.same_type_probability(probe, q["cells"], q["descriptors"], q["reference"], q["reference_descriptors"])
    assert same.shape == (20,) and ((same >= 0) & (same <= 1)).all()
    assert same[q["target"].numpy()].min() > same[~q["target"].numpy()].max()
    assert cues.same_type_probability(probe, q["cells"][:0], q["descriptors"][:0], q["reference"],
                                      q["reference_descriptors"]).shape == (0,)
    with pytest.raises(SystemExit, match="needs cell types"):
        cues.fit_probe([{k: v for k, v in image.items() if k != "types"} for image in _image_cells(rng, 2)])


def _found(rng, probe_kinds_visible: bool = True) -> dict:
    """One query: a 40 x 80 image of 8 square found cells (ids 1..8, the generic masks, matching the true cells
    exactly) of types kinds; the reference and the target are type "a"."""
    kinds = np.array([0, 1, 2, 0, 1, 0, 2, 1])
    labels = np.zeros((40, 80), np.int32)
    for i in range(8):
        labels[4 + 20 * (i // 4):16 + 20 * (i // 4), 4 + 20 * (i % 4):16 + 20 * (i % 4)] = i + 1
    cells = rng.normal(size=(8, 2, 8))
    if probe_kinds_visible:
        cells[:, 0] += CENTRES[kinds]
    reference = rng.normal(size=(2, 8))
    reference[0] += CENTRES[0]
    truth = np.where(np.isin(labels, np.flatnonzero(kinds == 0) + 1), labels, 0)
    return dict(image=f"q{rng.integers(1 << 30)}", labels=labels, cells=np.arange(1, 9), image_labels=labels,
                vectors=torch.tensor(cells).half(), descriptors=torch.zeros(8, 3), truth=truth,
                reference=torch.tensor(reference).half(), reference_descriptors=torch.zeros(3))


def test_the_probe_decision_keeps_the_reference_type_at_the_threshold_chosen_on_the_first_split():
    cues = _script()
    rng = np.random.default_rng(3)
    probe = cues.fit_probe(_image_cells(rng, 20))
    report = cues.probe_decision(probe, {"val": [_found(rng) for _ in range(4)],
                                         "test": [_found(rng) for _ in range(3)]})
    assert report["val"]["threshold"] == report["test"]["threshold"] >= 0
    assert report["test"]["ap50"][0] == 1.0 and report["test"]["own_best"][1] == 1.0
    assert report["test"]["every_cell"] == [0.375, 0.375, 0.375]              # 3 of 8 cells are the target type
    assert report["test"]["class_agnostic_ap50"] == 1.0 and report["test"]["queries"] == 3
    blind = cues.probe_decision(probe, {"val": [_found(rng, False) for _ in range(4)]})["val"]
    assert blind["ap50"][0] < 1.0                                             # cells without their type's vector


def test_the_cli_refuses_probe_options_without_the_probe(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "cell_cues.py"), "--data", str(tmp_path),
                           "--weights", "w.pth", "--cache", str(tmp_path), "--probe-split", "train"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "need --class-probe" in done.stderr


def test_true_cell_queries_find_every_true_cell_exactly(monkeypatch):
    cues = _script()
    rng = np.random.default_rng(4)
    found = _found(rng)
    query = dict(image="q", cells=found["vectors"], descriptors=found["descriptors"], reference=found["reference"],
                 reference_descriptors=found["reference_descriptors"],
                 target=torch.from_numpy(np.isin(np.arange(1, 9), np.unique(found["truth"][found["truth"] > 0]))))

    class Dataset:
        def record(self, name):
            return name

        def read_labels(self, record):
            return found["labels"]

    [made] = cues.true_cell_queries(Dataset(), [query])
    assert np.array_equal(made["truth"], found["truth"]) and np.array_equal(made["cells"], np.arange(1, 9))
    probe = cues.fit_probe(_image_cells(rng, 20))
    assert cues.probe_decision(probe, {"val": [made]})["val"]["ap50"][0] == 1.0
    with pytest.raises(SystemExit, match="not 1..N"):
        cues.true_cell_queries(Dataset(), [dict(query, cells=found["vectors"][:5])])
