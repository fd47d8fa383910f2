"""Round trip on every annotated image of cellpose_styles and dsb2018_stage1_test (95 images, 7,648 cells):
labels -> masks_to_flows -> (FLOW_SCALE x flows, cellprob +5 inside / -5 outside) -> flows_to_masks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_label_images

from percs import flows as F
from percs.metrics import evaluate


@pytest.fixture(scope="module")
def real_images():
    return [labels for _, labels in real_label_images("cellpose_styles", "dsb2018_stage1_test")]


def test_round_trip_recovers_real_masks(real_images):
    assert len(real_images) == 95
    predicted = []
    for labels in real_images:
        flows = F.FLOW_SCALE * F.masks_to_flows(labels)
        predicted.append(F.flows_to_masks(flows, np.where(labels > 0, 5.0, -5.0).astype(np.float32)))
    stats = evaluate(real_images, predicted, thresholds=0.5)[0]
    assert stats.image_mean.ap >= 0.99
    assert stats.n_true == 7648


def test_real_flows_match_reference_on_a_crop(real_images):
    from percs.reference import flows as R

    labels = F.renumber(real_images[0][:96, :128])
    np.testing.assert_allclose(F.masks_to_flows(labels), R.masks_to_flows(labels), rtol=0, atol=1e-6)
