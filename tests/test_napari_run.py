"""The napari plugin's logic without Qt or napari (percs.napari.reference, .run, .sample_data): reference cells
from clicks and painted masks, the quick segmentation on real and synthetic cells, every input error, a run
equal to the API's result on a real image, the model loaded once and the backbone not rerun for a second
reference. Runs everywhere; the widget itself is tested in test_napari_widget.py."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from napari_helpers import api_result, centre_of, instance_checkpoint, real_nuclei, threshold_checkpoint
from predict_helpers import write_tiny_checkpoint
from skimage.measure import regionprops

from conftest import data_dir
from percs.data.synthetic import synthetic_image
from percs.flows import renumber
from percs.napari.reference import (InputError, cell_of_labels, layer_image, painted_cell, pixel_of, quick_cell,
                                    quick_cells)
from percs.napari.run import (STEPS, Progress, RunFailure, RunRequest, RunResult, SegmenterCache, display_table,
                              error_message, last_point, reference_mask, run_steps, run_steps_or_failure)
from percs.napari.sample_data import SAMPLE_SHAPE, synthetic_cells
from percs.train.checkpoint import CheckpointError
from percs.train.provenance import TrainingData

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nuclei():
    return real_nuclei()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("napari") / "tiny.pt", generic=False)


def drive(steps):
    """Runs a run_steps generator to its end: (the Progress it yielded, its RunResult)."""
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as stop:
            return progress, stop.value


# --- images and points ---

def test_layer_image_takes_grey_and_rgb_and_drops_alpha():
    grey = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    assert layer_image(grey, "g") is not None and layer_image(grey, "g").shape == (20, 30)
    rgba = np.zeros((20, 30, 4), np.uint8)
    assert layer_image(rgba, "c", rgb=True).shape == (20, 30, 3)


@pytest.mark.parametrize("data, rgb, message", [
    (np.zeros((3, 20, 30)), False, "image layer 'x' has 3 dims (3, 20, 30): percs segments one 2-D image"),
    (np.zeros((20, 30, 3)), False, "has 3 dims"),  # RGB data not shown as RGB is a stack to napari
    (np.zeros((10, 30)), False, "image layer 'x' is 10 x 30 pixels (height x width): percs needs at least 14 x 14"),
    (np.zeros((30, 13, 3)), True, "is 30 x 13 pixels"),
    (np.full((20, 30), np.nan), False, "image layer 'x' has NaN or infinite values"),
    (np.zeros((20, 30), complex), False, "image layer 'x' has dtype complex128, expected numbers"),
])
def test_layer_image_refuses_what_the_model_cannot_take(data, rgb, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_image(data, "x", rgb)


def test_pixel_of_rounds_to_the_pixel_under_the_point_and_refuses_points_outside():
    assert pixel_of((2.49, 3.5), (10, 10), "image 'a'") == (2, 4)
    assert pixel_of((-0.5, 9.49), (10, 10), "image 'a'") == (0, 9)
    with pytest.raises(InputError, match=r"the point at \(y, x\) = \(10\.0, 2\.0\) is outside image 'a' "
                                         r"\(10 x 12 pixels\)"):
        pixel_of((10.0, 2.0), (10, 12), "image 'a'")
    with pytest.raises(InputError, match="outside"):
        pixel_of((3.0, -0.6), (10, 12), "image 'a'")


def test_last_point_is_the_last_row_and_an_empty_layer_is_refused():
    np.testing.assert_array_equal(last_point(np.array([[1.0, 2.0], [3.0, 4.0]]), "p"), [3.0, 4.0])
    np.testing.assert_array_equal(last_point(np.array([[0, 5.0, 6.0]]), "p"), [0, 5.0, 6.0])
    with pytest.raises(InputError, match="points layer 'p' has no point: add one on the reference cell"):
        last_point(np.empty((0, 2)), "p")


# --- the three ways to give the reference cell ---

def test_cell_of_labels_is_the_cell_under_the_click(nuclei):
    _, labels = nuclei
    for cell in np.unique(labels)[1:]:
        np.testing.assert_array_equal(cell_of_labels(labels, centre_of(labels, cell), "truth"), labels == cell)


def test_a_click_on_the_background_of_labels_is_refused(nuclei):
    _, labels = nuclei
    y, x = np.argwhere(labels == 0)[0]
    with pytest.raises(InputError, match=f"the point at \\(y, x\\) = \\({y}, {x}\\) is on the background of labels "
                                         "layer 'truth' \\(label 0\\): click inside a cell"):
        cell_of_labels(labels, (y, x), "truth")


def test_painted_cell_is_the_selected_label_and_an_absent_label_is_refused():
    labels = np.zeros((20, 20), np.int32)
    labels[3:8, 4:9] = 2
    np.testing.assert_array_equal(painted_cell(labels, 2, "paint"), labels == 2)
    for label in (0, 1):
        with pytest.raises(InputError, match=f"labels layer 'paint' has no pixel of label {label}, its selected label"):
            painted_cell(labels, label, "paint")


def clicked_fraction_inside(image: np.ndarray, labels: np.ndarray) -> float:
    """Over clicks at every true cell's centre: the fraction whose quick cell lies at least 80% inside it."""
    cells = quick_cells(image)
    good = 0
    for region in regionprops(labels):
        y, x = (int(round(v)) for v in centre_of(labels, region.label))
        if cells[y, x]:
            quick = cells == cells[y, x]
            good += (quick & (labels == region.label)).sum() >= 0.8 * quick.sum()
    return good / labels.max()


