"""`percs eval --shots K --negatives M`: the seeded draws of extra references, their record in metrics.json
and the table, and the run without the flags unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval_helpers import OracleMethod, register_test_methods
from percs.cli import main
from percs.data.cells import cell_table
from percs.data.format import load_dataset
from percs.evaluate.runner import EvalConfig, EvalError, run_eval, split_queries
from percs.evaluate.shots import ShotsConfig, extra_references
from percs.evaluate.summary import BootstrapConfig
from percs.evaluate.table import render_table
from train_helpers import make_benchmark

FAST = dict(bootstrap=BootstrapConfig(resamples=50), worst=0, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_benchmark(tmp_path_factory.mktemp("shots")))


def reader(dataset):
    return lambda name: dataset.read_labels(dataset.record(name))


class ShotsOracle(OracleMethod):
    """The oracle, taking several references: the true cells of its positives' type; it records what it got."""

    name = "shots oracle"

    def __init__(self, dataset):
        super().__init__(dataset)
        self.calls = []

    def segment_references(self, image, positives, negatives):
        self.calls.append((self.record_of(image).name, [self.reference_type(i, m) for i, m in positives],
                           [(self.record_of(i).name, self.reference_type(i, m)) for i, m in negatives]))
        return self.segment(image, *positives[0])


def test_extra_references_are_seeded_cells_of_the_right_types(dataset):
    queries = split_queries(dataset, "test")
    config = ShotsConfig(shots=3, negatives=2, seed=5)
    extras = extra_references(dataset, queries, config, reader(dataset))
    assert extras == extra_references(dataset, queries, config, reader(dataset))       # seeded
    assert extras != extra_references(dataset, queries, ShotsConfig(3, 2, 6), reader(dataset))
    for query, extra in zip(queries, extras):
        split = dataset.record(query.image).split
        assert len(extra.positives) == 2 and len(extra.negatives) <= 2
        for reference in extra.positives:
            record = dataset.record(reference.image)
            assert record.split == split and reference.image != query.image
            assert record.type_of(reference.label) == query.target_type
            assert (reference.image, reference.label) != (query.reference_image, query.reference_label)
            table = cell_table(dataset.read_labels(record))
            assert table.whole[list(table.labels).index(reference.label)]
        assert len(set(extra.positives)) == len(extra.positives)
        record = dataset.record(query.image)
        others = [label for t in record.instance_types if t != query.target_type for label in record.labels_of_type(t)]
        for reference in extra.negatives:
            assert reference.image == query.image and reference.label in others
        if others:
            assert extra.negatives
    assert all(not e.positives and not e.negatives
               for e in extra_references(dataset, queries, ShotsConfig(1, 0), reader(dataset)))
    with pytest.raises(ValueError, match="shots must be >= 1"):
        ShotsConfig(shots=0)
    with pytest.raises(ValueError, match="negatives must be >= 0"):
        ShotsConfig(negatives=-1)


def test_a_run_with_shots_gives_every_reference_and_records_them(dataset, tmp_path):
    method = ShotsOracle(dataset)
    plain = run_eval(method, dataset, tmp_path / "plain", EvalConfig(**FAST))
    assert plain["shots"] is None and not method.calls and "extra_positives" not in plain["queries"][0]
    config = EvalConfig(**FAST, shots=ShotsConfig(3, 2, 1))
    metrics = run_eval(method, dataset, tmp_path / "shots", config)
    queries = split_queries(dataset, "test")
    assert len(method.calls) == len(queries)
    assert metrics["shots"] == {"shots": 3, "negatives": 2, "seed": 1, "negatives_from": "random",
                                "positives_from": "other-images"}
    for query, (image, positive_types, negatives), entry in zip(queries, method.calls, metrics["queries"]):
        assert image == query.image and positive_types == [query.target_type] * 3
        assert all(name == query.image and t != query.target_type for name, t in negatives)
        assert len(entry["extra_positives"]) == 2 and len(entry["extra_negatives"]) == len(negatives)
    assert metrics["overall"]["iou"]["0.5"]["mean"]["ap"]["value"] == 1.0
    saved = json.loads((tmp_path / "shots" / "metrics.json").read_text())
    assert saved["queries"][0]["extra_positives"] == metrics["queries"][0]["extra_positives"]
    rows = [line.split(" | ")[0] for line in render_table([plain, metrics]).split("\n\n")[1].splitlines()[2:4]]
    assert rows == ["| shots oracle", "| shots oracle [3 shots, 2 negatives]"]


