"""The dock widget: choose a checkpoint and an image, show the reference cell, press Run, see every cell of
its type.

The reference cell is given by a points layer (the last point: the cell under it in the chosen labels layer,
else in a quick class-agnostic segmentation), or by a labels layer alone (the pixels of its selected label:
painted, or picked with the colour picker). Run checks the choices at once (an error notification names
what is wrong), then a napari thread worker loads the model (once per checkpoint), embeds the reference and
segments the image while the viewer stays responsive; the progress bar follows its steps. Results: labels
layer 'percs cells' (with a features table, also shown in the widget), image layer 'percs same-type
probability' (hidden at first) and labels layer 'percs reference cell' (its outline); a rerun replaces them.
With a model that decides cell by cell (the shipped model, the default when no checkpoint is chosen), "+" and
"-" add points layers for cells of the type it missed and cells it wrongly took, and Refine decides again from
the found cells kept with the result, at once (`Segmenter.refine`: no model pass).
"""

from __future__ import annotations

from typing import Optional

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Table, create_widget
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning

from percs.napari.reference import InputError, layer_image
from percs.napari.run import (STEPS, RunFailure, RunRequest, RunResult, SegmenterCache, display_table, error_message,
                              last_point, refine_run, run_steps_or_failure)

CELLS_LAYER = "percs cells"
PROBABILITY_LAYER = "percs same-type probability"
REFERENCE_LAYER = "percs reference cell"
POINTS_LAYER = "percs reference point"
MORE_LAYER = "percs more of the type"     # clicks on cells of the type the result missed
FEWER_LAYER = "percs not the type"        # clicks on cells the result wrongly took
REFERENCE_COLOUR = "magenta"  # as in percs predict's overlays
LAYER_TYPES = {"image": napari.layers.Image, "labels": napari.layers.Labels}
WIDGET_WIDTH = 420  # pixels: the dock leaves the canvas most of the window


def layer_array(layer) -> np.ndarray:
    """A layer's full-resolution data as a NumPy array (the first level of a multiscale layer)."""
    return np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)


