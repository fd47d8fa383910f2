"""One run of the napari widget, without Qt or napari: the user's choices checked (`RunRequest`), the steps with
their progress (`run_steps`, a generator that napari's thread worker drives), the result as layer data.

    request = RunRequest(checkpoint, image, "cells", point=(40.0, 61.0))    # InputError names what is wrong
    steps = run_steps(request, SegmenterCache())
    for progress in steps: ...                                              # Progress(step, total, message)
    # the generator's return value (StopIteration.value, or the worker's `returned`) is a RunResult

The same `SegmenterCache` across runs loads a checkpoint once; its predictor keeps the backbone features of
the last image, so another reference on the same image runs only the reference's window through the backbone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from percs.api import Segmenter
from percs.napari.reference import InputError, cell_of_labels, painted_cell, pixel_of, quick_cell
from percs.train.checkpoint import CheckpointError

EXPECTED_ERRORS = (ValueError, CheckpointError, OSError)  # percs raises these on purpose, naming the problem
STEPS = ("loading the model", "finding the reference cell", "embedding the reference cell", "segmenting the image")


@dataclass(frozen=True)
class Progress:
    """Step `step` (0-based) of `total` is starting; message says which."""

    step: int
    total: int
    message: str


@dataclass(frozen=True)
class RunRequest:
    """The checked choices of one run (InputError on construction names what is wrong).

    checkpoint: a `percs train` checkpoint or `percs export-model` file (None: the model shipped with percs).
    image: (H, W) or (H, W, 3) array (`layer_image`), named
    image_name. reference_image: the image the reference cell is in (None: `image`), named reference_name.
    The reference cell: `point` (y, x) in reference-image pixels and / or `labels` (H, W) integer label image
    of the reference image (layer labels_name):
      point and labels: the cell of labels under the point;
      point alone:      the cell under the point in a quick class-agnostic segmentation (`quick_cell`);
      labels alone:     the pixels of `selected_label` (the label painted with, or picked).
    device: "auto", "cpu" or "cuda[:N]".
    """

    checkpoint: Path | None
    image: np.ndarray
    image_name: str
    reference_image: np.ndarray | None = None
    reference_name: str = ""
    point: tuple[float, float] | None = None
    labels: np.ndarray | None = None
    labels_name: str = ""
    selected_label: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", checked_checkpoint(self.checkpoint))
        if self.reference_image is None:
            object.__setattr__(self, "reference_image", self.image)
            object.__setattr__(self, "reference_name", self.image_name)
        if self.point is None and self.labels is None:
            raise InputError("no reference cell: click it with a points layer, or paint or pick it in a labels "
                             "layer, and choose that layer")
        if self.labels is not None:
            shape = self.reference_image.shape[:2]
            if self.labels.shape != shape:
                raise InputError(f"labels layer '{self.labels_name}' is {self.labels.shape[0]} x "
                                 f"{self.labels.shape[1]} pixels, but the reference image '{self.reference_name}' "
                                 f"is {shape[0]} x {shape[1]}: draw the labels on the reference image")
            if self.labels.dtype.kind not in "biu":
                raise InputError(f"labels layer '{self.labels_name}' has dtype {self.labels.dtype}, expected integers")
            reference_mask(self)  # a click on the background or an absent label is refused now, not in the run


def checked_checkpoint(checkpoint: str | Path | None) -> Path:
    """The checkpoint as a Path to an existing file, the model shipped with percs for an empty choice (which
    file choosers give as '' or '.'); InputError saying what to choose otherwise (a folder, a missing file)."""
    if checkpoint is None or str(checkpoint) in ("", "."):
        from percs.predict.shipped import default_model

        return default_model()
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder: choose the .pt file in it (best.pt or last.pt)")
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    return path


def last_point(points: np.ndarray, name: str) -> np.ndarray:
    """(D,) float: the last point added to a points layer's data (N, D), the reference click. InputError when
    the layer has no point."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or len(points) == 0 or points.shape[1] < 2:
        raise InputError(f"points layer '{name}' has no point: add one on the reference cell")
    return points[-1]