@pytest.mark.parametrize("cell_types, expected", [(("round",), 0.85), (("granular",), 0.95), (("ring",), 0.8),
                                                   (("blob",), 0.8)])
def test_quick_cells_find_the_clicked_synthetic_cell(cell_types, expected):
    sample = synthetic_image((256, 256), cell_types, seed=3)
    assert clicked_fraction_inside(sample.image, sample.labels) >= expected


def test_quick_cells_find_most_clicked_real_nuclei():
    root = data_dir("stardist_sample")
    image, labels = tifffile.imread(root / "img2d.tif"), tifffile.imread(root / "mask2d.tif").astype(np.int32)
    assert clicked_fraction_inside(image, renumber(labels)) >= 0.6  # measured 0.63 (docs/napari.md)


def test_quick_cells_do_not_depend_on_the_polarity():
    """Cells are the smaller side of the threshold, so an inverted image (dark cells on a pale background)
    gives the same cells, up to pixels at the threshold."""
    sample = synthetic_image((128, 128), ("round",), seed=2)
    cells, inverted = quick_cells(sample.image) > 0, quick_cells(255 - sample.image) > 0
    assert (cells != inverted).mean() < 0.01
    assert not quick_cells(np.full((30, 30), 7, np.uint8)).any()


def test_quick_cell_refuses_a_click_on_the_background():
    sample = synthetic_image((128, 128), ("round",), seed=2)
    y, x = np.argwhere(quick_cells(sample.image) == 0)[0]
    with pytest.raises(InputError, match=f"no cell under the point at \\(y, x\\) = \\({y}, {x}\\) in image 'cells'"):
        quick_cell(sample.image, (y, x), "cells")


# --- requests ---

@pytest.mark.parametrize("value", [None, "", "."])
def test_no_checkpoint_chosen_is_the_model_shipped_with_percs(value):
    from percs.predict.shipped import default_model

    request = RunRequest(value, np.zeros((20, 20)), "img", point=(1.0, 1.0))
    assert request.checkpoint == default_model() and request.checkpoint.is_file()


@pytest.mark.parametrize("value, message", [
    ("folder", "checkpoint .*folder is a folder: choose the .pt file in it"),
    ("missing.pt", "checkpoint .*missing.pt does not exist"),
])
def test_request_without_a_checkpoint_file_is_refused(tmp_path, value, message):
    (tmp_path / "folder").mkdir()
    value = tmp_path / value
    with pytest.raises(InputError, match=message):
        RunRequest(value, np.zeros((20, 20)), "img", point=(1.0, 1.0))


def test_request_needs_a_reference_and_labels_of_the_reference_image(checkpoint):
    image = np.zeros((20, 30))
    with pytest.raises(InputError, match="no reference cell: click it with a points layer, or paint or pick it"):
        RunRequest(checkpoint, image, "img")
    with pytest.raises(InputError, match="labels layer 'cells' is 20 x 20 pixels, but the reference image 'img' "
                                         "is 20 x 30: draw the labels on the reference image"):
        RunRequest(checkpoint, image, "img", labels=np.zeros((20, 20), np.int32), labels_name="cells")
    with pytest.raises(InputError, match="labels layer 'cells' has dtype float64, expected integers"):
        RunRequest(checkpoint, image, "img", labels=np.zeros((20, 30)), labels_name="cells")
    request = RunRequest(str(checkpoint), image, "img", point=(2.0, 3.0))
    assert request.reference_image is image and request.reference_name == "img"
    assert request.checkpoint == checkpoint


def test_reference_mask_follows_what_the_user_gave(checkpoint, nuclei):
    image, labels = nuclei
    cell = np.unique(labels)[4]
    point = centre_of(labels, cell)
    by_click = RunRequest(checkpoint, image, "img", point=point, labels=labels, labels_name="truth")
    np.testing.assert_array_equal(reference_mask(by_click), labels == cell)
    alone = RunRequest(checkpoint, image, "img", point=point)
    np.testing.assert_array_equal(reference_mask(alone), quick_cell(image, point, "img"))
    painted = RunRequest(checkpoint, image, "img", labels=labels, labels_name="truth", selected_label=int(cell))
    np.testing.assert_array_equal(reference_mask(painted), labels == cell)


