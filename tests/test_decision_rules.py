"""scripts/decision_rules.py: a decision rule scored from recorded cells equals `percs.metrics.evaluate` on the
kept masks (the script's shortcut for AP@0.5)."""

from __future__ import annotations

import importlib.util

import numpy as np

from conftest import REPO_ROOT
from percs.metrics import evaluate
from percs.synthetic_labels import touching_cells


def _script():
    spec = importlib.util.spec_from_file_location("decision_rules", REPO_ROOT / "scripts" / "decision_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_cells_score_a_kept_set_as_the_metric_does():
    rules = _script()
    rng = np.random.default_rng(0)
    for seed in range(5):
        truth_all = touching_cells((64, 80), 14, 6.0, seed).astype(np.int32)
        target = np.isin(truth_all, rng.choice(np.unique(truth_all[truth_all > 0]), 6, replace=False))
        truth = np.where(target, truth_all, 0)
        found = np.roll(touching_cells((64, 80), 14, 6.0, seed), rng.integers(-3, 4, 2), (0, 1)).astype(np.int32)
        found[rng.random(found.shape) < 0.05] = 0                   # ragged masks: some IoUs fall under 0.5
        cells = np.unique(found[found > 0])
        logits = rng.normal(size=len(cells))
        matched = rules.matched_cells(found, cells, truth)
        query = dict(logits=logits.tolist(), matched=matched.tolist(), n_true=int(np.unique(truth[truth > 0]).size))
        for keep in (lambda x: x >= 0.0, lambda x: x >= x.max() - 0.5, lambda x: np.ones(len(x), bool)):
            kept = np.where(np.isin(found, cells[keep(logits)]), found, 0)
            stats = evaluate(truth, kept, (0.5,), iou_rule="gt")[0]
            expected = stats.tp / (stats.tp + stats.fp + stats.fn) if stats.tp + stats.fp + stats.fn else 1.0
            assert rules.mean_ap([query], keep) == expected


def test_no_true_cell_and_no_found_cell():
    rules = _script()
    assert not rules.matched_cells(np.ones((4, 4), np.int32), np.array([1]), np.zeros((4, 4), np.int32)).any()
    assert rules.mean_ap([dict(logits=[], matched=[], n_true=3)], lambda x: x > 0) == 0.0
    assert rules.mean_ap([dict(logits=[1.0], matched=[False], n_true=0)], lambda x: x > 5) == 1.0


def test_oracle_threshold_is_the_best_threshold_on_the_query_itself():
    rules = _script()
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(0, 12))
        logits = np.round(rng.normal(size=n), 1)                    # rounded: tied logits too
        query = dict(logits=logits.tolist(), matched=(rng.random(n) < 0.4).tolist(), n_true=int(rng.integers(0, 6)))
        thresholds = np.concatenate((logits, [np.inf]))
        best = max(rules.mean_ap([query], lambda x, t=t: x >= t) for t in thresholds)
        assert rules.oracle_ap(query) == best
    assert rules.oracle_ap(dict(logits=[0.5, 0.5], matched=[True, False], n_true=1)) == 0.5


def test_bounds_prints_oracle_ceiling_and_every_cell(tmp_path, capsys):
    import json

    rules = _script()
    queries = [dict(logits=[2.0, 1.0, 0.0], matched=[False, True, True], n_true=3)]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(queries))
    assert rules.main(["bounds", str(path)]) == 0
    # oracle: all 3 kept (2 / 4 = 0.5); ceiling: the 2 matched (2 / 3); every cell: 0.5
    assert capsys.readouterr().out.splitlines()[1] == f"{path} | 0.500 | 0.667 | 0.500"


def test_ignored_cells_are_neither_kept_nor_missed():
    rules = _script()
    query = dict(logits=[3.0, 2.0, 1.0], matched=[False, True, False], n_true=2, ignored=[True, False, False])
    assert rules.mean_ap([query], lambda x: x >= 1.5) == 0.5             # cell 0 ignored: 1 TP, 0 FP, 1 FN
    assert rules.oracle_ap(query) == 0.5
    assert rules.oracle_ap(dict(query, ignored=[False, False, False])) == 1 / 3


def test_expand_rule_keeps_what_the_instance_decision_keeps(tmp_path, capsys):
    """The script's "expand A" rule on recorded logits and best-match logits keeps the cells that
    `InstanceScorer.decide` with `expand` = A keeps (a distance scorer, random cells)."""
    import json

    import torch

    from percs.model.instance import InstanceScorer
    from predict_helpers import DistanceScorer

    rules = _script()
    rng = np.random.default_rng(2)
    vectors = torch.from_numpy(rng.normal(size=(15, 2, 4)).astype(np.float32))
    descriptors, reference = torch.zeros(15, 3), (torch.from_numpy(rng.normal(size=(2, 4)).astype(np.float32)),
                                                  torch.zeros(3))
    instance = InstanceScorer(None, DistanceScorer(offset=12.0))
    logits = instance.logits(vectors, descriptors, [reference])[:, 0]
    best = int(logits.argmax())
    match = instance.logits(vectors, descriptors, [(vectors[best], descriptors[best])])[:, 0]   # as `record` does
    matched = rng.random(15) < 0.4
    query = dict(logits=logits.tolist(), match=match.tolist(), matched=matched.tolist(), n_true=int(matched.sum()))
    for weight in (0.25, 0.5, 1.0):
        score = np.asarray(rules.expanded([query], weight)[0]["logits"])
        threshold = float(np.median(score)) + 1e-3                        # between cells, not on one
        instance.expand, instance.threshold = weight, 1 / (1 + np.exp(-threshold))
        _, keep = instance.decide(vectors, descriptors, [reference])
        np.testing.assert_array_equal(keep.numpy(), score >= threshold)
        assert 0 < keep.sum() < 15
    assert rules.expanded([query], 0.0)[0]["logits"] == query["logits"]
    path = tmp_path / "val.json"
    path.write_text(json.dumps([query]))
    assert rules.main(["rules", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith("expand")] == \
        [f"expand {w:g}" for w in rules.EXPAND]
    assert rules.main(["bounds", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()[1].split(" | ")) == 5      # the expand-0.5 oracle column
