"""Inference precision (percs.model.precision): the setting, its "auto" rule, and what it changes in prediction."""

from __future__ import annotations

import argparse

import pytest
import torch
from model_helpers import tiny_model

import percs.model.backbone as backbone_module
from percs.model.backbone import bfloat16_attention
from percs.model.decoder import LayoutGELU
from percs.model.instance import InstanceScorer
from percs.model.precision import PRECISIONS, check_precision, inference_precision, native_bfloat16, resolve_precision
from percs.predict import Predictor, PredictorConfig


def cpu_probes(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True), (True, True)])
def test_auto_is_bfloat16_exactly_on_cpus_that_compute_it_natively(monkeypatch, amx, avx512_bf16):
    cpu_probes(monkeypatch, amx, avx512_bf16)
    native = amx or avx512_bf16
    assert native_bfloat16(torch.device("cpu")) is native
    assert resolve_precision("auto", torch.device("cpu")) == ("bfloat16" if native else "float32")
    assert resolve_precision("auto", torch.device("cuda")) == "float32"  # a GPU keeps float32
    for given in ("float32", "bfloat16"):
        assert resolve_precision(given, torch.device("cpu")) == given


def test_bad_precision_is_refused_naming_the_argument():
    assert check_precision("float32") == "float32"
    with pytest.raises(ValueError, match="predict.precision must be one of auto, float32, bfloat16, got 'half'"):
        PredictorConfig(precision="half")
    with pytest.raises(ValueError, match="precision must be one of"):
        InstanceScorer(tiny_model().backbone, None, layers=(1,), precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bf16", torch.device("cpu"))


def test_the_context_lowers_matrix_products_only_at_bfloat16():
    linear = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with inference_precision("bfloat16", torch.device("cpu")):
        assert linear(x).dtype == torch.bfloat16
    with inference_precision("float32", torch.device("cpu")):
        assert linear(x).dtype == torch.float32
    assert linear(x).dtype == torch.float32  # nothing left behind


def test_bfloat16_prediction_is_float32_output_close_to_the_float32_one():
    """The same model at both precisions: outputs and embedding stay float32 tensors, and differ by about
    bfloat16's resolution (8 bits of mantissa), far from a wrong result."""
    image = torch.randn(3, 120, 150, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(120, 150, dtype=torch.bool)
    mask[40:52, 60:70] = True
    results = {}
    for precision in ("float32", "bfloat16"):
        predictor = Predictor(tiny_model(detail_channels=4).eval(), PredictorConfig(window=56, stride=42,
                                                                                   precision=precision))
        embedding = predictor.embed_reference(image, mask)
        flows, logits = predictor.fields(image, embedding)
        assert embedding.dtype == flows.dtype == logits.dtype == torch.float32
        results[precision] = (embedding, flows, logits)
    for exact, lowered in zip(results["float32"], results["bfloat16"]):
        scale = float(exact.abs().max())
        assert 0 < float((exact - lowered).abs().max()) <= 0.05 * scale


def test_the_decoder_in_eval_mode_decodes_each_window_as_the_batch_does():
    decoder = tiny_model(detail_channels=4).decoder
    fused = torch.randn(3, 32, 4, 4, generator=torch.Generator().manual_seed(2))
    images = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = decoder.train()(fused, images)
        one_by_one = decoder.eval()(fused, images)
        single = decoder(fused[1:2], images[1:2])
    torch.testing.assert_close(one_by_one, batched, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one_by_one[1:2], single, rtol=0, atol=0)


def test_bfloat16_attention_is_scaled_dot_product_attention():
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(2, 3, 17, 8, generator=generator) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    torch.testing.assert_close(bfloat16_attention(query, key, value), exact, rtol=1e-5, atol=1e-6)
    lowered = bfloat16_attention(query.bfloat16(), key.bfloat16(), value.bfloat16())
    assert lowered.dtype == torch.bfloat16
    assert float((lowered.float() - exact).norm() / exact.norm()) < 0.02
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inside autocast the softmax stays bfloat16 too
        assert bfloat16_attention(query.bfloat16(), key.bfloat16(), value.bfloat16()).dtype == torch.bfloat16


def test_the_backbone_under_bfloat16_autocast_attends_with_bfloat16_attention(monkeypatch):
    backbone = tiny_model().backbone.eval()
    images = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(5))
    calls = []

    def counted(query, key, value):
        calls.append(query.dtype)
        return bfloat16_attention(query, key, value)

    monkeypatch.setattr(backbone_module, "bfloat16_attention", counted)
    with torch.no_grad():
        exact = backbone(images).features
        assert calls == []  # float32 keeps torch's fused attention
        with inference_precision("bfloat16", torch.device("cpu")):
            lowered = backbone(images).features
    assert calls and set(calls) == {torch.bfloat16}
    assert float((lowered.float() - exact).norm() / exact.norm()) < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layout_gelu_is_gelu_and_keeps_channels_last(dtype):
    tensor = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(6)).to(dtype)
    exact = torch.nn.functional.gelu(tensor.float())
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for layout in (torch.contiguous_format, torch.channels_last):
        out = LayoutGELU()(tensor.contiguous(memory_format=layout))
        assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out.float(), exact, **tolerance)
    assert torch.equal(LayoutGELU()(tensor), torch.nn.GELU()(tensor))  # contiguous input: nn.GELU itself


def test_instance_scorer_embeds_reference_and_cells_at_its_precision():
    backbone = tiny_model().backbone.eval()
    image = torch.randn(3, 80, 90, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(80, 90, dtype=torch.int64)
    labels[10:24, 10:22], labels[40:60, 50:66] = 1, 2
    vectors = {}
    for precision in ("float32", "bfloat16"):
        scorer = InstanceScorer(backbone, None, layers=(1,), precision=precision)
        reference, _ = scorer.reference(image, labels == 1)
        cells, found, _ = scorer.cells(image, labels)
        assert cells.tolist() == [1, 2] and reference.dtype == found.dtype == torch.float32
        vectors[precision] = found
    difference = (vectors["float32"] - vectors["bfloat16"]).abs().max()
    assert 0 < float(difference) <= 0.05 * float(vectors["float32"].abs().max())


def test_command_line_choices_are_the_precisions():
    from percs.evaluate.percs_method import PRECISION_CHOICES
    from percs.predict.cli import add_predict_command

    assert PRECISION_CHOICES == PRECISIONS
    parser = argparse.ArgumentParser()
    add_predict_command(parser.add_subparsers())
    predict = parser._subparsers._group_actions[0].choices["predict"]
    option = next(a for a in predict._actions if "--precision" in a.option_strings)
    assert tuple(option.choices) == PRECISIONS
