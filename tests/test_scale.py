"""Scale from the reference (percs.data.scale): the rule, its limits and errors, and the predictor running at the
scale the reference sets with labels back at the input's size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_helpers import tiny_model
from skimage.draw import disk
from test_predictor import IdentityModel

from percs.data.scale import (MAX_SCALE, MIN_SCALE, equivalent_diameter, reference_scale, resize, resize_array,
                              scaled_shape, shared_scale, snap_scale)
from percs.flows import FLOW_SCALE, masks_to_flows
from percs.metrics import evaluate
from percs.predict import Predictor, PredictorConfig


def _disk_mask(diameter: float, shape=(200, 200)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[disk((shape[0] // 2, shape[1] // 2), diameter / 2, shape=shape)] = True
    return mask


def test_equivalent_diameter_of_disks():
    for diameter in (8, 21, 60):
        assert equivalent_diameter(_disk_mask(diameter).sum()) == pytest.approx(diameter, rel=0.06)


def test_scales_snap_to_quarter_octaves():
    for scale in np.geomspace(0.1, 5, 57):
        snapped = snap_scale(scale)
        assert abs(math.log2(snapped) * 4 - round(math.log2(snapped) * 4)) < 1e-9
        assert abs(math.log2(snapped / scale)) <= 1 / 8 + 1e-9            # at most an eighth of an octave away
    assert snap_scale(1.0) == 1.0 and snap_scale(2.0) == 2.0 and snap_scale(0.5) == 0.5


def test_the_reference_cell_sets_the_scale():
    assert reference_scale(_disk_mask(15), 0) == 1.0                     # off: the image's own scale
    assert reference_scale(_disk_mask(15), 30) == pytest.approx(2.0)
    assert reference_scale(_disk_mask(60), 30) == pytest.approx(0.5)
    assert reference_scale(torch.from_numpy(_disk_mask(20)), 30) == snap_scale(30 / equivalent_diameter(
        _disk_mask(20).sum()))                                          # tensors as arrays
    assert shared_scale([]) == 1.0
    assert shared_scale([0.5, 2.0]) == 1.0 and shared_scale([2.0]) == 2.0


def test_references_outside_the_limits_are_refused_with_their_size():
    with pytest.raises(ValueError, match=r"reference_mask: the reference cell is 1\.\d px across.*outside \[0.125, 4\]"):
        reference_scale(_disk_mask(2), 30)
    with pytest.raises(ValueError, match="give a reference cell 7.5 to 240 px across"):
        reference_scale(_disk_mask(300, (400, 400)), 30)
    with pytest.raises(ValueError, match="reference_mask is empty"):
        reference_scale(np.zeros((9, 9), bool), 30)
    with pytest.raises(ValueError, match="predict.reference_diameter must be 0 .off. or a number of pixels >= 1"):
        reference_scale(_disk_mask(10), -3)
    for bad in (-1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="predict.reference_diameter"):
            PredictorConfig(reference_diameter=bad)
    assert MIN_SCALE == 1 / 8 and MAX_SCALE == 4


def test_resizing_keeps_labels_exact():
    labels = np.random.default_rng(0).integers(0, 70000, size=(37, 53)).astype(np.int32)
    for shape in ((74, 106), (19, 27), (37, 53)):
        resized = resize_array(labels, shape, "nearest")
        assert resized.shape == shape and resized.dtype == np.int32
        assert set(np.unique(resized)) <= set(np.unique(labels))
    assert scaled_shape((37, 53), 2.0) == (74, 106) and scaled_shape((3, 3), 0.125) == (1, 1)
    field = torch.linspace(0, 1, 40 * 30).reshape(1, 40, 30)
    torch.testing.assert_close(resize(resize(field, (80, 60)), (40, 30)), field, atol=0.02, rtol=0)


def _disks_image() -> tuple[torch.Tensor, np.ndarray]:
    """A normalised (3, H, W) input for IdentityModel whose channels are the flows and logit of 12-px disks, and
    the disks' labels: the model's output then segments exactly those disks."""
    labels = np.zeros((120, 140), np.int32)
    for i, (y, x) in enumerate([(20, 20), (30, 70), (60, 110), (90, 40), (95, 100)], start=1):
        labels[disk((y, x), 6, shape=labels.shape)] = i
    flows = FLOW_SCALE * masks_to_flows(labels)
    logit = np.where(labels > 0, 5.0, -5.0)[None]
    return torch.from_numpy(np.concatenate((flows, logit)).astype(np.float32)), labels


def test_the_predictor_runs_at_the_references_scale_and_gives_labels_at_the_inputs_size():
    image, labels = _disks_image()
    reference = labels == 1                                             # 12 px across: D = 24 doubles the image
    native = IdentityModel()
    scaled_model = IdentityModel()
    predictor = Predictor(scaled_model, PredictorConfig(reference_diameter=24, flow_threshold=0.0))
    scale = predictor.scale_of(reference)
    assert scale == 2.0
    prediction = predictor.predict(image, torch.zeros(4), scale)
    Predictor(native, PredictorConfig(flow_threshold=0.0)).predict(image, torch.zeros(4))
    assert sum(native.batches) == 1 and sum(scaled_model.batches) == 4   # 224 window: 1 at 120 x 140, 4 at 240 x 280
    assert prediction.labels.shape == labels.shape
    (matched,) = evaluate([labels], [prediction.labels.numpy()], thresholds=(0.85,))
    assert prediction.labels.max() == 5 and matched.pooled.ap == 1.0     # every disk back, IoU > 0.85


def test_the_reference_is_embedded_at_its_scale():
    model = tiny_model().eval()
    image = torch.randn(3, 90, 100, generator=torch.Generator().manual_seed(1))
    mask = np.zeros((90, 100), bool)
    mask[disk((45, 50), 7.5, shape=mask.shape)] = True                   # 15 px: D = 30 doubles it
    scaled = Predictor(model, PredictorConfig(reference_window=56, reference_diameter=30))
    plain = Predictor(model, PredictorConfig(reference_window=56))
    big_mask = resize(torch.from_numpy(mask)[None].float(), (180, 200), "nearest")[0]
    torch.testing.assert_close(scaled.embed_reference(image, mask),
                               plain.embed_reference(resize(image, (180, 200)), big_mask))
    with pytest.raises(ValueError, match="reference_mask: the reference cell is"):
        Predictor(model, PredictorConfig(reference_diameter=200)).embed_reference(image, mask)
