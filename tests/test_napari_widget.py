"""The napari widget end to end, in a real viewer on a virtual display (pytest-qt and napari's
make_napari_viewer): it opens from the manifest with the sample, a run on a real image gives the API's result
as layers, a click alone uses the quick segmentation, a rerun replaces the layers without a second backbone
pass over the image, the rendered result layer has the cells' colours, and every bad input is a notification.

Needs `pip install ".[napari]" pytest-qt` and a display (`xvfb-run -a pytest tests/test_napari_widget.py`:
napari's canvas needs OpenGL, which Qt's offscreen platform lacks). Skipped otherwise, unless
PERCS_NAPARI_TESTS=1 (set by .ci/run), which makes a missing piece a failure.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest


def _missing() -> str | None:
    for module, package in (("napari", '".[napari]"'), ("pytestqt", "pytest-qt")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {package})"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: run under xvfb-run (napari's canvas needs OpenGL, which Qt's offscreen platform lacks)"
    return None


if (_reason := _missing()) is not None:
    if os.environ.get("PERCS_NAPARI_TESTS") == "1":
        pytest.fail(f"PERCS_NAPARI_TESTS=1 but {_reason}", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from napari_helpers import (api_result, centre_of, instance_checkpoint, real_nuclei,  # noqa: E402
                            threshold_checkpoint)
from predict_helpers import write_tiny_checkpoint  # noqa: E402

from percs.napari.reference import quick_cell  # noqa: E402
from percs.napari.run import STEPS  # noqa: E402
from percs.napari.sample_data import synthetic_cells  # noqa: E402
from percs.napari.widget import (CELLS_LAYER, FEWER_LAYER, MORE_LAYER, POINTS_LAYER,  # noqa: E402
                                 PROBABILITY_LAYER, REFERENCE_LAYER, SegmentWidget)

pytestmark = pytest.mark.usefixtures("one_thread")
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def nuclei():
    return real_nuclei()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("napari-widget") / "tiny.pt", generic=False)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The messages the widget shows as error notifications (napari's show_error still runs)."""
    import percs.napari.widget

    shown = []
    show_error = percs.napari.widget.show_error
    monkeypatch.setattr(percs.napari.widget, "show_error", lambda message: (shown.append(message),
                                                                            show_error(message)))
    return shown


def open_widget(viewer) -> SegmentWidget:
    """The widget as a user opens it: Plugins > Segment cells of one type (percs), from the manifest."""
    _, widget = viewer.window.add_plugin_dock_widget("percs", "Segment cells of one type")
    assert isinstance(widget, SegmentWidget)
    return widget


def run_and_wait(widget: SegmentWidget, qtbot) -> None:
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def nuclei_viewer(make_napari_viewer, nuclei, cell: int, **viewer_options):
    """A viewer with the real image, its true nuclei and a point on nucleus `cell`; the widget opened."""
    image, labels = nuclei
    viewer = make_napari_viewer(**viewer_options)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="true nuclei")
    viewer.add_points([centre_of(labels, cell)], name="click")
    return viewer, open_widget(viewer)


def test_the_widget_and_the_sample_open_from_the_manifest(make_napari_viewer):
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("percs")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment cells of one type"]
    viewer = make_napari_viewer()
    viewer.open_sample("percs", "synthetic_cells")
    assert [layer.name for layer in viewer.layers] == ["synthetic cells", "synthetic cells: true cells"]
    assert viewer.layers["synthetic cells"].rgb
    np.testing.assert_array_equal(viewer.layers["synthetic cells: true cells"].data, synthetic_cells()[1][0])
    widget = open_widget(viewer)
    assert widget.image.value is viewer.layers["synthetic cells"]
    assert viewer.layers["synthetic cells: true cells"] in widget.labels.choices
    assert widget.points.value is None and widget.reference_image.value is None