# --- runs ---

def test_a_run_equals_the_api_result_on_a_real_image(checkpoint, nuclei):
    image, labels = nuclei
    cell = np.unique(labels)[3]
    request = RunRequest(checkpoint, image, "nuclei", point=centre_of(labels, cell), labels=labels,
                         labels_name="truth")
    progress, result = drive(run_steps(request, SegmenterCache()))
    assert progress == [Progress(k, len(STEPS), message) for k, message in enumerate(STEPS)]
    assert isinstance(result, RunResult)
    expected = api_result(checkpoint, image, image, labels == cell)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.probability, expected.probability)
    np.testing.assert_array_equal(result.reference_mask, labels == cell)
    assert result.summary.startswith(f"{expected.labels.max()} cells of the reference's type in 'nuclei'; model "
                                     "trained on unknown data")


def test_a_run_with_cells_gives_their_table(monkeypatch, tmp_path, nuclei):
    image, labels = nuclei
    checkpoint = threshold_checkpoint(monkeypatch, tmp_path)
    cell = np.unique(labels)[3]
    _, result = drive(run_steps(RunRequest(checkpoint, image, "nuclei", labels=labels, labels_name="truth",
                                           selected_label=int(cell)), SegmenterCache()))
    expected = api_result(checkpoint, image, image, labels == cell)
    assert expected.labels.max() >= 5
    np.testing.assert_array_equal(result.labels, expected.labels)
    table = result.table
    np.testing.assert_array_equal(table["id"], np.arange(1, expected.labels.max() + 1))
    np.testing.assert_array_equal(table["area"], np.bincount(expected.labels.ravel())[1:])
    np.testing.assert_allclose(table["score"], expected.cell_probability)
    for cell_id, y, x in zip(table["id"], table["centroid_y"], table["centroid_x"]):
        np.testing.assert_allclose((y, x), np.argwhere(expected.labels == cell_id).mean(0))
    assert display_table(table) == {"id": table["id"].tolist(), "area": table["area"].tolist(),
                                    "score": np.round(table["score"].astype(float), 3).tolist()}
    assert display_table(None) == {"id": [], "area": [], "score": []}
    assert result.warnings == ()


def test_the_model_loads_once_and_a_second_reference_does_not_rerun_the_backbone_on_the_image(checkpoint, nuclei):
    image, labels = nuclei
    cache = SegmenterCache()
    first, second = np.unique(labels)[2:4]
    drive(run_steps(RunRequest(checkpoint, image, "n", labels=labels, selected_label=int(first)), cache))
    segmenter = cache.get(checkpoint)
    calls = []
    segmenter.model.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    _, result = drive(run_steps(RunRequest(checkpoint, image, "n", labels=labels, selected_label=int(second)), cache))
    assert cache.get(checkpoint) is segmenter
    window = segmenter.predictor.config.reference_window
    assert calls == [torch.Size([1, 3, window, window])]  # the reference's window only
    np.testing.assert_array_equal(result.probability,
                                  api_result(checkpoint, image, image, labels == second).probability)


def test_a_rewritten_checkpoint_is_loaded_again(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "a.pt")
    cache = SegmenterCache()
    first = cache.get(path)
    assert cache.get(path) is first
    write_tiny_checkpoint(path, generic=False, trained_on=TrainingData("percs-demo", ("ring",), True).to_record())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = cache.get(path)
    assert second is not first and second.trained_on.synthetic


def test_warnings_for_synthetic_training_data_and_few_cells(tmp_path, nuclei):
    image, labels = nuclei
    record = TrainingData("percs-demo", ("blob", "ring"), True, "train").to_record()
    checkpoint = write_tiny_checkpoint(tmp_path / "demo.pt", trained_on=record)
    request = RunRequest(checkpoint, image, "nuclei", labels=labels, selected_label=int(labels.max()))
    _, result = drive(run_steps(request, SegmenterCache()))
    assert result.labels.max() == 0
    assert result.warnings[0].startswith("the model was trained on synthetic cells")
    assert result.warnings[1].startswith("image 'nuclei': no cell found (fewer than 3)")
    assert "model trained on percs-demo (synthetic cells, 2 types: blob, ring)" in result.summary


def test_a_click_on_the_background_or_an_absent_label_is_refused_before_the_run(checkpoint, nuclei):
    image, labels = nuclei
    with pytest.raises(InputError, match="is on the background of labels layer 'truth'"):
        RunRequest(checkpoint, image, "n", point=np.argwhere(labels == 0)[0], labels=labels, labels_name="truth")
    with pytest.raises(InputError, match="labels layer 'truth' has no pixel of label 1, its selected label"):
        RunRequest(checkpoint, image, "n", labels=labels, labels_name="truth", selected_label=1)


