"""`percs eval`: metrics.json, predictions, tables, the wrong-reference control and the "percs" method.

The benchmark is `train_helpers.make_benchmark`'s (synthetic, 112 x 112; its test split has native and pasted
queries of five types on five images); the methods are `eval_helpers`' oracles, computed from its labels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_helpers import EmptyMethod, HalfOracleMethod, OracleMethod, register_test_methods
from percs.cli import main
from percs.data.format import MANIFEST, load_dataset
from percs.data.io import read_label_file, sha256
from percs.evaluate.runner import EvalConfig, EvalError, run_eval, split_queries, true_labels_of
from percs.evaluate.summary import BootstrapConfig
from percs.evaluate.table import render_table
from percs.overlay import FALSE_POSITIVE_COLOUR, MATCHED_COLOUR, MISSED_COLOUR, REFERENCE_COLOUR
from real_subsets import build_subset_benchmark, import_consep_subset
from train_helpers import make_benchmark, tiny_config

FAST = EvalConfig(bootstrap=BootstrapConfig(resamples=200), worst=2, progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def dataset(bench):
    return load_dataset(bench)


def figures(metrics: dict, threshold: str = "0.5", kind: str = "mean", group: dict | None = None) -> dict:
    """{"ap", "precision", "recall"} -> value at one threshold of overall (or of `group`)."""
    block = (group or metrics["overall"])["iou"][threshold][kind]
    return {name: block[name]["value"] for name in ("ap", "precision", "recall")}


def test_oracle_scores_one_and_writes_its_predictions(dataset, tmp_path):
    metrics = run_eval(OracleMethod(dataset), dataset, tmp_path / "out", FAST, method_key="oracle")
    queries = split_queries(dataset, "test")
    assert metrics["n_queries"] == len(queries) == len(metrics["queries"])
    assert metrics["n_images"] == len({q.image for q in queries})
    assert metrics["method"] == OracleMethod.name and metrics["control"] is None
    assert metrics["dataset"]["manifest_sha256"] == sha256(dataset.root / MANIFEST)
    for threshold in ("0.3", "0.5"):
        for kind in ("mean", "pooled"):
            assert figures(metrics, threshold, kind) == {"ap": 1.0, "precision": 1.0, "recall": 1.0}
            assert metrics["overall"]["iou"][threshold][kind]["ap"]["ci"] == [1.0, 1.0]
        pooled = metrics["overall"]["iou"][threshold]["pooled"]
        assert pooled["fp"] == pooled["fn"] == 0 and pooled["tp"] == sum(q["n_true"] for q in metrics["queries"])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for query, entry in zip(queries, metrics["queries"]):
        assert (entry["image"], entry["target_type"], entry["origin"]) == (query.image, query.target_type, query.origin)
        assert (entry["reference_image"], entry["reference_label"]) == (query.reference_image, query.reference_label)
        predicted = read_label_file(tmp_path / "out" / entry["prediction"])
        truth = true_labels_of(dataset, query, dataset.read_labels(dataset.record(query.image)))
        np.testing.assert_array_equal(predicted, truth)
    assert sorted(p.name for p in (tmp_path / "out" / "worst").glob("*.png")) == ["01-q0000.png", "02-q0001.png"]
    assert "| oracle (true cells of the reference's type) | 0.5 | 1.000 [1.000, 1.000] |" in \
        (tmp_path / "out" / "table.md").read_text()


def worst_picture_colours(path: Path, height: int) -> tuple[set, set]:
    """The match colours found in a worst-query PNG above its legend strip (rows from `height` on), and those
    found in the strip."""
    from PIL import Image

    picture = np.asarray(Image.open(path))
    colours = (MATCHED_COLOUR, FALSE_POSITIVE_COLOUR, MISSED_COLOUR, REFERENCE_COLOUR)
    found = [{c for c in colours if (part == c).all(-1).any()} for part in (picture[:height], picture[height:])]
    return found[0], found[1]


def test_worst_pictures_colour_the_matches_and_carry_the_legend(dataset, tmp_path):
    height = dataset.images[0].shape[0]
    run_eval(OracleMethod(dataset), dataset, tmp_path / "oracle", FAST)
    above, strip = worst_picture_colours(tmp_path / "oracle" / "worst" / "01-q0000.png", height)
    assert MATCHED_COLOUR in above and not {FALSE_POSITIVE_COLOUR, MISSED_COLOUR} & above
    assert strip == {MATCHED_COLOUR, FALSE_POSITIVE_COLOUR, MISSED_COLOUR, REFERENCE_COLOUR}
    run_eval(EmptyMethod(), dataset, tmp_path / "empty", FAST)
    above, strip = worst_picture_colours(tmp_path / "empty" / "worst" / "01-q0000.png", height)
    assert MISSED_COLOUR in above and not {MATCHED_COLOUR, FALSE_POSITIVE_COLOUR} & above and len(strip) == 4
    assert "Green: true positives" in (tmp_path / "empty" / "worst" / "index.md").read_text()


def test_empty_method_scores_zero(dataset, tmp_path):
    metrics = run_eval(EmptyMethod(), dataset, tmp_path / "out", FAST)
    for threshold in ("0.3", "0.5"):
        assert figures(metrics, threshold) == {"ap": 0.0, "precision": 0.0, "recall": 0.0}
        assert figures(metrics, threshold, "pooled")["recall"] == 0.0
        pooled = metrics["overall"]["iou"][threshold]["pooled"]
        assert pooled["tp"] == pooled["fp"] == 0 and pooled["fn"] == sum(q["n_true"] for q in metrics["queries"])
    assert all(q["n_pred"] == 0 for q in metrics["queries"])


def test_breakdowns_add_up_to_the_queries(dataset, tmp_path):
    metrics = run_eval(HalfOracleMethod(dataset), dataset, tmp_path / "out", FAST)
    queries = split_queries(dataset, "test")
    assert set(metrics["by_origin"]) == {"native", "pasted"}
    assert set(metrics["by_type"]) == {q.target_type for q in queries}
    for key in ("by_type", "by_origin"):
        assert sum(g["n_queries"] for g in metrics[key].values()) == metrics["n_queries"]
        for threshold in ("0.3", "0.5"):
            tp = sum(g["iou"][threshold]["pooled"]["tp"] for g in metrics[key].values())
            assert tp == metrics["overall"]["iou"][threshold]["pooled"]["tp"]
    native = [q for q in queries if q.origin == "native"]
    assert metrics["by_origin"]["native"]["n_queries"] == len(native)
    assert metrics["by_origin"]["native"]["n_images"] == len({q.image for q in native})
    # The half oracle keeps odd labels: scores that differ between queries, their mean inside its interval.
    ap = [q["iou"]["0.5"]["ap"] for q in metrics["queries"]]
    assert min(ap) < max(ap) < 1
    estimate = metrics["overall"]["iou"]["0.5"]["mean"]["ap"]
    assert estimate["value"] == pytest.approx(np.mean(ap))
    assert estimate["ci"][0] < estimate["value"] < estimate["ci"][1]


def test_wrong_reference_control_collapses_the_oracle(dataset, tmp_path):
    control = EvalConfig(control="wrong-reference", bootstrap=BootstrapConfig(resamples=200), worst=0,
                         progress=False)
    normal = run_eval(OracleMethod(dataset), dataset, tmp_path / "normal", FAST)
    swapped = run_eval(OracleMethod(dataset), dataset, tmp_path / "control", control)
    assert figures(normal)["ap"] == 1.0
    assert swapped["control"] == {"name": "wrong-reference", "seed": 0, "skipped_queries": 0}
    assert swapped["n_queries"] == normal["n_queries"]
    for threshold in ("0.3", "0.5"):
        assert figures(swapped, threshold) == {"ap": 0.0, "precision": 0.0, "recall": 0.0}
    for entry, fixed in zip(swapped["queries"], normal["queries"]):
        # Same query and target (scored against the original cells), another reference of an absent type.
        assert (entry["image"], entry["target_type"], entry["n_true"]) == \
            (fixed["image"], fixed["target_type"], fixed["n_true"])
        reference_type = dataset.record(entry["reference_image"]).type_of(entry["reference_label"])
        assert reference_type not in dataset.record(entry["image"]).instance_types
    again = run_eval(OracleMethod(dataset), dataset, tmp_path / "again", control)
    assert [q["reference_image"] for q in again["queries"]] == [q["reference_image"] for q in swapped["queries"]]
    assert "| oracle (true cells of the reference's type) [wrong-reference control] | 0.5 | 0.000" in \
        (tmp_path / "control" / "table.md").read_text()


def test_wrong_reference_prefers_the_targets_modality_group(dataset, tmp_path):
    # val image granular/1 holds elongated and granular cells: "round" is the only absent fluorescence type.
    config = EvalConfig(split="val", control="wrong-reference", bootstrap=BootstrapConfig(resamples=10), worst=0,
                        progress=False)
    metrics = run_eval(EmptyMethod(), dataset, tmp_path / "out", config)
    entries = [q for q in metrics["queries"] if q["image"] == "synthetic/granular/1/mix0"]
    assert len(entries) == 2
    for entry in entries:
        assert dataset.record(entry["reference_image"]).type_of(entry["reference_label"]) == "round"


def test_method_output_is_checked(dataset, tmp_path):
    class Transposed(EmptyMethod):
        name = "transposed"

        def segment(self, image, reference_image, reference_mask):
            return np.zeros((image.shape[1] + 1, image.shape[0]), np.int32)

    with pytest.raises(EvalError, match="method 'transposed' returned"):
        run_eval(Transposed(), dataset, tmp_path / "out", FAST)


def test_table_merges_runs_like_table_1(dataset, tmp_path):
    oracle = run_eval(OracleMethod(dataset), dataset, tmp_path / "oracle", FAST)
    empty = run_eval(EmptyMethod(), dataset, tmp_path / "empty", FAST)
    val = run_eval(OracleMethod(dataset), dataset, tmp_path / "val", EvalConfig("val", worst=0, progress=False))
    text = render_table([oracle, empty, val], digits=2)
    headline = text.split("\n\n")[1].splitlines()
    assert headline[0] == ("| Method | IoU | bench test AP | bench test P | bench test R | bench val AP | "
                           "bench val P | bench val R |")
    assert [line.split(" | ")[:2] for line in headline[2:]] == [
        ["| " + OracleMethod.name, "0.3"], ["| empty", "0.3"], ["| " + OracleMethod.name, "0.5"], ["| empty", "0.5"]]
    assert headline[5].endswith("| 0.00 [0.00, 0.00] | - | - | - |")
    assert "- bench val: " in text
    with pytest.raises(ValueError, match="two runs of 'empty' on 'bench test'"):
        render_table([empty, oracle, empty])
    assert main(["eval-table", str(tmp_path / "oracle"), str(tmp_path / "empty"), str(tmp_path / "val"),
                 "--digits", "2", "--out", str(tmp_path / "table.md")]) == 0
    assert (tmp_path / "table.md").read_text() == text


def test_paired_differences_resample_the_same_images_for_both_runs(dataset, tmp_path):
    from percs.evaluate.summary import resample_weights
    from percs.evaluate.table import paired_difference

    oracle = run_eval(OracleMethod(dataset), dataset, tmp_path / "oracle", FAST)
    half = run_eval(HalfOracleMethod(dataset), dataset, tmp_path / "half", FAST)
    empty = run_eval(EmptyMethod(), dataset, tmp_path / "empty", FAST)
    value, low, high = paired_difference(oracle, empty, "0.5")
    assert (value, low, high) == (-1.0, -1.0, -1.0)                     # every query: 0 - 1
    # the oracle: per-query differences, images drawn with the summary's own weights (image means per draw)
    ap = {q["image"] + q["target_type"]: q["iou"]["0.5"]["ap"] for q in oracle["queries"]}
    differences = np.array([q["iou"]["0.5"]["ap"] - ap[q["image"] + q["target_type"]] for q in half["queries"]])
    names = sorted({q["image"] for q in oracle["queries"]})
    index = np.array([names.index(q["image"]) for q in oracle["queries"]])
    weights = resample_weights(len(names), FAST.bootstrap)
    draws = [(w[index] * differences).sum() / w[index].sum() for w in weights]
    expected = (differences.mean(), *np.percentile(draws, [2.5, 97.5]))
    np.testing.assert_allclose(paired_difference(oracle, half, "0.5"), expected, rtol=1e-12, atol=1e-12)
    assert expected[0] < 0 and expected[1] < expected[2]
    # the order of a run's queries does not matter; a missing query does
    shuffled = dict(half, queries=half["queries"][::-1])
    np.testing.assert_allclose(paired_difference(oracle, shuffled, "0.5"), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="scored different queries .first: image"):
        paired_difference(oracle, dict(half, queries=half["queries"][1:]), "0.5")
    with pytest.raises(ValueError, match="no IoU threshold 0.7"):
        paired_difference(oracle, half, "0.7")
    text = render_table([oracle, half, empty], paired=True)
    paired = text.split("Paired by image")[1].splitlines()
    assert f"bench test: {OracleMethod.name}" in paired[0]
    assert paired[4].startswith(f"| {OracleMethod.name} | 0.3 | - |")
    assert paired[9] == "| empty | 0.5 | -1.000 [-1.000, -1.000] |"
    assert "Paired by image" not in render_table([oracle, half, empty])
    assert main(["eval-table", str(tmp_path / "oracle"), str(tmp_path / "half"), "--paired",
                 "--out", str(tmp_path / "paired.md")]) == 0
    assert "Paired by image" in (tmp_path / "paired.md").read_text()


def test_every_kth_query_is_a_marked_subset(dataset, tmp_path, capsys, monkeypatch):
    queries = split_queries(dataset, "test")
    every = EvalConfig(bootstrap=BootstrapConfig(resamples=50), worst=0, progress=False, every=2)
    metrics = run_eval(OracleMethod(dataset), dataset, tmp_path / "half", every)
    ran = [(q["image"], q["target_type"], q["reference_image"], q["reference_label"]) for q in metrics["queries"]]
    assert ran == [(q.image, q.target_type, q.reference_image, q.reference_label) for q in queries[::2]]
    assert metrics["query_subset"] == {"every": 2, "split_queries": len(queries)} and len(queries) > len(ran) > 1
    full = run_eval(OracleMethod(dataset), dataset, tmp_path / "full", FAST)
    assert full["query_subset"] is None
    lines = render_table([full, metrics]).split("\n\n")[1].splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| " + OracleMethod.name,
                                                            "| " + OracleMethod.name + " [every 2nd query]"]
    with pytest.raises(EvalError, match="every must be >= 1"):
        EvalConfig(every=0)
    register_test_methods(monkeypatch)
    assert main(["eval", "--method", "oracle", "--data", str(dataset.root), "--out", str(tmp_path / "cli"),
                 "--every", "3", "--bootstrap", "20", "--worst", "0", "--no-progress"]) == 0
    assert f"{len(queries[::3])} queries (every 3rd of {len(queries)})" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--method", "nonesuch"], "--method 'nonesuch' is not one of"),
    (["--method", "percs", "--backbone-weights", "{tmp}/no.pth"], "--backbone-weights {tmp}/no.pth does not exist"),
    (["--method", "oracle", "--split", "train"], "--split: split 'train' of dataset 'bench' has no queries"),
    (["--method", "oracle", "--data", "{tmp}"], "--data {tmp}: {tmp}/manifest.json: no manifest"),
    (["--method", "oracle", "--out", "{bench}"], "--out"),
    (["--method", "percs", "--checkpoint", "{tmp}/no.pt"], "--checkpoint {tmp}/no.pt: does not exist"),
    (["--method", "percs", "--checkpoint", "{tmp}"], "--checkpoint {tmp}: is not a file"),
    (["--method", "percs", "--checkpoint", "{tmp}/ck.pt", "--data", "{tmp}"], "--data {tmp}"),
    (["--method", "percs", "--checkpoint", "{tmp}/ck.pt", "--split", "train"], "--split: split 'train'"),
    (["--method", "percs", "--checkpoint", "{tmp}/ck.pt", "--out", "{bench}"], "--out"),
    (["--method", "percs", "--checkpoint", "{tmp}/ck.pt", "--min-cell-probability", "2"], "--min-cell-probability"),
    (["--method", "percs", "--checkpoint", "{tmp}/ck.pt", "--device", "gpu0"], "device 'gpu0' is not a device"),
])
def test_cli_errors_name_the_argument(bench, tmp_path, monkeypatch, capsys, argv, message):
    """One line on stderr, exit status 2, and no model loaded (ck.pt is a placeholder that is never read)."""
    import percs.api

    def refuse(checkpoint, device="auto", backbone_weights=None):
        raise AssertionError(f"the model was loaded from {checkpoint} although an input is bad")

    monkeypatch.setattr(percs.api, "load_model", refuse)
    (tmp_path / "ck.pt").write_bytes(b"")
    register_test_methods(monkeypatch)
    argv = [a.format(tmp=tmp_path, bench=bench) for a in argv]
    defaults = {"--data": str(bench), "--out": str(tmp_path / "out")}
    argv += [item for key, value in defaults.items() if key not in argv for item in (key, value)]
    assert main(["eval", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("percs eval: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cli_corrupt_checkpoint_is_one_line(bench, tmp_path, capsys):
    (tmp_path / "ck.pt").write_bytes(b"not a checkpoint")
    argv = ["eval", "--method", "percs", "--checkpoint", str(tmp_path / "ck.pt"), "--data", str(bench),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"percs eval: error: checkpoint {tmp_path / 'ck.pt'} is not a percs checkpoint (no checksum header)\n"
    assert not (tmp_path / "out").exists()


def test_cli_runs_a_registered_method(bench, tmp_path, monkeypatch, capsys):
    register_test_methods(monkeypatch)
    argv = ["eval", "--method", "half-oracle", "--data", str(bench), "--out", str(tmp_path / "out"),
            "--bootstrap", "50", "--worst", "0", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["method_key"] == "half-oracle" and metrics["bootstrap"]["resamples"] == 50
    assert "AP@0.5" in capsys.readouterr().out and not (tmp_path / "out" / "worst").exists()
    control = ["--control", "wrong-reference", "--out", str(tmp_path / "control")]
    assert main(argv[:5] + control + argv[7:]) == 0
    assert "(0 without a wrong reference left out), AP@0.5 0.000" in capsys.readouterr().out


def tiny_checkpoint(bench: Path, path: Path) -> Path:
    """A `percs train`-style checkpoint of a random tiny model (tiny_config: 56-pixel windows)."""
    from percs.train.checkpoint import save_checkpoint
    from percs.train.config import config_to_dict
    from percs.train.setup import build_model

    config = tiny_config(bench)
    torch.manual_seed(0)
    save_checkpoint({"model": build_model(config.model).state_dict(), "config": config_to_dict(config)}, path)
    return path


def test_percs_method_end_to_end_through_the_cli(bench, tmp_path):
    checkpoint = tiny_checkpoint(bench, tmp_path / "tiny.pt")
    command = [sys.executable, "-m", "percs", "eval", "--method", "percs", "--checkpoint", str(checkpoint),
               "--data", str(bench), "--split", "test", "--out", str(tmp_path / "out"), "--device", "cpu",
               "--niter", "20", "--bootstrap", "50", "--worst", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["method"] == "PerCS-DINO (vits14, random-init backbone, depth 1, width 32)"
    settings = metrics["method_settings"]
    assert settings["predictor"]["niter"] == 20 and settings["predictor"]["window"] == 56
    assert settings["checkpoint_sha256"] == sha256(checkpoint) and settings["device"] == "cpu"
    assert metrics["n_queries"] == len(split_queries(load_dataset(bench), "test"))
    for entry in metrics["queries"]:
        predicted = read_label_file(tmp_path / "out" / entry["prediction"])
        assert predicted.shape == (112, 112) and predicted.dtype == np.int32
        assert len(np.unique(predicted[predicted > 0])) == entry["n_pred"]
    assert len(list((tmp_path / "out" / "worst").glob("*.png"))) == 1
    assert "PerCS-DINO (vits14, random-init backbone, depth 1, width 32) | 0.3 |" in \
        (tmp_path / "out" / "table.md").read_text()


class FlowsOnlySegmenter:
    """A stand-in for percs.api.Segmenter whose flows are the true ones of every cell (FLOW_SCALE x
    masks_to_flows) and whose same-type decision is `decide(truth)` (the target's true cells, or none)."""

    generic = False

    def __init__(self, dataset, decide):
        self.oracle, self.decide = OracleMethod(dataset), decide

    def reference(self, image, *, labels, label):
        return (image, labels == label)

    def segment(self, image, reference):
        from percs.api import SegmentationResult
        from percs.flows import FLOW_SCALE, masks_to_flows

        labels = self.oracle.dataset.read_labels(self.oracle.record_of(image))
        chosen = self.decide(self.oracle.segment(image, *reference))
        return SegmentationResult(labels=chosen, probability=(chosen > 0).astype(np.float32),
                                  cell_probability=np.ones(int(chosen.max()), np.float32),
                                  flows=FLOW_SCALE * masks_to_flows(labels))


def test_type_vs_flows_tells_a_failed_type_decision_from_failed_flows(dataset):
    from percs.evaluate.diagnose import type_vs_flows

    blind = type_vs_flows(FlowsOnlySegmenter(dataset, np.zeros_like), dataset, "test")
    assert blind.queries == len(split_queries(dataset, "test"))
    assert blind.ap50_predicted == 0.0 and blind.same_type_pixel_iou == 0.0
    assert blind.ap50_true_type > 0.95  # true flows rebuilt under the true type: nearly every cell back
    perfect = type_vs_flows(FlowsOnlySegmenter(dataset, lambda truth: truth), dataset, "test", every=2)
    assert perfect.queries == len(split_queries(dataset, "test")[::2])
    assert perfect.ap50_predicted == 1.0 and perfect.same_type_pixel_iou == 1.0
    with pytest.raises(ValueError, match="every"):
        type_vs_flows(FlowsOnlySegmenter(dataset, np.zeros_like), dataset, "test", every=0)


@pytest.fixture(scope="module")
def real_benchmarks(tmp_path_factory) -> dict[str, Path]:
    """PerCS benchmarks of small real subsets of ../shared/data: cellpose_styles + dsb2018 (PerCS protocol,
    one mixed variant per image) and CoNSeP patches (PanNuke-style protocol)."""
    from percs.data.build import BuildConfig, build_benchmark

    root = tmp_path_factory.mktemp("real-eval")
    consep = build_benchmark([import_consep_subset(root)], root / "consep-bench",
                             BuildConfig(distractor_types=("other",), group_pattern=r"^(.*)_\d+$"))
    return {"mini": build_subset_benchmark(root, variants=1), "consep": consep.root}


@pytest.mark.parametrize("name", ["mini", "consep"])
def test_eval_cli_on_real_benchmarks_with_the_wrong_reference_control(real_benchmarks, name, tmp_path,
                                                                     monkeypatch, capsys):
    bench = real_benchmarks[name]
    register_test_methods(monkeypatch)
    argv = ["eval", "--method", "oracle", "--data", str(bench), "--out", str(tmp_path / "out"),
            "--bootstrap", "50", "--worst", "0", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    queries = split_queries(load_dataset(bench), "test")
    assert metrics["n_queries"] == len(queries) > 0
    assert figures(metrics) == {"ap": 1.0, "precision": 1.0, "recall": 1.0}
    assert sum(q["n_true"] for q in metrics["queries"]) > 0
    capsys.readouterr()
    assert main(argv[:5] + ["--control", "wrong-reference", "--out", str(tmp_path / "control")] + argv[7:]) == 0
    swapped = json.loads((tmp_path / "control" / "metrics.json").read_text())
    assert swapped["n_queries"] + swapped["control"]["skipped_queries"] == len(queries)
    assert swapped["n_queries"] > 0
    assert figures(swapped) == {"ap": 0.0, "precision": 0.0, "recall": 0.0}


def test_percs_method_on_real_images(real_benchmarks, tmp_path):
    """A tiny random checkpoint through `percs eval` on real RGB and grey images of several sizes: every
    prediction has its image's shape and is scored (the scores of a random model mean nothing)."""
    bench = real_benchmarks["mini"]
    checkpoint = tiny_checkpoint(bench, tmp_path / "tiny.pt")
    argv = ["eval", "--method", "percs", "--checkpoint", str(checkpoint), "--data", str(bench), "--split", "novel",
            "--every", "2", "--out", str(tmp_path / "out"), "--device", "cpu", "--niter", "10", "--bootstrap", "20",
            "--worst", "1", "--no-progress"]
    assert main(argv) == 0
    dataset = load_dataset(bench)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_queries"] == len(split_queries(dataset, "novel")[::2]) > 0
    for entry in metrics["queries"]:
        predicted = read_label_file(tmp_path / "out" / entry["prediction"])
        assert predicted.shape == dataset.read_labels(dataset.record(entry["image"])).shape
        assert predicted.dtype == np.int32 and len(np.unique(predicted[predicted > 0])) == entry["n_pred"]
