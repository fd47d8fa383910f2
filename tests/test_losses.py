"""PerCS-DINO losses: SupCon against its formula written out, cell pooling, flow and same-type terms, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_model

from percs.flows import FLOW_SCALE, masks_to_flows
from percs.model.losses import (
    LossConfig,
    cell_embeddings,
    flow_loss,
    percs_loss,
    same_type_loss,
    supervised_contrastive_loss,
)
from percs.model.reference import patch_coverage


def supcon_by_formula(z: np.ndarray, types: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out, one anchor and one positive at a time, in float64 with math.exp."""
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and types[p] == types[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / temperature) for a in range(len(z)) if a != i)
        terms = [math.log(math.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", range(6))
def test_supcon_matches_its_formula(seed):
    generator = torch.Generator().manual_seed(seed)
    n_cells = 3 + seed * 3
    embeddings = F.normalize(torch.randn(n_cells, 8, generator=generator, dtype=torch.float64), dim=1)
    types = torch.randint(0, 3, (n_cells,), generator=generator)
    types[0] = 7  # an anchor without positives: left out of the mean, still a negative for the others
    temperature = [0.1, 0.5][seed % 2]
    loss, n_anchors = supervised_contrastive_loss(embeddings, types, temperature)
    expected = supcon_by_formula(embeddings.numpy(), types.tolist(), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert n_anchors == sum((types == t).sum().item() - 1 > 0 for t in types)


def test_supcon_known_value():
    """Two identical cells of one type and one orthogonal cell of another: each positive anchor gives
    -log(e^(1/t) / (e^(1/t) + e^0)); the third cell has no positive. In float32 this small value (4.5e-5)
    would be the difference of two numbers near 10, good to about 1e-6 only."""
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # float64 kept
    loss, n_anchors = supervised_contrastive_loss(embeddings, torch.tensor([0, 0, 1]), 0.1)
    assert n_anchors == 2
    assert loss.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 1)), rel=1e-5)


