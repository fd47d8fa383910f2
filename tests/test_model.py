"""PerCS-DINO head: reference pooling, fusion, decoder, the whole module forward and backward, configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import weights_file
from model_helpers import tiny_model

from percs.model.fusion import ReferenceFusion
from percs.model.percs_dino import HeadConfig, ModelConfig, PerCSDino, build_percs_dino
from percs.model.reference import (
    embed_reference,
    label_coverage,
    patch_coverage,
    pool_features,
    reference_window,
)


def test_reference_embedding_is_area_weighted_on_the_patch_grid():
    features = torch.randn(1, 5, 2, 3)
    mask = torch.zeros(1, 28, 42, dtype=torch.bool)
    mask[0, 3, 5] = True  # one pixel, far smaller than a patch: patch (0, 0) alone
    assert torch.allclose(embed_reference(features, mask)[0], features[0, :, 0, 0])
    mask[0] = False
    mask[0, 20, 12:14] = True  # 2 pixels in patch (1, 0)
    mask[0, 20, 14:20] = True  # 6 pixels in patch (1, 1)
    expected = (2 * features[0, :, 1, 0] + 6 * features[0, :, 1, 1]) / 8
    assert torch.allclose(embed_reference(features, mask)[0], expected, atol=1e-6)


def test_label_coverage_equals_average_pooled_one_hot_masks():
    generator = torch.Generator().manual_seed(1)
    for shape in [(14, 14), (28, 70), (56, 42)]:
        labels = torch.randint(0, 6, shape, generator=generator) * (torch.rand(shape, generator=generator) < 0.7)
        labels[labels == 3] = 9  # gaps in the labels are fine
        cells, coverage = label_coverage(labels)
        assert cells.tolist() == sorted(set(labels.unique().tolist()) - {0})
        one_hot = torch.stack([labels == c for c in cells])
        assert torch.equal(coverage, patch_coverage(one_hot))
    cells, coverage = label_coverage(torch.zeros(14, 28, dtype=torch.int32))
    assert cells.shape == (0,) and coverage.shape == (0, 1, 2)


def test_pool_features_weights_by_coverage():
    features = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    coverage = torch.rand(2, 5, 3, 3, dtype=torch.float64)
    pooled = pool_features(features, coverage)
    for b in range(2):
        for k in range(5):
            weights = coverage[b, k].flatten()
            direct = (features[b].flatten(1) * weights).sum(1) / weights.sum()
            assert torch.allclose(pooled[b, k], direct)


def test_reference_window_is_centred_on_the_cell_and_inside_the_image():
    image = torch.arange(3 * 300 * 400, dtype=torch.float32).reshape(3, 300, 400)
    mask = torch.zeros(300, 400, dtype=torch.bool)
    mask[150:160, 200:220] = True
    window, window_mask = reference_window(image, mask, 56)
    assert torch.equal(window, image[:, 127:183, 182:238]) and int(window_mask.sum()) == 200
    mask[:] = False
    mask[295:300, 0:3] = True  # corner: the window is shifted inside
    window, window_mask = reference_window(image, mask, 56)
    assert torch.equal(window, image[:, 244:300, 0:56]) and int(window_mask.sum()) == 15
    window, window_mask = reference_window(image[:, :20, :30], mask[:20, :30] | True, 56)  # padded with zeros
    assert window.shape == (3, 56, 56) and window[:, 20:].abs().sum() == 0 and int(window_mask.sum()) == 600


@pytest.mark.parametrize("generic, detail", [(False, 0), (True, 0), (False, 4)])
def test_forward_shapes_and_backward_reach_every_trainable_parameter(generic, detail):
    model = tiny_model(generic=generic, detail_channels=detail)
    images = torch.randn(2, 3, 56, 84)
    masks = torch.zeros(2, 56, 84, dtype=torch.bool)
    masks[0, 10:20, 30:33] = True
    masks[1, 40:41, 70:72] = True
    output = model(images, model.embed_reference(images, masks))
    assert output.flows.shape == (2, 2, 56, 84)
    assert output.same_type_logits.shape == (2, 56, 84)
    assert output.fused.shape == (2, 32, 4, 6)
    (output.flows.square().mean() + output.same_type_logits.mean() + output.fused.mean()).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


def test_the_reference_guides_the_output_unless_generic():
    images = torch.randn(1, 3, 42, 42)
    first, second = torch.randn(1, 32), torch.randn(1, 32)
    model = tiny_model().eval()
    with torch.no_grad():
        assert not torch.allclose(model(images, first).same_type_logits, model(images, second).same_type_logits)
    generic = tiny_model(generic=True).eval()
    with torch.no_grad():
        assert torch.equal(generic(images, first).same_type_logits, generic(images, second).same_type_logits)
        assert torch.equal(generic(images).flows, generic(images, first).flows)
    assert sorted(generic.state_dict()) == sorted(model.state_dict())  # same parameters, interchangeable


def test_the_detail_branch_sees_single_pixels_of_the_query_window():
    """With a detail branch, one changed pixel changes the output around it beyond its patch's 7 x 7 block
    structure; without one, the output of a pixel depends on its token only (plus the final 3 x 3)."""
    images = torch.randn(1, 3, 42, 42)
    changed = images.clone()
    changed[0, :, 20, 20] += 5.0
    embedding = torch.randn(1, 32)
    for detail, expected in ((3, True), (0, False)):
        model = tiny_model(detail_channels=detail).eval()
        with torch.no_grad():
            model.backbone.requires_grad_(False)
            features = model.backbone(images).features  # the same tokens for both: only the branch differs
            a = model.decode_features(features, embedding, images).flows
            b = model.decode_features(features, embedding, changed).flows
        assert bool((a - b).abs().amax() > 1e-6) is expected
    with pytest.raises(ValueError, match="images has shape None"):
        tiny_model(detail_channels=3).decode_features(features, embedding)


def test_detail_dilations_widen_what_the_detail_branch_sees():
    """A changed pixel at (20, 20) reaches column 35 (another token, beyond the final 3 x 3) only through a
    dilated detail branch: radius 1 + 2 + 4 + 8 = 15 px, against 2 px for the default two convolutions."""
    images = torch.randn(1, 3, 42, 56)
    changed = images.clone()
    changed[0, :, 20, 20] += 5.0
    embedding = torch.randn(1, 32)
    for dilations, expected in (((1, 2, 4, 8), True), ((1, 1), False)):
        model = tiny_model(detail_channels=3, detail_dilations=dilations).eval()
        with torch.no_grad():
            features = model.backbone(images).features
            a = model.decode_features(features, embedding, images).flows
            b = model.decode_features(features, embedding, changed).flows
        assert bool((a - b)[..., 18:23, 35].abs().amax() > 1e-6) is expected, dilations
    default = tiny_model(detail_channels=3)          # the default's parameters keep their names (old checkpoints)
    assert [k for k in default.state_dict() if ".detail." in k] == [
        "decoder.detail.0.weight", "decoder.detail.0.bias", "decoder.detail.2.weight", "decoder.detail.2.bias"]
    assert len([k for k in tiny_model(detail_channels=3, detail_dilations=(1, 2, 4, 8)).state_dict()
                if ".detail." in k and k.endswith("weight")]) == 4


def test_similarity_scale_multiplies_the_similarity_input():
    """Scale k on the similarity equals scale 1 with the projection's similarity column multiplied by k."""
    features, embedding = torch.randn(2, 32, 3, 4), torch.randn(2, 32)
    torch.manual_seed(3)
    plain = ReferenceFusion(32, 16, 1, 2).eval()
    scaled = ReferenceFusion(32, 16, 1, 2, similarity_scale=3.0).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.project.weight[:, -1] *= 3.0
        torch.testing.assert_close(scaled(features, embedding), plain(features, embedding))
    with pytest.raises(ValueError, match="head.similarity_scale"):
        HeadConfig(similarity_scale=0.0)


