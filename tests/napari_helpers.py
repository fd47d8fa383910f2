"""Inputs of the napari plugin's tests: a crop of a real fluorescence image with its true nuclei, and the run the
widget must reproduce, computed with the public API alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from conftest import data_dir
from percs.api import Segmenter

CROP = (slice(0, 150), slice(20, 190))  # 150 x 170 pixels of stardist_sample/img2d.tif, 20-odd nuclei


def real_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(image (150, 170) uint16, labels (150, 170) int32): a crop of the shared stardist sample and its nuclei."""
    root = data_dir("stardist_sample")
    image = tifffile.imread(root / "img2d.tif")[CROP]
    labels = tifffile.imread(root / "mask2d.tif")[CROP].astype(np.int32)
    return image, labels


def centre_of(labels: np.ndarray, label: int) -> tuple[float, float]:
    """(y, x) of a pixel of `label` nearest its centroid (inside the cell even when it is not convex)."""
    pixels = np.argwhere(labels == label)
    centre = pixels.mean(0)
    y, x = pixels[np.argmin(np.linalg.norm(pixels - centre, axis=1))]
    return float(y), float(x)


def api_result(checkpoint, image, reference_image, mask):
    """What the widget must show: `Segmenter.from_checkpoint(...).segment(image, reference(reference_image, mask))`."""
    segmenter = Segmenter.from_checkpoint(checkpoint)
    return segmenter.segment(image, segmenter.reference(reference_image, mask))


def threshold_checkpoint(monkeypatch, folder: Path) -> Path:
    """A checkpoint path whose model is predict_helpers.ThresholdModel (bright blobs become cells) under one
    182-pixel window: `percs.api.load_model` is replaced, and the placeholder file is never read. For tests that
    need cells; the random tiny checkpoints find none."""
    import percs.api
    from predict_helpers import ThresholdModel, checkpoint_config

    path = folder / "threshold.pt"
    path.write_bytes(b"")
    config = checkpoint_config(folder, window=182, stride=182, reference_window=182)
    monkeypatch.setattr(percs.api, "load_model",
                        lambda checkpoint, device="auto", backbone_weights=None: (ThresholdModel(), config))
    return path


def instance_checkpoint(monkeypatch, folder: Path) -> Path:
    """As `threshold_checkpoint`, but a model that decides cell by cell: every bright blob found, each scored by
    minus the squared distance of its (window-embedded, tiny random backbone) vectors to a reference's, threshold
    0 (every found cell kept until a negative matches it better)."""
    import percs.api
    from predict_helpers import checkpoint_config, instance_threshold_model

    def load(checkpoint, device="auto", backbone_weights=None):
        return instance_threshold_model(threshold=0.0), config

    path = folder / "instance.pt"
    path.write_bytes(b"")
    config = checkpoint_config(folder, window=182, stride=182, reference_window=182)
    monkeypatch.setattr(percs.api, "load_model", load)
    return path