def test_errors_of_a_run_name_the_problem(tmp_path, nuclei, caplog):
    image, labels = nuclei
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    request = RunRequest(corrupt, image, "nuclei", labels=labels, selected_label=int(labels.max()))
    steps = run_steps(request, SegmenterCache())
    next(steps)
    with pytest.raises(CheckpointError) as error:
        next(steps)
    message = f"percs: checkpoint {corrupt} is not a percs checkpoint (no checksum header)"
    assert error_message(error.value) == message
    progress, failure = drive(run_steps_or_failure(request, SegmenterCache()))
    assert len(progress) == 1 and failure == RunFailure(message) and not caplog.records


def test_an_unexpected_error_ends_the_run_with_a_message_and_a_logged_traceback(monkeypatch, checkpoint, nuclei,
                                                                                caplog):
    image, labels = nuclei

    def broken(self, checkpoint, device="auto"):
        raise KeyError("weights")

    monkeypatch.setattr(SegmenterCache, "get", broken)
    request = RunRequest(checkpoint, image, "nuclei", labels=labels, selected_label=int(labels.max()))
    _, failure = drive(run_steps_or_failure(request, SegmenterCache()))
    assert failure == RunFailure("percs: unexpected KeyError: 'weights'")
    assert caplog.records[-1].name == "percs.napari" and caplog.records[-1].exc_info[0] is KeyError
    assert error_message(InputError("x is wrong")) == "percs: x is wrong"
    assert error_message(FileNotFoundError(2, "No such file or directory", "/a/b")) == \
        "percs: No such file or directory: /a/b"
    assert error_message(KeyError("k")) == "percs: unexpected KeyError: 'k'"


# --- the manifest and the sample ---

def test_sample_data_is_two_cell_types_with_their_true_cells():
    (image, image_kwargs, image_kind), (labels, labels_kwargs, labels_kind) = synthetic_cells()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == SAMPLE_SHAPE + (3,) and image.dtype == np.uint8
    assert labels.shape == SAMPLE_SHAPE and labels.dtype == np.int32 and labels.max() > 20
    assert image_kwargs["name"] == "synthetic cells" and labels_kwargs["visible"] is False


def test_the_manifest_names_existing_commands():
    yaml = pytest.importorskip("yaml")
    import percs.napari

    manifest = yaml.safe_load((Path(percs.napari.__file__).parent / "napari.yaml").read_text())
    assert manifest["name"] == "percs"
    commands = {command["id"]: command["python_name"] for command in manifest["contributions"]["commands"]}
    for contribution in manifest["contributions"]["widgets"] + manifest["contributions"]["sample_data"]:
        assert contribution["command"] in commands
    for python_name in commands.values():
        module, name = python_name.split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert f"class {name}(" in source or f"def {name}(" in source


def test_refine_decides_again_from_clicks_without_a_model_pass(monkeypatch, tmp_path, nuclei):
    from percs.napari.run import refine_run

    image, labels = nuclei
    cell = int(np.unique(labels)[3])
    checkpoint = instance_checkpoint(monkeypatch, tmp_path)
    cache = SegmenterCache()
    request = RunRequest(checkpoint, image, "nuclei", point=centre_of(labels, cell), labels=labels,
                         labels_name="true nuclei")
    _, result = drive(run_steps(request, cache))
    found = result.segmentation.candidates.labels.numpy()
    assert result.labels.max() == len(result.segmentation.candidates.cells) > 3   # threshold 0: every cell found
    target = int(result.segmentation.candidates.cells[2])
    click = centre_of(found, target)
    segmenter = cache.current
    monkeypatch.setattr(segmenter.predictor, "predict", lambda *a, **k: pytest.fail("refine ran the model"))
    refined = refine_run(segmenter, result, remove=[click], image_name="nuclei")
    assert not refined.labels[found == target].any() and refined.labels.max() < result.labels.max()
    assert "(refined: 0 more like it, 1 not)" in refined.summary and refined.table["id"].size == refined.labels.max()
    again = refine_run(segmenter, refined, add=[click], image_name="nuclei")     # a tie keeps the cell
    assert again.labels[found == target].all()
    with pytest.raises(InputError, match="press Run first"):
        refine_run(segmenter, None, add=[click])
    with pytest.raises(InputError, match="no click to refine with"):
        refine_run(segmenter, result)
    background = tuple(float(v) for v in np.argwhere(found == 0)[0])
    with pytest.raises(InputError, match="a - click: point .* is on background"):
        refine_run(segmenter, result, remove=[background])
    with pytest.raises(InputError, match="outside image 'nuclei'"):
        refine_run(segmenter, result, add=[(1e4, 0.0)], image_name="nuclei")
