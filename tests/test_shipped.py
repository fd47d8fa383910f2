"""Head-only model files (`percs export-model`), where their backbone comes from, and the model shipped with
percs on a real image."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from baseline_helpers import red_and_green_disks, scored_checkpoint
from conftest import REPO_ROOT, data_dir, weights_file
from percs.api import ModelLoadError, Segmenter, load_model
from percs.cli import main
from percs.predict.shipped import default_model
from percs.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(whole model file, head-only file, backbone weights file) of a tiny generic model with a scorer."""
    tmp_path = tmp_path_factory.mktemp("shipped")
    model, generic = scored_checkpoint(tmp_path, 0.3)
    backbone = load_model(generic, "cpu")[0].backbone
    assert main(["export-model", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "head.pt")]) == 0
    torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
    return tmp_path / "model.pt", tmp_path / "head.pt", tmp_path / "backbone.pth"


def test_a_head_only_file_holds_the_head_in_float16_and_no_backbone(exported):
    whole, head, _ = exported
    state = load_checkpoint(head)
    assert not any(k.startswith("backbone.") for k in state["model"]) and state["model"]
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert all(v.dtype == torch.float16 for v in state["instance"]["scorer"].values() if v.is_floating_point())
    assert state["head_only"]["backbone_fingerprint"] == load_checkpoint(whole)["instance"]["backbone_fingerprint"]
    assert head.stat().st_size < whole.stat().st_size


def test_a_head_only_model_loads_with_its_backbone_and_segments_as_the_whole_one(exported, monkeypatch):
    whole, head, weights = exported
    monkeypatch.delenv("PERCS_SHARED", raising=False)
    original, _ = load_model(whole, "cpu")
    loaded, _ = load_model(head, "cpu", weights)
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        expected = a if name.startswith("backbone.") or not a.is_floating_point() else a.half().float()
        torch.testing.assert_close(b, expected, rtol=0, atol=0, msg=name)
    assert loaded.instance.threshold == original.instance.threshold
    image, red, _ = red_and_green_disks()
    segmenter = Segmenter.from_checkpoint(head, "cpu", backbone_weights=weights)
    result = segmenter.segment(image, segmenter.reference(image, labels=red, label=1))
    assert result.labels.shape == image.shape[:2] and result.candidates is not None


def test_a_scorer_attaches_to_a_head_only_file_with_its_backbone_weights(exported, monkeypatch, tmp_path):
    from percs.model.instance import CellScorer
    from percs.train.scorer import ScorerTraining, attach_scorer, load_scorer, save_scorer

    _, head, weights = exported
    monkeypatch.delenv("PERCS_SHARED", raising=False)
    fingerprint = load_checkpoint(head)["head_only"]["backbone_fingerprint"]
    torch.manual_seed(1)
    save_scorer(tmp_path / "new.pt", CellScorer(1, 32).eval(), ScorerTraining(layers=(1,), epochs=1), "vits14",
                {"dataset": "tiny"}, 0.0, fingerprint)
    with pytest.raises(ModelLoadError, match="--backbone-weights"):  # no weights: the message says where they go
        attach_scorer(head, tmp_path / "new.pt", 0.6, tmp_path / "out.pt")
    attach_scorer(head, tmp_path / "new.pt", 0.6, tmp_path / "out.pt", weights)
    state, before = load_checkpoint(tmp_path / "out.pt"), load_checkpoint(head)
    assert state["head_only"] == before["head_only"] and state["model"].keys() == before["model"].keys()
    assert state["instance"]["threshold"] == 0.6
    new_scorer, _ = load_scorer(tmp_path / "new.pt", "cpu")
    for name, value in new_scorer.state_dict().items():   # the new scorer, in float16 like the head
        assert state["instance"]["scorer"][name].dtype == torch.float16
        torch.testing.assert_close(state["instance"]["scorer"][name], value.half(), rtol=0, atol=0)
    segmenter = Segmenter.from_checkpoint(tmp_path / "out.pt", "cpu", backbone_weights=weights)
    assert segmenter.instance.threshold == 0.6