def devices() -> list[str]:
    """The device choices: auto (CUDA when available), cpu, and cuda when there is one."""
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class SegmentWidget(Container):
    """percs' dock widget in `napari_viewer` (napari passes it when it opens the widget from the manifest)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._cache = SegmenterCache()
        self._worker = None
        self._layers = None  # (image layer, reference image layer) of the run in progress
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt",
                                   tooltip="the .pt file that percs train (or percs demo) wrote: best.pt; empty: "
                                           "the model shipped with percs")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.reference_image = create_widget(
            annotation=Optional[napari.layers.Image], label="reference image",
            options={"tooltip": "the image the reference cell is in (none: the image)"})
        self.points = create_widget(annotation=Optional[napari.layers.Points], label="reference point",
                                    options={"tooltip": "a click on the reference cell (the last point counts)"})
        self.labels = create_widget(annotation=Optional[napari.layers.Labels], label="reference labels",
                                    options={"tooltip": "cells to pick the clicked one from, or a painted cell "
                                                        "(its selected label) when no point is chosen"})
        self.click_button = PushButton(text="Click a cell", tooltip=f"adds points layer '{POINTS_LAYER}' to click in")
        self.device = ComboBox(label="device", choices=devices(), value="auto")
        self.run_button = PushButton(text="Run")
        self.more_button = PushButton(text="+ more like it", tooltip=f"points layer '{MORE_LAYER}': click cells of "
                                                                     "the type that the result missed")
        self.fewer_button = PushButton(text="- not this type", tooltip=f"points layer '{FEWER_LAYER}': click cells "
                                                                       "that the result wrongly took")
        self.refine_button = PushButton(text="Refine", tooltip="decide again with the + and - clicks (a model that "
                                                               "decides cell by cell; no model pass)")
        self._last: RunResult | None = None
        self.progress = ProgressBar(min=0, max=len(STEPS), value=0, label="progress")
        self.status = Label(value="")
        self.table = Table(value=display_table(None), label="cells")
        self.table.read_only = True
        self.status.native.setWordWrap(True)  # long messages wrap instead of widening the dock
        self.max_width = WIDGET_WIDTH
        refine_row = Container(layout="horizontal", labels=False,
                               widgets=[self.more_button, self.fewer_button, self.refine_button])
        self.extend([self.checkpoint, self.image, self.reference_image, self.points, self.labels, self.click_button,
                     self.device, self.run_button, refine_row, self.progress, self.status, self.table])
        self.click_button.changed.connect(self.click_cell)
        self.run_button.changed.connect(self.run)
        self.more_button.changed.connect(lambda: self.refine_points(MORE_LAYER, "lime"))
        self.fewer_button.changed.connect(lambda: self.refine_points(FEWER_LAYER, "red"))
        self.refine_button.changed.connect(self.refine)

    @property
    def running(self) -> bool:
        """Whether a run is in progress (Run is then disabled)."""
        return self._worker is not None

    def click_cell(self) -> napari.layers.Points:
        """Adds (or empties) points layer POINTS_LAYER, selects it in add mode and as the reference point: the
        next click in the viewer marks the reference cell."""
        if POINTS_LAYER in self._viewer.layers:
            layer = self._viewer.layers[POINTS_LAYER]
            layer.data = np.empty((0, layer.ndim))
        else:
            layer = self._viewer.add_points(name=POINTS_LAYER, ndim=2, size=7, face_color=REFERENCE_COLOUR)
        self._viewer.layers.selection.active = layer
        layer.mode = "add"
        self.reset_choices()
        self.points.value = layer
        self.status.value = "click the reference cell in the viewer, then Run"
        return layer

    def refine_points(self, name: str, colour: str) -> napari.layers.Points:
        """Points layer `name` (added when missing), selected in add mode: clicks for Refine."""
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
        else:
            layer = self._viewer.add_points(name=name, ndim=2, size=7, face_color=colour)
        self._viewer.layers.selection.active = layer
        layer.mode = "add"
        self.status.value = "click cells in the viewer, then Refine"
        return layer

    def refine(self) -> RunResult | None:
        """The last result decided again with the points of MORE_LAYER and FEWER_LAYER (each on a found cell of
        the image), shown as a run's; an error notification when it cannot be."""
        if self.running:
            show_info("percs: a run is in progress; wait for it to finish")
            return None
        try:
            image_layer = self._layers[0] if self._layers and self._last is not None else None
            clicks = [self._image_points(name, image_layer) for name in (MORE_LAYER, FEWER_LAYER)]
            result = refine_run(self._cache.current, self._last, *clicks, image_layer.name if image_layer else "")
        except InputError as error:
            self._fail(error_message(error))
            return None
        self._on_result(result)
        return result

    def _image_points(self, name: str, image_layer) -> list:
        """The points of layer `name` in the image layer's pixel coordinates (none without the layer)."""
        if name not in self._viewer.layers or image_layer is None:
            return []
        layer = self._viewer.layers[name]
        return [tuple(np.asarray(image_layer.world_to_data(layer.data_to_world(row)))[-2:]) for row in layer.data]

    def request(self) -> RunRequest:
        """The run the widget's choices describe; InputError naming what is missing or wrong."""
        image_layer = self.image.value
        if image_layer is None:
            raise InputError("no image layer: open an image (File > Open, or File > Open Sample > percs > "
                             "Synthetic cells) and choose it")
        reference_layer = self.reference_image.value or image_layer
        image = layer_image(layer_array(image_layer), image_layer.name, image_layer.rgb)
        reference_image = image if reference_layer is image_layer else \
            layer_image(layer_array(reference_layer), reference_layer.name, reference_layer.rgb)
        point = None
        if self.points.value is not None:
            row = last_point(self.points.value.data, self.points.value.name)
            world = self.points.value.data_to_world(row)
            point = tuple(float(v) for v in np.asarray(reference_layer.world_to_data(world))[-2:])
        labels = self.labels.value
        request = RunRequest(self.checkpoint.value, image, image_layer.name, reference_image, reference_layer.name,
                             point, None if labels is None else layer_array(labels),
                             "" if labels is None else labels.name,
                             0 if labels is None else int(labels.selected_label), self.device.value)
        self._layers = (image_layer, reference_layer)
        return request

    def run(self) -> None:
        """Checks the choices (an error notification when they are wrong) and starts the worker."""
        if self.running:
            show_info("percs: a run is in progress; wait for it to finish")
            return
        try:
            request = self.request()
        except InputError as error:
            self._fail(error_message(error))
            return
        self.run_button.enabled = False
        self.progress.value = 0
        self.status.value = STEPS[0]
        self._worker = create_worker(
            run_steps_or_failure, request, self._cache,
            _progress={"total": len(STEPS), "desc": "percs"},
            _connect={"yielded": self._on_progress, "returned": self._on_result, "errored": self._on_error,
                      "finished": self._on_finished},
        )

    def _on_progress(self, progress) -> None:
        self.progress.value = progress.step
        self.status.value = f"{progress.message} ({progress.step + 1}/{progress.total})"

    def _on_result(self, result: RunResult | RunFailure) -> None:
        if isinstance(result, RunFailure):
            self._fail(result.message)
            return
        image_layer, reference_layer = self._layers
        self._last = result
        self.progress.value = len(STEPS)
        self._put_layer(PROBABILITY_LAYER, result.probability, "image", image_layer,
                        colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", visible=False)
        cells = self._put_layer(CELLS_LAYER, result.labels, "labels", image_layer, opacity=0.6)
        cells.features = {"index": result.table["id"], **{k: v for k, v in result.table.items() if k != "id"}}
        colours = DirectLabelColormap(color_dict={None: "transparent", 1: REFERENCE_COLOUR})
        reference = self._put_layer(REFERENCE_LAYER, result.reference_mask.astype(np.int32), "labels",
                                    reference_layer, colormap=colours)
        reference.contour = 2
        self.table.value = display_table(result.table)
        self.table.native.resizeColumnsToContents()
        self.status.value = result.summary
        show_info(f"percs: {result.summary}")
        for warning in result.warnings:
            show_warning(f"percs: {warning}")

    def _on_error(self, error: BaseException) -> None:
        self._fail(error_message(error))

    def _on_finished(self) -> None:
        self._worker = None
        self.run_button.enabled = True

    def _fail(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    def _put_layer(self, name: str, data: np.ndarray, kind: str, like, **kwargs):
        """Layer `name` of `kind` ('image' / 'labels') showing data over layer `like` (its scale and offset),
        replacing the data of an existing layer of that name and kind (its display settings are the user's)."""
        placement = {"scale": like.scale[-2:], "translate": like.translate[-2:]}
        existing = self._viewer.layers[name] if name in self._viewer.layers else None
        if isinstance(existing, LAYER_TYPES[kind]):
            existing.data = data
            existing.scale, existing.translate = placement["scale"], placement["translate"]
            return existing
        if existing is not None:
            self._viewer.layers.remove(existing)
        return getattr(self._viewer, f"add_{kind}")(data, name=name, **placement, **kwargs)