def test_similarity_logit_adds_the_upsampled_affine_similarity():
    torch.manual_seed(0)
    backbone = tiny_model().backbone
    plain = PerCSDino(backbone, HeadConfig(dim=32, depth=2, num_heads=4, decoder_channels=(16, 8))).eval()
    prior = PerCSDino(backbone, HeadConfig(dim=32, depth=2, num_heads=4, decoder_channels=(16, 8),
                                           similarity_logit=True)).eval()
    prior.load_state_dict(plain.state_dict() | {"similarity_gain": torch.tensor(4.0),
                                                "similarity_bias": torch.tensor(0.2)})
    images, embedding = torch.randn(1, 3, 28, 42), torch.randn(1, 32)
    with torch.no_grad():
        a, b = plain(images, embedding), prior(images, embedding)
        cosine = F.cosine_similarity(backbone(images).features, embedding[:, :, None, None], dim=1)
    torch.testing.assert_close(b.flows, a.flows)
    difference = (b.same_type_logits - a.same_type_logits) / 4.0 + 0.2
    upsampled = F.interpolate(cosine[:, None], size=(28, 42), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(difference, upsampled, atol=1e-5, rtol=1e-5)
    assert float(difference.min()) >= float(cosine.min()) - 1e-5 and float(difference.max()) <= float(cosine.max()) + 1e-5


def test_the_reference_token_takes_part_in_attention():
    """Changing only the reference token (through its marker) changes the query tokens: they attend to it."""
    model = tiny_model().eval()
    images, embedding = torch.randn(1, 3, 28, 42), torch.randn(1, 32)
    with torch.no_grad():
        before = model.fusion(model.backbone(images).features, embedding)
        model.fusion.reference_marker.add_(torch.randn(32))  # not a constant: pre-norm LayerNorm removes those
        after = model.fusion(model.backbone(images).features, embedding)
    assert (before - after).abs().amax() > 1e-3


def test_vits14_full_depth_forward_and_backward():
    torch.manual_seed(0)
    model = build_percs_dino(ModelConfig(backbone="vits14"))
    images = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 56, 56, dtype=torch.bool)
    masks[:, 20:30, 25:35] = True
    output = model(images, model.embed_reference(images, masks))
    assert output.flows.shape == (2, 2, 56, 56) and output.fused.shape == (2, 256, 4, 4)
    (output.flows.square().mean() + F.softplus(output.same_type_logits).mean()).backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.fusion.project.weight.grad.abs().sum() > 0