def test_shots_need_a_method_that_takes_several_references(dataset, tmp_path, monkeypatch, capsys):
    with pytest.raises(EvalError, match="takes one reference"):
        run_eval(OracleMethod(dataset), dataset, tmp_path / "one", EvalConfig(**FAST, shots=ShotsConfig(2)))
    with pytest.raises(EvalError, match="cannot be combined"):
        EvalConfig(control="wrong-reference", shots=ShotsConfig(1, 1))
    register_test_methods(monkeypatch)
    argv = ["eval", "--method", "oracle", "--data", str(dataset.root), "--bootstrap", "20", "--worst", "0",
            "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "a"), "--shots", "0"]) == 2
    assert "shots must be >= 1" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "b"), "--negatives", "1", "--control", "wrong-reference"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "c"), "--shots", "2"]) == 1
    assert "takes one reference" in capsys.readouterr().err


def test_percs_method_takes_several_references(tmp_path):
    """A generic checkpoint with a scorer: --shots / --negatives through `percs eval --method percs`, and one
    reference as a list equals the single-reference run exactly."""
    import argparse

    from baseline_helpers import red_and_green_disks, scored_checkpoint
    from percs.evaluate.percs_method import build_percs_method

    model, _ = scored_checkpoint(tmp_path, 0.5)
    args = argparse.Namespace(checkpoint=str(model), min_cell_probability=0.0, device="cpu",
                              window=None, stride=None, batch_size=None, cellprob_threshold=None,
                              flow_threshold=None, niter=None, min_size=None, precision=None, flips=None)
    method = build_percs_method(args, None)
    image, red, green = red_and_green_disks()
    single = method.segment(image, image, red == 1)
    np.testing.assert_array_equal(method.segment_references(image, [(image, red == 1)], []), single)
    several = method.segment_references(image, [(image, red == 1), (image, red == 2)], [(image, green == 1)])
    assert several.shape == image.shape[:2] and several.dtype == np.int32
    assert main(["eval", "--method", "percs", "--checkpoint", str(model), "--data", str(tmp_path / "bench"),
                 "--out", str(tmp_path / "out"), "--shots", "2", "--negatives", "1", "--bootstrap", "20",
                 "--worst", "0", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["shots"]["negatives"] == 1


class EveryCellUnlessNegative(OracleMethod):
    """Every cell of the image, minus the cells of its negatives' types: first passes take other types."""

    name = "every cell unless negative"

    def __init__(self, dataset):
        super().__init__(dataset)
        self.negative_counts = []

    def segment_references(self, image, positives, negatives):
        record = self.record_of(image)
        labels = self.dataset.read_labels(record)
        self.negative_counts.append(len(negatives))
        dropped = [label for i, m in negatives for label in record.labels_of_type(self.reference_type(i, m))]
        return np.where(np.isin(labels, dropped), 0, labels).astype(np.int32)


def test_negatives_from_false_positives_are_cells_the_method_wrongly_took(dataset, tmp_path):
    method = EveryCellUnlessNegative(dataset)
    config = EvalConfig(**FAST, shots=ShotsConfig(1, 2, 3, "false-positives"))
    metrics = run_eval(method, dataset, tmp_path / "fp", config)
    queries = split_queries(dataset, "test")
    assert method.negative_counts[0::2] == [0] * len(queries)                # a first pass with positives alone
    for query, entry in zip(queries, metrics["queries"]):
        record = dataset.record(query.image)
        others = [t for t in record.instance_types if t != query.target_type]
        taken = [label for t in others for label in record.labels_of_type(t)]
        assert len(entry["extra_negatives"]) == min(2, len(taken))
        assert all(image == query.image and label in taken for image, label in entry["extra_negatives"])
    assert metrics["shots"]["negatives_from"] == "false-positives"
    every = run_eval(EveryCellUnlessNegative(dataset), dataset, tmp_path / "every",
                     EvalConfig(**FAST, shots=ShotsConfig(2)))
    ap = lambda m: m["overall"]["iou"]["0.5"]["mean"]["ap"]["value"]  # noqa: E731
    assert ap(metrics) > ap(every) + 0.1                                     # the negatives removed other types
    again = run_eval(EveryCellUnlessNegative(dataset), dataset, tmp_path / "again", config)
    assert [q["extra_negatives"] for q in again["queries"]] == [q["extra_negatives"] for q in metrics["queries"]]
    rows = render_table([metrics]).split("\n\n")[1].splitlines()[2]
    assert "[1 shot, 2 negatives from false positives]" in rows
    with pytest.raises(ValueError, match="negatives_from must be one of"):
        ShotsConfig(negatives_from="clicks")


def test_positives_from_the_query_image_are_its_own_cells_of_the_type(dataset, tmp_path):
    queries = split_queries(dataset, "test")
    config = ShotsConfig(shots=4, seed=2, positives_from="query-image")
    extras = extra_references(dataset, queries, config, reader(dataset))
    assert extras == extra_references(dataset, queries, config, reader(dataset))       # seeded
    drawn = 0
    for query, extra in zip(queries, extras):
        record = dataset.record(query.image)
        whole = cell_table(dataset.read_labels(record))
        of_type = [label for label, is_whole in zip(whole.labels, whole.whole)
                   if is_whole and record.type_of(label) == query.target_type
                   and (query.image, label) != (query.reference_image, query.reference_label)]
        assert len(extra.positives) <= 3 and len({r.label for r in extra.positives}) == len(extra.positives)
        assert all(r.image == query.image and r.label in of_type for r in extra.positives)
        drawn += len(extra.positives)
    assert drawn > 0
    method = ShotsOracle(dataset)
    metrics = run_eval(method, dataset, tmp_path / "own", EvalConfig(**FAST, shots=config))
    assert metrics["shots"]["positives_from"] == "query-image"
    for query, entry in zip(queries, metrics["queries"]):
        assert all(image == query.image for image, _ in entry["extra_positives"])
        n_target = len(dataset.record(query.image).labels_of_type(query.target_type))
        assert entry["n_true"] == n_target - len(entry["extra_positives"])     # clicked cells are not scored
    assert metrics["overall"]["iou"]["0.5"]["mean"]["ap"]["value"] == 1.0      # nor the predictions matching them
    assert "[4 shots from the query image, 0 negatives]" in render_table([metrics]).split("\n\n")[1]
    with pytest.raises(ValueError, match="positives_from must be one of"):
        ShotsConfig(positives_from="clicks")


def test_positives_from_on_the_command_line(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--method", "oracle", "--data", str(dataset.root), "--split", "test", "--out",
              str(tmp_path / "cli"), "--positives-from", "elsewhere"])
    assert exit_info.value.code == 2 and "--positives-from: invalid choice: 'elsewhere'" in capsys.readouterr().err


def test_without_clicked_drops_the_clicked_cells_and_their_matches():
    from percs.evaluate.runner import without_clicked

    labels = np.zeros((8, 12), np.int32)
    labels[1:4, 1:4], labels[1:4, 6:9], labels[5:8, 1:4] = 1, 2, 3
    truth = np.where(np.isin(labels, [1, 2]), labels, 0)                      # target cells 1, 2
    predicted = np.zeros_like(labels)
    predicted[1:4, 1:4], predicted[1:4, 6:8], predicted[5:8, 1:4] = 7, 8, 9    # 7 matches 1; 8 matches 2
    kept_truth, kept_predicted = without_clicked(truth, predicted, labels, np.array([1]))
    assert set(np.unique(kept_truth)) == {0, 2} and set(np.unique(kept_predicted)) == {0, 8, 9}
    shifted = np.roll(predicted, 2, axis=1)                                    # 7 overlaps cell 1 at IoU 1/5
    assert 7 in without_clicked(truth, shifted, labels, np.array([1]))[1]
    assert without_clicked(truth, predicted, labels, np.zeros(0, np.int64))[1] is predicted
