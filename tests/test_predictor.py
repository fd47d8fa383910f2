"""Sliding-window predictor: window layout, exact stitching of a known field, masks, the real head, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import tiny_model
from torch import nn

from percs.data.normalize import normalize_image
from percs.flows import FLOW_SCALE, masks_to_flows, renumber
from percs.model.percs_dino import PerCSOutput
from percs.predict import Prediction, Predictor, PredictorConfig, padded_size, window_starts


class IdentityModel(nn.Module):
    """Returns its input as output: channels 0, 1 as flows and channel 2 plus the reference's first entry as
    the logit. Stitching must then reproduce the input field exactly, wherever the windows fall."""

    generic = False

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.embedded = 0
        self.batches: list[int] = []

    def embed_reference(self, images, masks):
        self.embedded += 1
        return torch.full((images.shape[0], 4), 0.25)

    def forward(self, images, reference_embedding):
        assert not self.training and not torch.is_grad_enabled()
        self.batches.append(images.shape[0])
        logits = images[:, 2] + reference_embedding[:, :1, None]
        return PerCSOutput(flows=images[:, :2], same_type_logits=logits, fused=images.new_zeros(0))


def smooth_field(height: int, width: int) -> torch.Tensor:
    """(3, H, W) smooth, position-dependent, never periodic with the window stride."""
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)[None, :]
    return torch.stack(
        (torch.sin(y / 17.0) + torch.cos(x / 23.0), torch.sin(x / 11.0 + y / 29.0), 0.01 * y - 0.02 * x)
    )


def test_padded_size_and_window_starts():
    assert [padded_size(s, 224) for s in (1, 14, 100, 224, 225, 256, 520)] == [224, 224, 224, 224, 238, 266, 532]
    assert window_starts(224, 224, 168) == [0]
    assert window_starts(266, 224, 168) == [0, 42]
    assert window_starts(532, 224, 168) == [0, 168, 308]
    for size in range(224, 1200, 14):
        starts = window_starts(size, 224, 168)
        assert starts[-1] + 224 == size and all(b - a <= 168 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(256, 256), (300, 517), (520, 230), (50, 61), (224, 224), (14, 700)])
def test_stitching_reproduces_a_known_field_across_seams_and_the_padded_border(shape):
    model = IdentityModel()
    predictor = Predictor(model, PredictorConfig(batch_size=3))
    field = smooth_field(*shape)
    embedding = predictor.embed_reference(field, torch.ones(shape, dtype=torch.bool))
    flows, logits = predictor.fields(field, embedding)
    assert flows.shape == (2, *shape) and logits.shape == shape
    assert torch.allclose(flows, field[:2], atol=1e-6)
    assert torch.allclose(logits, field[2] + 0.25, atol=1e-6)
    n_windows = len(window_starts(padded_size(shape[0], 224), 224, 168)) * len(
        window_starts(padded_size(shape[1], 224), 224, 168)
    )
    assert sum(model.batches) == n_windows and max(model.batches) <= 3
    assert model.embedded == 1


def test_masks_from_a_known_flow_field_straddling_window_seams():
    """True flows and a +-5 logit fed through the identity model give back exactly the true cells, including
    cells cut by window edges (windows start at rows 0, 84 and columns 0, 168, 196 of the 308 x 420 padded
    image) and one clipped by the image border next to the padding."""
    labels = np.zeros((300, 410), np.int32)
    yy, xx = np.mgrid[:300, :410]
    for label, (cy, cx, r) in enumerate([(168, 170, 15), (100, 224, 12), (223, 60, 18), (290, 400, 9), (40, 40, 10)]):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label + 1
    unit_flows = torch.from_numpy(masks_to_flows(labels))
    image = torch.cat((FLOW_SCALE * unit_flows, torch.from_numpy(np.where(labels > 0, 5.0, -5.0))[None].float()))
    predictor = Predictor(IdentityModel())
    prediction = predictor.predict(image, torch.zeros(4))
    assert isinstance(prediction, Prediction)
    assert prediction.labels.dtype == torch.int32
    assert np.array_equal(prediction.labels.numpy(), renumber(labels))
    assert torch.allclose(prediction.cell_probability, torch.sigmoid(torch.tensor(5.0)).expand(labels.max()))


def test_predict_with_the_real_head_on_an_odd_image():
    model = tiny_model().train()
    predictor = Predictor(model, PredictorConfig(batch_size=2, reference_window=56))
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, 250, 130, generator=generator)
    reference_mask = torch.zeros(250, 130, dtype=torch.bool)
    reference_mask[100:110, 50:58] = True
    embedding = predictor.embed_reference(image, reference_mask)
    assert embedding.shape == (32,) and not embedding.requires_grad
    prediction = predictor.predict(image, embedding)
    assert prediction.flows.shape == (2, 250, 130) and prediction.probability.shape == (250, 130)
    assert prediction.labels.shape == (250, 130) and prediction.labels.dtype == torch.int32
    assert prediction.cell_probability.shape == (int(prediction.labels.max()),)
    assert ((prediction.probability >= 0) & (prediction.probability <= 1)).all()
    assert model.training  # given back in the mode it had


def test_backbone_features_are_reused_for_the_same_image_only(monkeypatch):
    """A second reference on the same image reuses the backbone's window features (and gives what a fresh
    predictor gives); another image, or a backbone changed in place, recomputes them."""
    model = tiny_model().eval()
    calls = []
    forward = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    predictor = Predictor(model, PredictorConfig(window=56, stride=42, batch_size=4))
    image = torch.randn(3, 100, 90, generator=torch.Generator().manual_seed(1))
    first, second = torch.randn(32), torch.randn(32)
    predictor.fields(image, first)
    windows = sum(calls)
    reused = predictor.fields(image, second)
    assert sum(calls) == windows  # no backbone pass
    fresh = Predictor(tiny_model().eval(), PredictorConfig(window=56, stride=42, batch_size=4)).fields(image, second)
    torch.testing.assert_close(reused, fresh)
    predictor.fields(image + 1, second)
    assert sum(calls) == 2 * windows
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.1)
    predictor.fields(image + 1, second)
    assert sum(calls) == 3 * windows
    predictor.forget_features()
    predictor.fields(image + 1, second)
    assert sum(calls) == 4 * windows



class GradientModel(IdentityModel):
    """Flows = the spatial gradient of the window's channel 2, logit = channel 2: a flip-equivariant model (its
    flows turn with the image), so averaging over flips must give back its single view exactly."""

    def forward(self, images, reference_embedding):
        dy, dx = torch.gradient(images[:, 2], dim=(1, 2))
        return PerCSOutput(flows=torch.stack((dy, dx), 1), same_type_logits=images[:, 2], fused=images.new_zeros(0))


@pytest.mark.parametrize("flips", [2, 4])
def test_flip_views_turn_the_flows_back(flips):
    field = smooth_field(56, 56)
    single = Predictor(GradientModel(), PredictorConfig(window=56, stride=56)).fields(field, torch.zeros(4))
    flipped = Predictor(GradientModel(), PredictorConfig(window=56, stride=56, flips=flips))
    averaged = flipped.fields(field, torch.zeros(4))
    torch.testing.assert_close(averaged, single, rtol=0, atol=1e-5)
    # a model that is not equivariant: the mean of the views, each computed alone and turned back by hand
    model = tiny_model().eval()
    config = PredictorConfig(window=56, stride=42, batch_size=4)
    image, embedding = torch.randn(3, 100, 90, generator=torch.Generator().manual_seed(2)), torch.randn(32)
    views = []
    for axes in ((), (1, 2), (1,), (2,))[:flips]:
        flows, logits = Predictor(model, config).fields(image.flip(axes) if axes else image, embedding)
        if axes:
            flows, logits = flows.flip(axes).clone(), logits.flip(tuple(a - 1 for a in axes))
            for axis in axes:
                flows[axis - 1] *= -1
        views.append((flows, logits))
    expected = tuple(torch.stack([v[k] for v in views]).mean(0) for k in range(2))
    predictor = Predictor(model, PredictorConfig(window=56, stride=42, batch_size=4, flips=flips))
    torch.testing.assert_close(predictor.fields(image, embedding), expected, rtol=1e-5, atol=1e-5)
    calls = []
    forward = model.backbone.forward
    model.backbone.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    predictor.fields(image, torch.randn(32))                   # every view's features kept: no backbone pass
    assert calls == []
    with pytest.raises(ValueError, match="predict.flips must be one of \\[1, 2, 4\\], got 3"):
        PredictorConfig(flips=3)

def test_generic_model_needs_no_reference():
    predictor = Predictor(tiny_model(generic=True))
    flows, logits = predictor.fields(torch.randn(3, 30, 40))
    assert flows.shape == (2, 30, 40) and logits.shape == (30, 40)


def test_numpy_images_are_normalised():
    raw = np.random.default_rng(0).integers(0, 4000, size=(60, 70), dtype=np.uint16)
    predictor = Predictor(IdentityModel())
    flows, _ = predictor.fields(raw, torch.zeros(4))
    assert torch.allclose(flows, torch.from_numpy(normalize_image(raw))[:2], atol=1e-6)


def test_input_errors_name_the_argument():
    predictor = Predictor(tiny_model())
    with pytest.raises(ValueError, match="image has shape"):
        predictor.fields(torch.randn(1, 30, 40), torch.zeros(32))
    with pytest.raises(ValueError, match="image has NaN"):
        predictor.fields(torch.full((3, 30, 40), float("nan")), torch.zeros(32))
    with pytest.raises(ValueError, match="image has dtype"):
        predictor.fields(torch.zeros(3, 30, 40, dtype=torch.int64), torch.zeros(32))
    with pytest.raises(TypeError, match="image must be"):
        predictor.fields([[0.0]], torch.zeros(32))
    with pytest.raises(ValueError, match="reference_embedding is None"):
        predictor.fields(torch.randn(3, 30, 40))
    with pytest.raises(ValueError, match="reference_mask has shape"):
        predictor.embed_reference(torch.randn(3, 30, 40), torch.ones(30, 41, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference_mask is empty"):
        predictor.embed_reference(torch.randn(3, 30, 40), torch.zeros(30, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match="predict.window"):
        PredictorConfig(window=100)
    with pytest.raises(ValueError, match="predict.stride"):
        PredictorConfig(stride=300)
    with pytest.raises(ValueError, match="predict.batch_size"):
        PredictorConfig(batch_size=0)