@pytest.mark.parametrize("types", [[], [3], [0, 1, 2]])
def test_supcon_without_positive_pairs_is_zero_with_a_gradient(types):
    embeddings = F.normalize(torch.randn(len(types), 4), dim=1).requires_grad_(True)
    loss, n_anchors = supervised_contrastive_loss(embeddings, torch.tensor(types, dtype=torch.long), 0.1)
    loss.backward()
    assert n_anchors == 0 and loss.item() == 0.0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_supcon_stays_finite_for_aligned_embeddings_and_low_temperature():
    embeddings = F.normalize(torch.ones(5, 3), dim=1).requires_grad_(True)
    loss, _ = supervised_contrastive_loss(embeddings, torch.tensor([0, 0, 1, 1, 1]), 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


def test_cell_embeddings_pool_fused_features_under_each_cell():
    fused = torch.randn(2, 6, 2, 3)
    labels = torch.zeros(2, 28, 42, dtype=torch.int64)
    labels[0, 2:9, 3:20] = 2  # label 1 absent from the crop: skipped
    labels[0, 15:16, 40:41] = 5  # one pixel
    labels[1, 0:28, 10:30] = 1
    instance_types = [torch.tensor([9, 4, 9, 9, 1]), torch.tensor([4])]
    embeddings, types = cell_embeddings(fused, labels, instance_types)
    assert types.tolist() == [4, 1, 4]
    for row, (b, label) in enumerate([(0, 2), (0, 5), (1, 1)]):
        coverage = patch_coverage((labels[b] == label)[None])[0]
        direct = (fused[b] * coverage).sum((1, 2)) / coverage.sum()
        assert torch.allclose(embeddings[row], F.normalize(direct, dim=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"labels\[0\] has label 5, but instance_types\[0\] has 2"):
        cell_embeddings(fused, labels, [torch.tensor([1, 2]), torch.tensor([4])])
    with pytest.raises(ValueError, match="instance_types has 1 entries"):
        cell_embeddings(fused, labels, instance_types[:1])


def test_flow_and_same_type_terms():
    labels = torch.zeros(1, 28, 28, dtype=torch.int64)
    labels[0, 5:20, 4:14] = 1
    unit_flows = masks_to_flows(labels)
    assert flow_loss(FLOW_SCALE * unit_flows, unit_flows).item() == 0.0
    assert flow_loss(torch.zeros_like(unit_flows), unit_flows).item() == pytest.approx(
        (FLOW_SCALE * unit_flows).square().mean().item()
    )
    logits = torch.randn(1, 28, 28)
    target = labels > 0
    p = torch.sigmoid(logits.double())
    manual = -(target * torch.log(p) + ~target * torch.log(1 - p)).mean()
    assert same_type_loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unit_flows has shape"):
        flow_loss(unit_flows, unit_flows[:, :1])
    with pytest.raises(ValueError, match="same_type has shape"):
        same_type_loss(logits, target[:, :27])


def test_percs_loss_weights_terms_and_backpropagates():
    model = tiny_model()
    images = torch.randn(2, 3, 42, 56)
    labels = torch.zeros(2, 42, 56, dtype=torch.int64)
    labels[:, 3:15, 3:15] = 1
    labels[:, 20:35, 30:50] = 2
    labels[1, 30:40, 2:12] = 3
    instance_types = [torch.tensor([0, 1]), torch.tensor([0, 1, 1])]
    reference = model.embed_reference(images, labels == 1)
    output = model(images, reference)
    same_type = labels == 1
    config = LossConfig(flow_weight=0.5, same_type_weight=2.0, contrastive_weight=3.0)
    terms = percs_loss(output, masks_to_flows(labels), same_type, labels, instance_types, config)
    assert terms.n_cells == 5 and terms.n_anchors == 5
    expected = 0.5 * terms.flow + 2.0 * terms.same_type + 3.0 * terms.contrastive
    assert torch.allclose(terms.total, expected)
    terms.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert set(terms.as_floats()) == {"total", "flow", "same_type", "contrastive", "n_cells", "n_anchors"}


def test_loss_config_errors_name_the_key():
    with pytest.raises(ValueError, match="loss.temperature"):
        LossConfig(temperature=0.0)
    with pytest.raises(ValueError, match="loss.flow_weight"):
        LossConfig(flow_weight=-1.0)


def test_same_type_pos_weight_weights_positive_pixels():
    logits = torch.tensor([[[0.3, -1.2], [2.0, 0.5]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.sigmoid(logits)
    expected = -(4.0 * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    torch.testing.assert_close(same_type_loss(logits, target, 4.0), expected)
    torch.testing.assert_close(same_type_loss(logits, target), same_type_loss(logits, target, 1.0))
    with pytest.raises(ValueError, match="same_type_pos_weight"):
        LossConfig(same_type_pos_weight=-1.0)


def test_contrastive_on_backbone_pools_the_backbone_features():
    model = tiny_model()
    images = torch.randn(1, 3, 42, 56)
    labels = torch.zeros(1, 42, 56, dtype=torch.int64)
    labels[0, 3:15, 3:15], labels[0, 20:35, 30:50], labels[0, 30:40, 2:12] = 1, 2, 3
    types = [torch.tensor([0, 1, 0])]
    output = model(images, model.embed_reference(images, labels == 1))
    assert output.features.shape == (1, 32, 3, 4)
    terms = percs_loss(output, masks_to_flows(labels), labels == 1, labels, types, LossConfig(contrastive_on="backbone"))
    expected, _ = supervised_contrastive_loss(*cell_embeddings(output.features, labels, types), 0.1)
    torch.testing.assert_close(terms.contrastive, expected)
    fused = percs_loss(output, masks_to_flows(labels), labels == 1, labels, types)
    assert not torch.allclose(fused.contrastive, expected)
    terms.total.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="loss.contrastive_on"):
        LossConfig(contrastive_on="reference")