def test_build_with_the_pretrained_vits14_file():
    path = weights_file("dinov2_vits14_pretrain.pth")
    model = build_percs_dino(ModelConfig(backbone="vits14"), backbone_weights=path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.blocks[11].mlp.fc2.weight, state["blocks.11.mlp.fc2.weight"])


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="head.num_heads"):
        HeadConfig(dim=256, num_heads=3)
    with pytest.raises(ValueError, match="head.depth"):
        HeadConfig(depth=0)
    with pytest.raises(ValueError, match="head.detail_channels"):
        HeadConfig(detail_channels=-1)
    for dilations in ((), (0,), (1, 2.0), "12", (True,)):
        with pytest.raises(ValueError, match="head.detail_dilations"):
            HeadConfig(detail_dilations=dilations)
    with pytest.raises(ValueError, match="strides"):
        PerCSDino(tiny_model().backbone, HeadConfig(decoder_strides=(2, 2)))
    with pytest.raises(ValueError, match="vitx14"):
        ModelConfig(backbone="vitx14")


def test_input_errors_name_the_argument():
    model = tiny_model()
    images = torch.randn(1, 3, 28, 28)
    with pytest.raises(ValueError, match="reference_masks is empty"):
        model.embed_reference(images, torch.zeros(1, 28, 28, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference_masks has shape"):
        model.embed_reference(images, torch.ones(1, 28, 27, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference_embedding is None"):
        model(images)
    with pytest.raises(ValueError, match="reference_embedding has shape"):
        model(images, torch.randn(1, 31))
    with pytest.raises(ValueError, match="images has height 27"):
        model(torch.randn(1, 3, 27, 28), torch.randn(1, 32))
    with pytest.raises(ValueError, match="reference_mask is empty"):
        reference_window(images[0], torch.zeros(28, 28, dtype=torch.bool), 28)
    with pytest.raises(ValueError, match="labels has spatial shape"):
        label_coverage(torch.zeros(15, 14, dtype=torch.int64))