def test_a_run_on_a_real_image_shows_the_api_result(make_napari_viewer, qtbot, checkpoint, nuclei):
    image, labels = nuclei
    cell = np.unique(labels)[3]
    viewer, widget = nuclei_viewer(make_napari_viewer, nuclei, cell)
    widget.checkpoint.value = checkpoint
    widget.points.value = viewer.layers["click"]
    widget.labels.value = viewer.layers["true nuclei"]
    run_and_wait(widget, qtbot)
    expected = api_result(checkpoint, image, image, labels == cell)
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, expected.labels)
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, expected.probability)
    np.testing.assert_array_equal(viewer.layers[REFERENCE_LAYER].data, (labels == cell).astype(np.int32))
    assert widget.progress.value == len(STEPS) and widget.run_button.enabled
    assert widget.status.value.startswith(f"{expected.labels.max()} cells of the reference's type in 'nuclei'")


def test_cells_come_with_their_features_and_table(make_napari_viewer, qtbot, monkeypatch, tmp_path, nuclei):
    image, labels = nuclei
    cell = np.unique(labels)[3]
    viewer, widget = nuclei_viewer(make_napari_viewer, nuclei, cell)
    widget.checkpoint.value = threshold_checkpoint(monkeypatch, tmp_path)
    widget.points.value, widget.labels.value = viewer.layers["click"], viewer.layers["true nuclei"]
    run_and_wait(widget, qtbot)
    expected = api_result(widget.checkpoint.value, image, image, labels == cell)
    cells = viewer.layers[CELLS_LAYER]
    np.testing.assert_array_equal(cells.data, expected.labels)
    n_cells = int(expected.labels.max())
    assert n_cells >= 5
    np.testing.assert_array_equal(cells.features["index"], np.arange(1, n_cells + 1))
    np.testing.assert_allclose(cells.features["score"], expected.cell_probability)
    assert list(cells.features.columns) == ["index", "area", "centroid_y", "centroid_x", "score"]
    table = widget.table.to_dict("list")
    assert table["id"] == list(range(1, n_cells + 1))
    assert table["area"] == np.bincount(expected.labels.ravel())[1:].tolist()


def test_a_click_alone_uses_the_quick_segmentation_and_a_rerun_replaces_the_layers(make_napari_viewer, qtbot,
                                                                                     checkpoint):
    viewer = make_napari_viewer()
    viewer.open_sample("percs", "synthetic_cells")
    widget = open_widget(viewer)
    widget.checkpoint.value = checkpoint
    image, truth = viewer.layers["synthetic cells"].data, viewer.layers["synthetic cells: true cells"].data
    for cell in (3, 11):
        points = widget.click_cell()
        assert points.name == POINTS_LAYER and points.mode == "add"
        assert widget.points.value is viewer.layers[POINTS_LAYER]  # `points` is napari's proxy of it
        points.add(centre_of(truth, cell))
        run_and_wait(widget, qtbot)
        mask = quick_cell(image, centre_of(truth, cell), "synthetic cells")
        np.testing.assert_array_equal(viewer.layers[REFERENCE_LAYER].data, mask.astype(np.int32))
        expected = api_result(checkpoint, image, image, mask)
        np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, expected.labels)
        np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, expected.probability)
    assert [layer.name for layer in viewer.layers].count(CELLS_LAYER) == 1
    assert len(viewer.layers) == 6  # image, true cells, the point, probability, cells, reference


def test_the_rendered_result_layer_has_the_cells_colours(make_napari_viewer, qtbot, monkeypatch, tmp_path, nuclei):
    image, labels = nuclei
    viewer, widget = nuclei_viewer(make_napari_viewer, nuclei, np.unique(labels)[3], show=True)
    widget.checkpoint.value = threshold_checkpoint(monkeypatch, tmp_path)
    widget.points.value, widget.labels.value = viewer.layers["click"], viewer.layers["true nuclei"]
    run_and_wait(widget, qtbot)
    cells = viewer.layers[CELLS_LAYER]
    for layer in viewer.layers:
        layer.visible = layer is cells
    cells.opacity = 1.0
    screenshot = viewer.export_figure(flash=False)  # the canvas, cropped to the layers at data resolution
    assert screenshot.shape[:2] == labels.shape
    found = cells.data
    colours = np.round(np.stack([cells.get_color(int(v)) if v else (0, 0, 0, 1) for v in found.ravel()])
                       .reshape(found.shape + (4,))[..., :3] * 255)
    wrong = np.abs(screenshot[..., :3].astype(int) - colours).max(-1) > 2
    assert found.max() >= 5 and (found > 0).sum() > 500
    assert wrong[found > 0].mean() < 0.02 and wrong[found == 0].mean() < 0.02
    viewer.screenshot(tmp_path / "viewer.png", flash=False)  # the whole window, as a user would save it
    assert (tmp_path / "viewer.png").stat().st_size > 0