def test_the_filter_runs_a_head_only_generic_model_with_its_backbone_weights(exported, monkeypatch):
    import argparse

    from percs.baselines.filter import build_filter

    _, head, weights = exported
    filter_weights = weights_file("dinov2_vits14_pretrain.pth")   # the filter's own (real) backbone
    monkeypatch.delenv("PERCS_SHARED", raising=False)
    args = argparse.Namespace(generic_checkpoint=str(head), cellpose_model=None, filter_threshold=0.5,
                              filter_backbone="vits14", filter_backbone_weights=str(filter_weights),
                              filter_val_queries=0, device="cpu", backbone_weights=None)
    with pytest.raises(ModelLoadError, match="--backbone-weights"):
        build_filter(args)
    args.backbone_weights = str(weights)
    method = build_filter(args)
    assert method.source.predictor.model.backbone.cls_token.shape[-1] == 32   # the head-only file's tiny backbone
    image, red, _ = red_and_green_disks()
    labels = method.segment(image, image, red == 1)
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32

def test_the_backbone_comes_from_the_option_then_percs_shared_then_the_download(exported, monkeypatch, tmp_path):
    import percs.model.backbone_weights as backbone_weights

    _, head, weights = exported
    monkeypatch.delenv("PERCS_SHARED", raising=False)

    def offline(name):
        raise RuntimeError("could not download (no network)")

    monkeypatch.setattr(backbone_weights, "_download_state_dict", offline)
    with pytest.raises(ModelLoadError, match="--backbone-weights FILE.*could not download"):
        load_model(head, "cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(head, "cpu", tmp_path / "missing.pth")
    shared = tmp_path / "shared" / "weights"
    shared.mkdir(parents=True)
    (shared / "dinov2_vits14_pretrain.pth").write_bytes(weights.read_bytes())
    monkeypatch.setenv("PERCS_SHARED", str(tmp_path / "shared"))
    assert load_model(head, "cpu")[0].instance is not None                  # found under $PERCS_SHARED/weights
    state = torch.load(weights)
    state["cls_token"] = state["cls_token"] + 1.0
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="fingerprints differ"):
        load_model(head, "cpu", tmp_path / "other.pth")


def test_export_model_refuses_what_is_not_a_model(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export-model", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "h.pt")]) == 2
    assert capsys.readouterr().err.startswith("percs export-model: error: ")
    assert not (tmp_path / "h.pt").exists()


def test_the_shipped_model_is_small_and_its_sha256_is_in_the_readme():
    path = default_model()
    assert path.is_file() and path.stat().st_size <= 10 * 2**20
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(rf"\b{digest}\b", readme), "the README does not give the shipped model's sha256"


def test_the_shipped_model_finds_the_nuclei_of_a_real_image():
    """A fluorescence image of the DSB 2018 stage-1 test set (one nucleus type): its median nucleus as the
    reference, most nuclei found (AP@0.5 against all of them: 6 of 7 found, 0.857, measured on a 2-core CPU)."""
    from percs.data.io import read_label_file
    from percs.metrics import evaluate
    from percs.predict.files import read_query_image

    folder = data_dir("dsb2018_stage1_test")
    name = "0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5"
    image = read_query_image(folder / "images" / f"{name}.png")
    truth = read_label_file(folder / "masks" / f"{name}.tif").astype(np.int32)
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    reference = int(ids[np.argsort(areas)[len(ids) // 2]])
    segmenter = Segmenter.from_checkpoint(None, "cpu", backbone_weights=weights_file("dinov2_vits14_pretrain.pth"))
    result = segmenter.segment(image, segmenter.reference(image, labels=truth, label=reference))
    stats = evaluate(truth, result.labels, (0.5,))[0]
    assert stats.tp / (stats.tp + stats.fp + stats.fn) > 0.5, stats