class SegmenterCache:
    """The last Segmenter loaded, reused while its checkpoint file (path, size, modification time) and device
    are unchanged."""

    def __init__(self):
        self._key: tuple | None = None
        self._segmenter: Segmenter | None = None

    @property
    def current(self) -> Segmenter | None:
        """The Segmenter of the last `get` (None before any)."""
        return self._segmenter

    def get(self, checkpoint: Path, device: str = "auto") -> Segmenter:
        stat = checkpoint.stat()
        key = (str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
        if key != self._key:
            self._segmenter, self._key = None, None  # the old model is freed before the new one loads
            self._segmenter, self._key = Segmenter.from_checkpoint(checkpoint, device), key
        return self._segmenter


@dataclass(frozen=True)
class RunResult:
    """What a run shows. labels: (H, W) int32 cells of the reference's type, 1..N. probability: (H, W) float32
    same-type probability. reference_mask: the reference image's (H, W) bool reference cell. table: columns
    id, area, centroid_y, centroid_x, score (`percs.predict.files.cell_table`). summary: one line for the user.
    warnings: lines to show as warnings (a model trained on synthetic cells, fewer than 3 cells found).
    segmentation: the `SegmentationResult`, which `refine_run` refines (models that decide cell by cell)."""

    labels: np.ndarray
    probability: np.ndarray
    reference_mask: np.ndarray
    table: dict[str, np.ndarray]
    summary: str
    warnings: tuple[str, ...] = field(default=())
    segmentation: object = field(default=None, repr=False, compare=False)


def reference_mask(request: RunRequest) -> np.ndarray:
    """The (H, W) bool reference cell of a request (see RunRequest for the three ways); InputError when the
    click is on the background or outside, or the selected label is absent."""
    if request.point is not None and request.labels is not None:
        return cell_of_labels(request.labels, request.point, request.labels_name)
    if request.point is not None:
        return quick_cell(request.reference_image, request.point, request.reference_name)
    return painted_cell(request.labels, request.selected_label, request.labels_name)


def run_steps(request: RunRequest, cache: SegmenterCache) -> Iterator[Progress]:
    """Runs `request`, yielding a Progress as each of the STEPS starts; returns a RunResult. Errors: InputError
    for the reference, ValueError / percs.train.CheckpointError from the checkpoint and the model."""
    yield Progress(0, len(STEPS), STEPS[0])
    segmenter = cache.get(request.checkpoint, request.device)
    yield Progress(1, len(STEPS), STEPS[1])
    mask = reference_mask(request)
    yield Progress(2, len(STEPS), STEPS[2])
    reference = segmenter.reference(request.reference_image, mask)
    yield Progress(3, len(STEPS), STEPS[3])
    return run_result(segmenter, segmenter.segment(request.image, reference), mask, request.image_name)


def run_result(segmenter: Segmenter, result, mask: np.ndarray, image_name: str, refined: str = "") -> RunResult:
    """The RunResult of a SegmentationResult: its layers' data, cell table, summary line and warnings."""
    from percs.predict.files import FEW_CELLS, cell_table, few_cells_message

    n_cells = int(result.labels.max(initial=0))
    warnings = []
    if segmenter.trained_on.synthetic:
        warnings.append("the model was trained on synthetic cells (as the demo's): it is unlikely to work on "
                        "real images")
    if n_cells < FEW_CELLS:
        warnings.append(few_cells_message(f"image '{image_name}'", n_cells))
    cells = "cell" + "s" * (n_cells != 1)
    kind = cells if segmenter.generic else f"{cells} of the reference's type"
    summary = f"{n_cells} {kind} in '{image_name}'{refined}; {segmenter.trained_on.summary()}"
    return RunResult(result.labels, result.probability, mask, cell_table(result.labels, result.cell_probability),
                     summary, tuple(warnings), result)


def refine_run(segmenter: Segmenter, previous: RunResult, add=(), remove=(), image_name: str = "image") -> RunResult:
    """`previous` decided again with more cells of the type (`add`) and cells not of it (`remove`), each an
    (y, x) point on a found cell of the image (`Segmenter.refine`: no model or backbone pass). InputError when
    the model does not decide cell by cell, there is no click, or a click is on no found cell."""
    if previous is None or getattr(previous.segmentation, "candidates", None) is None:
        raise InputError("refining needs a run with a model that decides cell by cell (the model shipped with "
                         "percs, or a `percs train-scorer --model-out` file): press Run first")
    if not len(add) and not len(remove):
        raise InputError("no click to refine with: add points on cells of the type it missed (+) or on cells it "
                         "wrongly took (-)")
    shape = previous.labels.shape
    pixels = [[pixel_of(point, shape, f"image '{image_name}'") for point in group] for group in (add, remove)]
    try:
        refined = segmenter.refine(previous.segmentation, add=pixels[0], remove=pixels[1])
    except ValueError as error:
        raise InputError(str(error).replace("add: ", "a + click: ").replace("remove: ", "a - click: ")) from None
    label = f" (refined: {len(pixels[0])} more like it, {len(pixels[1])} not)"
    return run_result(segmenter, refined, previous.reference_mask, image_name, label)


TABLE_COLUMNS = ("id", "area", "score")  # what fits the dock; the cells layer's features have the centroids too


def display_table(table: dict[str, np.ndarray] | None) -> dict[str, list]:
    """A cell table (`RunResult.table`; None: no cell yet) as the widget's table shows it: columns id, area
    (pixels) and score of Python numbers, scores to 0.001."""
    if table is None:
        return {key: [] for key in TABLE_COLUMNS}
    return {"id": table["id"].tolist(), "area": table["area"].tolist(),
            "score": np.round(table["score"].astype(float), 3).tolist()}


@dataclass(frozen=True)
class RunFailure:
    """A run that stopped on an error; message: `error_message` of it."""

    message: str


def run_steps_or_failure(request: RunRequest, cache: SegmenterCache) -> Iterator[Progress]:
    """`run_steps` that returns a RunFailure instead of raising, for napari's thread worker: superqt takes a
    RuntimeError out of a worker for a deleted worker and drops it without finishing, and CheckpointError is one.
    Errors that percs does not raise on purpose are also logged with their traceback (logger percs.napari)."""
    try:
        return (yield from run_steps(request, cache))
    except Exception as error:  # every error ends the run with a message, none reaches the event loop
        if not isinstance(error, EXPECTED_ERRORS):
            logging.getLogger("percs.napari").exception("percs run failed")
        return RunFailure(error_message(error))


def error_message(error: BaseException) -> str:
    """The line shown for an error of a run: the message of the errors percs raises on purpose (they name the
    problem), the exception's type and message for anything else; never a traceback."""
    if isinstance(error, OSError):
        return f"percs: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    if isinstance(error, EXPECTED_ERRORS):
        return f"percs: {error}"
    return f"percs: unexpected {type(error).__name__}: {error}"