def _no_layers(viewer, tmp_path):
    return None


def _background_click(viewer, tmp_path):
    image, labels = real_nuclei()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="true nuclei")
    viewer.add_points([np.argwhere(labels == 0)[0]], name="click")
    return "click", "true nuclei"


def _small_image(viewer, tmp_path):
    viewer.add_image(np.zeros((10, 12)), name="tiny")
    viewer.add_points([[5.0, 5.0]], name="click")
    return "click", None


def _stack(viewer, tmp_path):
    viewer.add_image(np.zeros((3, 40, 40)), name="stack")
    viewer.add_points([[1.0, 5.0, 5.0]], name="click")
    return "click", None


def _no_reference(viewer, tmp_path):
    viewer.add_image(np.zeros((40, 40)), name="plain")
    return None, None


@pytest.mark.parametrize("setup, message", [
    (_no_layers, "percs: no image layer: open an image"),
    (_background_click, "is on the background of labels layer 'true nuclei' (label 0): click inside a cell"),
    (_small_image, "percs: image layer 'tiny' is 10 x 12 pixels (height x width): percs needs at least 14 x 14"),
    (_stack, "percs: image layer 'stack' has 3 dims (3, 40, 40)"),
    (_no_reference, "percs: no reference cell: click it with a points layer"),
])
def test_bad_choices_are_error_notifications_before_any_work(make_napari_viewer, errors, checkpoint, tmp_path,
                                                             setup, message):
    viewer = make_napari_viewer()
    points, labels = setup(viewer, tmp_path) or (None, None)
    widget = open_widget(viewer)
    widget.checkpoint.value = checkpoint
    widget.points.value = None if points is None else viewer.layers[points]
    widget.labels.value = None if labels is None else viewer.layers[labels]
    widget.run()
    assert not widget.running and len(errors) == 1 and message in errors[0]
    assert widget.status.value == errors[0]


def test_a_corrupt_checkpoint_is_an_error_notification(make_napari_viewer, qtbot, errors, tmp_path, nuclei):
    viewer, widget = nuclei_viewer(make_napari_viewer, nuclei, np.unique(nuclei[1])[3])
    widget.points.value = viewer.layers["click"]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    widget.checkpoint.value = corrupt
    run_and_wait(widget, qtbot)  # the error comes from the worker thread
    assert errors[-1] == f"percs: checkpoint {corrupt} is not a percs checkpoint (no checksum header)"
    assert widget.run_button.enabled and CELLS_LAYER not in viewer.layers


def test_plus_and_minus_clicks_refine_the_result(make_napari_viewer, qtbot, monkeypatch, tmp_path, errors, nuclei):
    image, labels = nuclei
    viewer, widget = nuclei_viewer(make_napari_viewer, nuclei, int(np.unique(labels)[3]))
    widget.refine()
    assert errors[-1].startswith("percs: refining needs a run")
    widget.checkpoint.value = instance_checkpoint(monkeypatch, tmp_path)
    widget.points.value = viewer.layers["click"]
    widget.labels.value = viewer.layers["true nuclei"]
    run_and_wait(widget, qtbot)
    before = viewer.layers[CELLS_LAYER].data.copy()
    found = widget._last.segmentation.candidates.labels.numpy()
    target = int(widget._last.segmentation.candidates.cells[2])
    widget.refine()
    assert errors[-1].startswith("percs: no click to refine with")
    widget.fewer_button.changed.emit(True)
    assert viewer.layers.selection.active is viewer.layers[FEWER_LAYER] and MORE_LAYER not in viewer.layers
    viewer.layers[FEWER_LAYER].add([centre_of(found, target)])
    assert widget.refine() is not None
    after = viewer.layers[CELLS_LAYER].data
    assert not after[found == target].any() and after.max() < before.max()
    assert "refined: 0 more like it, 1 not" in widget.status.value
