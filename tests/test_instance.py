"""The instance-level same-type decision: block features, descriptors against skimage, pooling, the scorer,
its training and file, and the percs-instance method end to end on a tiny model."""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch
from skimage.measure import regionprops_table

from baseline_helpers import generic_checkpoint, red_and_green_disks
from model_helpers import tiny_model
from percs.model.backbone import BackboneSpec, DinoVisionTransformer
from percs.model.instance import (DESCRIPTORS, CellScorer, InstanceScorer, block_features, cell_descriptors,
                                  cell_windows, group_standardise, image_block_features, pad_to_grid, pool_cells,
                                  window_vectors)
from percs.train.scorer import (ScorerTraining, backbone_fingerprint, batch_of, collect_pairs, fit_scorer,
                                load_scorer, save_scorer, within_image_ranking_loss)
from train_helpers import make_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


def small_backbone(depth: int = 3, seed: int = 0, registers: int = 0) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    spec = BackboneSpec(embed_dim=32, depth=depth, num_heads=2, ffn="mlp", num_register_tokens=registers)
    return DinoVisionTransformer(spec).eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_block_features_of_the_last_block_are_the_backbones_features(registers):
    backbone = small_backbone(registers=registers)
    images = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        first, last = block_features(backbone, images, (1, 3))
        expected = backbone(images).features
    assert first.shape == last.shape == (2, 32, 3, 4)
    torch.testing.assert_close(last, expected)
    assert not torch.allclose(first, last)
    with pytest.raises(ValueError, match="block numbers in 1..3"):
        block_features(backbone, images, (4,))


def _oracle_descriptors(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    props = regionprops_table(labels, intensity_image=np.moveaxis(image, 0, -1),
                              properties=("label", "area", "intensity_mean", "intensity_std", "eccentricity"))
    columns = [np.log(props["area"])] + [props[f"intensity_mean-{c}"] for c in range(3)]
    columns += [props[f"intensity_std-{c}"] for c in range(3)] + [props["eccentricity"]]
    return np.stack(columns, 1)


@pytest.mark.parametrize("source", ["real", "random"])
def test_cell_descriptors_match_skimage_regionprops(source):
    rng = np.random.default_rng(1)
    if source == "real":
        from conftest import data_dir, read_label_image

        labels = read_label_image(data_dir("cellpose_styles") / "Kc167" / "095_masks.png")[:200, :200]
    else:
        labels = rng.integers(0, 6, (40, 50)).astype(np.int32)  # scattered, non-convex cells
    image = rng.normal(size=(3, *labels.shape)).astype(np.float32)
    cells, descriptors = cell_descriptors(torch.from_numpy(image), torch.from_numpy(labels))
    np.testing.assert_array_equal(cells.numpy(), np.unique(labels[labels > 0]))
    assert descriptors.shape == (len(cells), len(DESCRIPTORS))
    np.testing.assert_allclose(descriptors.numpy(), _oracle_descriptors(image, labels), rtol=1e-5, atol=1e-5)


def test_cell_descriptors_of_a_single_pixel_and_no_cell():
    image = torch.ones(3, 5, 5)
    labels = torch.zeros(5, 5, dtype=torch.int64)
    assert cell_descriptors(image, labels)[1].shape == (0, len(DESCRIPTORS))
    labels[2, 3] = 7
    cells, descriptors = cell_descriptors(image, labels)
    assert cells.tolist() == [7]
    np.testing.assert_allclose(descriptors[0].numpy(), [0, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)


def test_pool_cells_weighs_patches_by_covered_fraction():
    features = [torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3), torch.ones(2, 2, 3)]
    labels = torch.zeros(28, 42, dtype=torch.int64)
    labels[0:14, 0:14] = 3            # patch (0, 0) whole
    labels[14:21, 14:28] = 5          # half of patch (1, 1)
    labels[20:28, 27:29] = 9          # straddles patches (1, 1) and (1, 2)
    cells, pooled = pool_cells(features, labels)
    assert cells.tolist() == [3, 5, 9] and pooled.shape == (3, 2, 2)
    np.testing.assert_allclose(pooled[0, 0].numpy(), features[0][:, 0, 0].numpy())
    np.testing.assert_allclose(pooled[1, 0].numpy(), features[0][:, 1, 1].numpy())
    np.testing.assert_allclose(pooled[2, 0].numpy(), features[0][:, 1, 1:3].mean(1).numpy())
    np.testing.assert_allclose(pooled[:, 1].numpy(), 1.0)
    assert pad_to_grid(torch.ones(20, 30, dtype=torch.int64), (2, 3)).shape == (28, 42)


def test_image_block_features_equal_one_window_when_the_image_is_one_window():
    backbone = small_backbone()
    image = torch.randn(3, 56, 56)
    with torch.no_grad():
        whole = image_block_features(backbone, image, (2, 3), window=56, stride=42)
        direct = block_features(backbone, image[None], (2, 3))
    for a, b in zip(whole, direct):
        torch.testing.assert_close(a, b[0])


def test_group_standardise_centres_and_scales_each_group():
    values = torch.tensor([[1.0], [3.0], [10.0], [10.0], [40.0]])
    groups = torch.tensor([0, 0, 1, 1, 1])
    out = group_standardise(values, groups, 2)
    for g in (0, 1):
        assert abs(float(out[groups == g].mean())) < 1e-6
    torch.testing.assert_close(out[:2, 0], torch.tensor([-1.0, 1.0]) / (1 + 1e-3))
    # a group of one value (variance 0) standardises to 0 with a finite gradient (a tuned tail trains through it)
    values = torch.tensor([[1.0], [3.0], [5.0]], requires_grad=True)
    out = group_standardise(values, torch.tensor([0, 0, 1]), 2)
    assert float(out[2, 0].detach()) == 0.0
    out.sum().backward()
    assert torch.isfinite(values.grad).all()


def test_scorer_is_equivariant_to_the_order_of_cells_and_checks_shapes():
    torch.manual_seed(0)
    scorer = CellScorer(2, 16).eval()
    cells, reference = torch.randn(7, 2, 16), torch.randn(2, 16)
    descriptors, reference_descriptors = torch.randn(7, len(DESCRIPTORS)), torch.randn(len(DESCRIPTORS))
    logits = scorer(cells, reference, descriptors, reference_descriptors)
    order = torch.randperm(7)
    torch.testing.assert_close(scorer(cells[order], reference, descriptors[order], reference_descriptors),
                               logits[order])
    with pytest.raises(ValueError, match="expected \\(N, 2, 16\\)"):
        scorer(cells[:, :1], reference, descriptors, reference_descriptors)


def _separable_pairs(crops: int, seed: int) -> list[dict]:
    """Crops whose same-type cells have the reference's vector direction in layer 0 plus noise, others not."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(crops):
        n = 12
        reference = rng.normal(size=(2, 16))
        target = rng.random(n) < 0.4
        cells = rng.normal(size=(n, 2, 16))
        cells[target, 0] = reference[0] + 0.3 * rng.normal(size=(int(target.sum()), 16))
        pairs.append(dict(cells=torch.tensor(cells).half(), descriptors=torch.tensor(rng.normal(size=(n, 8))).float(),
                          reference=torch.tensor(reference).half(), reference_descriptors=torch.zeros(8),
                          target=torch.tensor(target)))
    return pairs


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_fit_scorer_learns_a_metric_on_the_vectors_and_round_trips_through_its_file(tmp_path):
    scorer = fit_scorer(_separable_pairs(200, 0), ScorerTraining(epochs=4, layers=(1, 2)), progress=False)
    cells, references, descriptors, reference_descriptors, groups, targets = batch_of(_separable_pairs(40, 1))
    with torch.no_grad():
        logits = scorer(cells, references, descriptors, reference_descriptors, groups)
    assert _auc(logits.numpy(), targets.numpy() > 0) > 0.95
    path = tmp_path / "scorer.pt"
    digest = save_scorer(path, scorer, ScorerTraining(layers=(1, 2)), "vits14", {"dataset": "separable"}, 1.0, "f")
    loaded, record = load_scorer(path)
    assert record["trained_on"] == {"dataset": "separable"} and record["layers"] == [1, 2]
    assert (tmp_path / "scorer.pt.sha256").read_text().split()[0] == digest
    with torch.no_grad():
        torch.testing.assert_close(loaded(cells, references, descriptors, reference_descriptors, groups), logits)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        load_scorer(path)
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a percs scorer file"):
        load_scorer(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_scorer(tmp_path / "missing.pt")


def test_within_image_ranking_loss_against_a_loop_over_crops():
    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.normal(size=40), dtype=torch.float32)
    targets = torch.tensor(rng.random(40) < 0.3, dtype=torch.float32)
    groups = torch.tensor(np.sort(rng.integers(0, 6, 40)))
    targets[groups == 2] = 1.0                          # a crop of one class: no pair, left out
    expected = []
    for g in groups.unique():
        z, y = logits[groups == g].numpy(), targets[groups == g].numpy() > 0.5
        if y.any() and (~y).any():
            expected.append(np.log1p(np.exp(z[~y][None, :] - z[y][:, None])).mean())
    torch.testing.assert_close(within_image_ranking_loss(logits, targets, groups),
                               torch.tensor(float(np.mean(expected))), rtol=1e-5, atol=1e-6)
    assert float(within_image_ranking_loss(logits, torch.ones(40), groups)) == 0.0
    # the loss depends on each crop's order, not on its level: a constant per crop changes nothing
    shifted = logits + torch.tensor(rng.normal(size=6), dtype=torch.float32)[groups] * 5
    torch.testing.assert_close(within_image_ranking_loss(shifted, targets, groups),
                               within_image_ranking_loss(logits, targets, groups), rtol=1e-4, atol=1e-5)


def test_fit_scorer_with_the_ranking_term_learns_the_metric_too():
    scorer = fit_scorer(_separable_pairs(200, 0), ScorerTraining(epochs=4, layers=(1, 2), rank_weight=5.0),
                        progress=False)
    cells, references, descriptors, reference_descriptors, groups, targets = batch_of(_separable_pairs(40, 1))
    with torch.no_grad():
        logits = scorer(cells, references, descriptors, reference_descriptors, groups)
    assert _auc(logits.numpy(), targets.numpy() > 0) > 0.95
    with pytest.raises(ValueError, match="rank_weight must be a finite number >= 0"):
        ScorerTraining(rank_weight=-1.0)


def test_fit_scorer_refuses_one_class_pairs():
    pairs = _separable_pairs(3, 0)
    for pair in pairs:
        pair["target"][:] = False
    with pytest.raises(ValueError, match="all of one class"):
        fit_scorer(pairs, ScorerTraining(epochs=1, layers=(1, 2)), progress=False)


def test_collect_pairs_labels_each_crop_cell_by_the_references_type(tmp_path):
    bench = make_benchmark(tmp_path)
    backbone = small_backbone(depth=2)
    pairs = collect_pairs(bench, backbone, items=6, seed=0, layers=(1, 2), progress=False)
    assert pairs and all(p["cells"].shape[1:] == (2, 32) and p["reference"].shape == (2, 32) for p in pairs)
    assert all(len(p["target"]) == len(p["descriptors"]) == len(p["cells"]) for p in pairs)
    assert any(bool(p["target"].any()) for p in pairs) and any(bool((~p["target"]).any()) for p in pairs)


def _instance_args(**given):
    values = dict(generic_checkpoint=None, scorer=None, scorer_threshold=None, scorer_val_queries=2, device="cpu")
    values.update(given)
    return argparse.Namespace(**values)


def test_percs_instance_method_scores_the_generic_masks(tmp_path):
    from percs.api import load_model
    from percs.data.format import load_dataset
    from percs.evaluate.instance_method import build_instance
    from percs.evaluate.methods import MethodUnavailable

    bench = make_benchmark(tmp_path)
    checkpoint = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    backbone = copy.deepcopy(load_model(checkpoint, "cpu")[0].backbone)
    settings = ScorerTraining(layers=(1,), epochs=1)
    scorer = CellScorer(1, 32)  # the right width for the tiny backbone, untrained
    path = tmp_path / "scorer.pt"
    save_scorer(path, scorer.eval(), settings, "vits14", {"dataset": "tiny"}, 0.0, backbone_fingerprint(backbone))
    method = build_instance(_instance_args(generic_checkpoint=str(checkpoint), scorer=str(path)), load_dataset(bench))
    assert method.name.endswith(f"threshold {method.threshold:g} on val, 2 queries)")
    assert method.settings["threshold"] in method.settings["val_mean_ap50_by_threshold"]
    image, red, green = red_and_green_disks()
    found = method.probabilities(image, image, red == 1)
    np.testing.assert_array_equal(found.labels, method.source(image))
    assert found.similarity.shape == found.cells.shape and ((0 <= found.similarity) & (found.similarity <= 1)).all()
    method.threshold = -1.0
    np.testing.assert_array_equal(method.segment(image, image, red == 1), method.source(image))
    with pytest.raises(MethodUnavailable, match="--scorer"):
        build_instance(_instance_args(generic_checkpoint=str(checkpoint)))
    assert method.settings["predict"]["flow_threshold"] == 0.4 and method.settings["predict"]["flips"] == 1
    looser = build_instance(_instance_args(generic_checkpoint=str(checkpoint), scorer=str(path), scorer_threshold=0.5,
                                           flow_threshold=0.0, flips=2))  # percs eval --flow-threshold 0 --flips 2
    assert looser.settings["predict"]["flow_threshold"] == 0.0 and looser.source.predictor.config.flips == 2
    expanded = build_instance(_instance_args(generic_checkpoint=str(checkpoint), scorer=str(path),
                                             scorer_threshold=0.5, scorer_expand=0.5))
    assert expanded.instance.expand == 0.5 and expanded.settings["expand"] == 0.5 and "best match" in expanded.name
    from percs.predict import as_input_image

    disks = np.where(green > 0, green + 4, red).astype(np.int32)  # every disk found (the tiny model finds none)
    cells, vectors, descriptors = expanded.instance.cells(as_input_image(image, "cpu"), torch.from_numpy(disks))
    expanded.cells = lambda image, scale: (disks, cells.numpy(), vectors, descriptors)
    reference = expanded._reference(image, red == 1)
    alone = expanded.instance.logits(vectors, descriptors, [reference])[:, 0]
    best = int(alone.argmax())
    match = expanded.instance.logits(vectors, descriptors, [(vectors[best], descriptors[best])])[:, 0]
    found = expanded.probabilities(image, image, red == 1)
    assert len(found.cells) == int(disks.max()) > 1
    np.testing.assert_allclose(found.similarity, torch.sigmoid(0.5 * alone + 0.5 * match).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"--scorer-expand: expand must be a number in \[0, 1\]"):
        build_instance(_instance_args(generic_checkpoint=str(checkpoint), scorer=str(path), scorer_threshold=0.5,
                                      scorer_expand=2.0))
    save_scorer(path, scorer.eval(), settings, "vits14", {"dataset": "tiny"}, 0.0, "another backbone")
    with pytest.raises(ValueError, match="other backbone weights"):
        build_instance(_instance_args(generic_checkpoint=str(checkpoint), scorer=str(path), scorer_threshold=0.5))


def test_cell_windows_resample_each_cell_to_one_scale():
    from percs.model.instance import cell_windows

    ys, xs = np.mgrid[:80, :100].astype(np.float32)
    image = torch.from_numpy(np.stack((0.5 * ys, 0.25 * xs, ys - xs)))     # linear: bilinear sampling is exact
    labels = np.zeros((80, 100), np.int64)
    labels[np.hypot(ys - 30, xs - 40) < 10] = 4                          # a disk of radius 10
    labels[60:64, 80:82] = 9                                             # a small rectangle
    cells, windows, masks = cell_windows(torch.from_numpy(image.numpy()), torch.from_numpy(labels), 56, 2.0)
    assert cells.tolist() == [4, 9] and windows.shape == (2, 3, 56, 56) and masks.shape == (2, 56, 56)
    for k, cell in enumerate((4, 9)):
        cy, cx = np.argwhere(labels == cell).mean(0)
        side = 2.0 * 2 * np.sqrt((labels == cell).sum() / np.pi)
        steps = (np.arange(56) + 0.5) / 56 - 0.5
        sy, sx = np.meshgrid(cy + side * steps, cx + side * steps, indexing="ij")
        inside = (sy >= 0) & (sy <= 79) & (sx >= 0) & (sx <= 99)
        np.testing.assert_allclose(windows[k, 0].numpy()[inside], 0.5 * sy[inside], atol=1e-3)
        np.testing.assert_allclose(windows[k, 2].numpy()[inside], (sy - sx)[inside], atol=1e-3)
        near = labels[np.clip(np.round(sy).astype(int), 0, 79), np.clip(np.round(sx).astype(int), 0, 99)] == cell
        assert (masks[k].numpy() == near).mean() > 0.99                  # nearest sampling, ties aside
    # the cell covers about (1 / context)^2 * pi / 4 of its window whatever its size
    np.testing.assert_allclose(masks.mean((1, 2)).numpy(), np.pi / 16, rtol=0.1)
    empty = cell_windows(image, torch.zeros(80, 100, dtype=torch.int64))
    assert empty[0].numel() == 0 and empty[1].shape == (0, 3, 56, 56)
    with pytest.raises(ValueError, match="multiple of 14"):
        cell_windows(image, torch.from_numpy(labels), 50)


def test_cell_vectors_pool_each_window_under_its_cell():
    from percs.model.instance import cell_vectors, cell_windows, window_vectors

    backbone = small_backbone()
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(3, 60, 70)).astype(np.float32))
    labels = torch.zeros(60, 70, dtype=torch.int64)
    labels[5:15, 5:20], labels[30:50, 40:60] = 1, 2
    cells, vectors = cell_vectors(backbone, image, labels, (2, 3))
    assert cells.tolist() == [1, 2] and vectors.shape == (2, 2, 32)
    _, windows, masks = cell_windows(image, labels)
    with torch.no_grad():
        alone = window_vectors(backbone, windows[1:], masks[1:], (2, 3))   # batching does not mix cells
    torch.testing.assert_close(vectors[1:], alone)


def test_a_generic_checkpoint_with_a_scorer_attached_is_one_model_for_segmenter_and_eval(tmp_path):
    from percs.api import Segmenter, load_model
    from percs.evaluate.percs_method import build_percs_method
    from percs.train.checkpoint import CheckpointError
    from percs.train.scorer import attach_scorer

    bench = make_benchmark(tmp_path)
    generic = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    backbone = load_model(generic, "cpu")[0].backbone
    settings = ScorerTraining(layers=(1,), epochs=1)
    torch.manual_seed(0)
    save_scorer(tmp_path / "scorer.pt", CellScorer(1, 32).eval(), settings, "vits14", {"dataset": "tiny"}, 0.0,
                backbone_fingerprint(backbone))
    attach_scorer(generic, tmp_path / "scorer.pt", -1.0, tmp_path / "model.pt")
    plain = Segmenter.from_checkpoint(generic, "cpu")
    segmenter = Segmenter.from_checkpoint(tmp_path / "model.pt", "cpu")
    assert segmenter.instance is not None and not segmenter.generic and plain.instance is None
    image, red, _ = red_and_green_disks()
    reference = segmenter.reference(image, labels=red, label=1)
    assert reference.vectors is not None and reference.vectors[0].shape == (1, 32)
    everything = plain.segment(image, None).labels
    result = segmenter.segment(image, reference)             # threshold -1: every cell the generic model finds
    np.testing.assert_array_equal(result.labels, everything)
    assert result.cell_probability.shape == (int(everything.max()),)
    cells = result.labels > 0
    assert ((result.probability[cells] >= 0) & (result.probability[cells] <= 1)).all()
    assert (result.probability[~cells] == 0).all() or int(everything.max()) == 0
    segmenter.instance.threshold = 2.0                      # nothing passes
    assert segmenter.segment(image, reference).labels.max() == 0
    with pytest.raises(ValueError, match="without an instance scorer"):
        segmenter.segment(image, plain.reference(image, labels=red, label=1))
    args = argparse.Namespace(checkpoint=str(tmp_path / "model.pt"), min_cell_probability=0.0, device="cpu",
                              window=None, stride=None, batch_size=None, cellprob_threshold=None,
                              flow_threshold=None, niter=None, min_size=None, precision=None, flips=None)
    method = build_percs_method(args, None)
    assert method.name.startswith("PerCS-DINO instance decision (") and "threshold -1" in method.name
    np.testing.assert_array_equal(method.segment(image, image, red == 1), everything)
    margined = build_percs_method(argparse.Namespace(**{**vars(args), "decision_margin": 0.5}), None)
    assert "margin 0.5 from the best cell" in margined.name and margined.settings["instance"]["margin"] == 0.5
    with pytest.raises(ValueError, match="--decision-margin: margin must be"):
        build_percs_method(argparse.Namespace(**{**vars(args), "decision_margin": -1.0}), None)
    with pytest.raises(ValueError, match="--decision-margin needs a model with an instance-level decision"):
        build_percs_method(argparse.Namespace(**{**vars(args), "checkpoint": str(generic), "decision_margin": 0.5}),
                           None)
    personal = generic_checkpoint(bench, tmp_path / "personal.pt", generic=False)
    with pytest.raises(ValueError, match="not a generic model"):
        attach_scorer(personal, tmp_path / "scorer.pt", 0.5, tmp_path / "bad.pt")
    save_scorer(tmp_path / "other.pt", CellScorer(1, 32).eval(), settings, "vits14", {}, 0.0, "another")
    with pytest.raises(ValueError, match="other backbone weights"):
        attach_scorer(generic, tmp_path / "other.pt", 0.5, tmp_path / "bad.pt")
    attach_scorer(generic, tmp_path / "scorer.pt", 0.5, tmp_path / "loose.pt",
                  predict={"flow_threshold": 0.6, "flips": 2})
    loose = Segmenter.from_checkpoint(tmp_path / "loose.pt", "cpu")
    assert loose.predictor.config.flow_threshold == 0.6 and segmenter.predictor.config.flow_threshold == 0.4
    assert segmenter.instance.expand == 0.0 and loose.instance.expand == 0.0       # no expand recorded: 0
    attach_scorer(generic, tmp_path / "scorer.pt", 0.5, tmp_path / "expanded.pt", expand=0.5)
    expanded = build_percs_method(argparse.Namespace(**{**vars(args), "checkpoint": str(tmp_path / "expanded.pt")}),
                                  None)
    assert expanded.settings["instance"]["expand"] == 0.5 and "best match weighted 0.5" in expanded.name
    override = build_percs_method(argparse.Namespace(**{**vars(args), "checkpoint": str(tmp_path / "expanded.pt"),
                                                        "expand": 0.0}), None)
    assert override.settings["instance"]["expand"] == 0.0 and "best match" not in override.name
    with pytest.raises(ValueError, match=r"--expand: expand must be a number in \[0, 1\]"):
        build_percs_method(argparse.Namespace(**{**vars(args), "expand": 1.5}), None)
    with pytest.raises(ValueError, match="--expand needs a model with an instance-level decision"):
        build_percs_method(argparse.Namespace(**{**vars(args), "checkpoint": str(generic), "expand": 0.5}), None)
    with pytest.raises(ValueError, match=r"expand must be a number in \[0, 1\]"):
        attach_scorer(generic, tmp_path / "scorer.pt", 0.5, tmp_path / "bad.pt", expand=-0.5)
    assert load_model(tmp_path / "loose.pt", "cpu")[1].predict.flips == 2 and segmenter.predictor.config.flips == 1
    with pytest.raises(ValueError, match="predict.flow_threshold must be a finite number >= 0"):
        attach_scorer(generic, tmp_path / "scorer.pt", 0.5, tmp_path / "bad.pt", predict={"flow_threshold": -0.1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'flow'"):
        attach_scorer(generic, tmp_path / "scorer.pt", 0.5, tmp_path / "bad.pt", predict={"flow": 0.6})
    assert not (tmp_path / "bad.pt").exists()
    raw = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(raw[:-5] + b"xxxxx")
    with pytest.raises(CheckpointError):
        Segmenter.from_checkpoint(tmp_path / "model.pt", "cpu")


def test_train_scorer_flow_threshold_needs_the_attached_model_and_a_valid_value(tmp_path, capsys):
    from percs.cli import main

    base = ["train-scorer", "--data", str(tmp_path), "--out", str(tmp_path / "scorer.pt")]
    assert main(base + ["--flow-threshold", "0.6"]) == 2
    assert "--flow-threshold and --flips set the attached model's; they need --generic-checkpoint" \
        in capsys.readouterr().err
    attached = ["--generic-checkpoint", str(tmp_path / "g.pt"), "--model-out", str(tmp_path / "m.pt")]
    for bad in ("-0.5", "inf", "nan"):
        assert main(base + attached + ["--flow-threshold", bad]) == 2
        assert "--flow-threshold must be a finite number >= 0" in capsys.readouterr().err
    for bad in (["--tune-blocks", "-1"], ["--tune-blocks", "1", "--tune-lr", "0"], ["--tune-lr", "nan"]):
        assert main(base + bad) == 2
        assert "--tune-blocks must be >= 0" in capsys.readouterr().err
    assert main(base + ["--tune-blocks", "1", "--embedding", "patch"]) == 2
    assert "--tune-blocks needs --embedding window" in capsys.readouterr().err
    assert main(base + ["--objective", "types", "--tune-blocks", "1"]) == 2
    assert "--objective types reads the frozen backbone: --tune-blocks must be 0" in capsys.readouterr().err
    for bad in ("-1", "inf", "nan"):
        assert main(base + ["--objective", "types", "--type-l2", bad]) == 2
        assert "--type-l2 must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "scorer.pt").exists()


@pytest.mark.parametrize("registers", [0, 4])
def test_a_backbone_tail_replaces_its_last_blocks_and_continues_from_kept_tokens(registers):
    backbone = small_backbone(depth=3, registers=registers)
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        plain = backbone(images, blocks=(1, 3))
        same = backbone(images, blocks=(1, 3), tail=torch.nn.ModuleList(copy.deepcopy(backbone.blocks[1:])),
                        keep_tokens=1)
        for a, b in zip(plain.blocks, same.blocks):
            torch.testing.assert_close(a, b)
        assert plain.tokens is None and same.tokens.shape == (2, 1 + registers + 6, 32)
        continued, _, _ = backbone.run_blocks(same.tokens, (2, 3), (3,), start=1)
        torch.testing.assert_close(continued[0], plain.blocks[1])
        tail = torch.nn.ModuleList([copy.deepcopy(backbone.blocks[2])])
        torch.nn.init.normal_(tail[0].mlp.fc1.weight)
        changed = backbone(images, blocks=(1, 2, 3), tail=tail)
    torch.testing.assert_close(changed.blocks[0], plain.blocks[0])     # blocks before the tail are untouched
    assert not torch.allclose(changed.blocks[2], plain.blocks[1])
    with pytest.raises(ValueError, match="keep_tokens must be a block number in 1..3"):
        backbone(images, keep_tokens=4)
    with pytest.raises(ValueError, match="come before start=2"):
        backbone.run_blocks(same.tokens, (2, 3), (1,), start=2)


def test_a_fine_tuned_tail_is_trained_from_kept_tokens_and_embeds_cells_as_it_was_trained(tmp_path):
    from percs.model.instance import tail_vectors
    from percs.train.scorer import scorer_from_record

    bench = make_benchmark(tmp_path)
    backbone = small_backbone(depth=2)
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    frozen = copy.deepcopy(backbone.state_dict())
    pairs = collect_pairs(bench, backbone, items=6, seed=0, layers=(1, 2), progress=False, keep_tokens=1)
    first = pairs[0]
    assert first["token_start"] == 1 and first["tokens"].shape == (len(first["target"]), 17, 32)
    assert first["coverage"].shape == (len(first["target"]), 4, 4) and first["reference_tokens"].shape == (17, 32)
    with torch.no_grad():
        recomputed = tail_vectors(backbone, None, first["tokens"], first["coverage"], 1, (1, 2))
    torch.testing.assert_close(recomputed[:, 0], first["cells"][:, 1].float(), atol=2e-2, rtol=1e-2)

    settings = ScorerTraining(layers=(1, 2), epochs=3, batch_crops=2, tune_blocks=1, tune_lr=1e-3)
    scorer = fit_scorer(pairs, settings, progress=False, backbone=backbone)
    assert scorer.tail is not None and len(scorer.tail) == 1
    assert not torch.allclose(scorer.tail[0].mlp.fc1.weight, backbone.blocks[1].mlp.fc1.weight)
    for name, tensor in backbone.state_dict().items():                     # the backbone itself is not trained
        torch.testing.assert_close(tensor, frozen[name])

    # inference embeds every cell through the tuned tail, as the fit did from the kept tokens
    item_image = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 40, 50)).astype(np.float32))
    labels = torch.zeros(40, 50, dtype=torch.int64)
    labels[4:14, 4:16], labels[20:34, 25:45] = 1, 2
    instance = InstanceScorer(backbone, scorer, (1, 2), "window")
    _, vectors, _ = instance.cells(item_image, labels)
    _, windows, masks = cell_windows(item_image, labels)
    with torch.no_grad():
        _, tokens, coverage = window_vectors(backbone, windows, masks, (1, 2), keep_tokens=1)
        tuned = tail_vectors(backbone, scorer.tail, tokens, coverage, 1, (1, 2))
        untuned = window_vectors(backbone, windows, masks, (1, 2))
    torch.testing.assert_close(vectors[:, 1], tuned[:, 0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(vectors[:, 0], untuned[:, 0])                # block 1 stays the frozen one
    assert not torch.allclose(vectors[:, 1], untuned[:, 1], atol=1e-2)

    path = tmp_path / "tuned.pt"                 # the tail is rebuilt for the named variant: vits14 is not this one
    save_scorer(path, scorer, settings, "vits14", {"dataset": "tiny"}, 1.0, "f")
    with pytest.raises(ValueError, match="do not fit its recorded shape .backbone 'vits14', tune_blocks 1"):
        load_scorer(path)
    record = torch.load(path, weights_only=True)
    assert record["settings"]["tune_blocks"] == 1 and any(k.startswith("tail.0.") for k in record["scorer"])
    with pytest.raises(ValueError, match="is not a DINOv2 variant"):
        scorer_from_record(dict(record, backbone="tiny"))
    from percs.model.backbone import Block, backbone_spec
    from percs.predict.shipped import half_state

    torch.manual_seed(0)
    big = CellScorer(1, 384, tail=torch.nn.ModuleList([Block(backbone_spec("vits14"))])).eval()
    save_scorer(tmp_path / "big.pt", big, ScorerTraining(layers=(12,), tune_blocks=1), "vits14", {}, 0.0, "f")
    loaded, record = load_scorer(tmp_path / "big.pt")
    for name, tensor in big.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    halved = scorer_from_record(dict(record, scorer=half_state(record["scorer"])))     # as a shipped model stores it
    torch.testing.assert_close(halved.tail[0].attn.qkv.weight, big.tail[0].attn.qkv.weight, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="do not hold the tokens after block 1"):
        fit_scorer(collect_pairs(bench, backbone, items=2, seed=0, layers=(1, 2), progress=False), settings,
                   progress=False, backbone=backbone)
    with pytest.raises(ValueError, match="tune_blocks needs the backbone"):
        fit_scorer(pairs, settings, progress=False)
    with pytest.raises(ValueError, match="tune_blocks needs the window embedding"):
        ScorerTraining(tune_blocks=1, embedding="patch")
    with pytest.raises(ValueError, match="tune_blocks must be an integer >= 0"):
        ScorerTraining(tune_blocks=-1)
    with pytest.raises(ValueError, match="which no layer of"):
        fit_scorer(pairs, ScorerTraining(layers=(1,), tune_blocks=1), progress=False, backbone=backbone)
    with pytest.raises(ValueError, match="embedding must be 'window'"):
        InstanceScorer(backbone, scorer, (1, 2), "patch")


def test_a_context_window_appends_the_cells_wider_surroundings_on_the_layer_axis(tmp_path):
    from percs.model.instance import cell_vectors
    from percs.train.scorer import scorer_from_record

    backbone = small_backbone()
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.normal(size=(3, 60, 70)).astype(np.float32))
    labels = torch.zeros(60, 70, dtype=torch.int64)
    labels[5:15, 5:20], labels[30:50, 40:60] = 1, 2
    plain = InstanceScorer(backbone, None, (2, 3), "window")
    wide = InstanceScorer(backbone, None, (2, 3), "window", context_window=5.0)
    _, alone, descriptors = plain.cells(image, labels)
    cells, vectors, wide_descriptors = wide.cells(image, labels)
    assert vectors.shape == (2, 4, 32)
    torch.testing.assert_close(vectors[:, :2], alone)                     # the cell's own window first
    surroundings = cell_vectors(backbone, image, labels, (2, 3), 56, 5.0)[1]
    torch.testing.assert_close(vectors[:, 2:], surroundings)              # then the wider window's
    assert not torch.allclose(vectors[:, 2:], alone, atol=1e-3)
    torch.testing.assert_close(wide_descriptors, descriptors)
    reference, _ = wide.reference(image, labels == 2)
    torch.testing.assert_close(reference[:2], plain.reference(image, labels == 2)[0])
    assert reference.shape == (4, 32)

    # pairs, fit and file carry the second window; pairs without it are refused
    bench = make_benchmark(tmp_path)
    small = small_backbone(depth=2)
    pairs = collect_pairs(bench, small, items=6, seed=0, layers=(1, 2), progress=False, context_window=4.0)
    assert all(p["cells"].shape[1:] == (4, 32) and p["reference"].shape == (4, 32) for p in pairs)
    settings = ScorerTraining(layers=(1, 2), context_window=4.0, batch_crops=2)
    scorer = fit_scorer(pairs, settings, progress=False)
    assert len(scorer.per_layer) == 4
    save_scorer(tmp_path / "wide.pt", scorer, settings, "vits14", {"dataset": "tiny"}, 1.0, "f")
    loaded, record = load_scorer(tmp_path / "wide.pt")
    assert record["settings"]["context_window"] == 4.0 and len(loaded.per_layer) == 4
    with pytest.raises(ValueError, match="context_window 0"):
        scorer_from_record(dict(record, settings=dict(record["settings"], context_window=0.0)))
    with pytest.raises(ValueError, match="pairs hold 4 vectors per cell, settings ask for 2"):
        fit_scorer(pairs, ScorerTraining(layers=(1, 2), batch_crops=2), progress=False)


@pytest.mark.parametrize("side, embedding, message", [(0.5, "window", ">= 1"), (float("inf"), "window", ">= 1"),
                                                      (3.0, "patch", "needs the window embedding")])
def test_a_context_window_must_be_wide_and_finite_with_the_window_embedding(side, embedding, message):
    with pytest.raises(ValueError, match=message):
        ScorerTraining(context_window=side, embedding=embedding)
    with pytest.raises(ValueError, match=message):
        InstanceScorer(small_backbone(), None, (1,), embedding, context_window=side)


def test_train_scorer_refuses_a_bad_context_window(tmp_path, capsys):
    from percs.cli import main

    bench = make_benchmark(tmp_path)
    for given in (["--context-window", "0.5"], ["--context-window", "3", "--embedding", "patch"]):
        assert main(["train-scorer", "--data", str(bench), "--out", str(tmp_path / "s.pt"), *given]) == 2
        assert "--context-window must be 0 (none) or a finite number >= 1" in capsys.readouterr().err


def test_train_scorer_refuses_an_expand_outside_0_1(tmp_path, capsys):
    from percs.cli import main

    bench = make_benchmark(tmp_path)
    for value in ("-0.5", "1.5", "nan"):
        assert main(["train-scorer", "--data", str(bench), "--out", str(tmp_path / "s.pt"), "--expand", value]) == 2
        assert "--expand must be a number in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_a_type_scorer_gives_the_probability_that_a_cell_has_the_references_type():
    from percs.model.instance import TypeScorer

    torch.manual_seed(0)
    scorer = TypeScorer(2, 8, 3, classes=3).eval()
    scorer.mean.normal_()
    scorer.scale.uniform_(0.5, 2.0)
    cells, descriptors = torch.randn(5, 2, 8), torch.randn(5, 3)
    reference, reference_descriptors = torch.randn(2, 8), torch.randn(3)
    with torch.no_grad():
        logits = scorer(cells, reference, descriptors, reference_descriptors)
        # the oracle: softmax of the standardised features through the linear layer, posteriors dotted
        features = torch.cat((cells.flatten(1), descriptors), 1)
        ref_features = torch.cat((reference.flatten(), reference_descriptors))[None]
        weight, bias = scorer.linear.weight, scorer.linear.bias
        cell_types = torch.softmax((features - scorer.mean) / scorer.scale @ weight.T + bias, 1)
        ref_types = torch.softmax((ref_features - scorer.mean) / scorer.scale @ weight.T + bias, 1)
        same = cell_types @ ref_types[0]
        torch.testing.assert_close(torch.sigmoid(logits), same)
        # one reference per cell (N, L, C) gives the same as the shared one
        torch.testing.assert_close(scorer(cells, reference.expand(5, -1, -1), descriptors,
                                          reference_descriptors.expand(5, -1)), logits)
        torch.testing.assert_close(scorer(cells[:1], cells[0], descriptors[:1], descriptors[0]),
                                   torch.logit((cell_types[0] ** 2).sum()[None]))
    # several positives: their posteriors averaged into one type reading (not the best of their logits)
    others = [(torch.randn(2, 8), torch.randn(3)) for _ in range(2)]
    positives = [(reference, reference_descriptors)] + others
    with torch.no_grad():
        read = torch.stack([torch.softmax(scorer.type_logits(v[None], d[None]), -1)[0] for v, d in positives]).mean(0)
        pooled = scorer.pooled_logits(cells, descriptors, positives)
        torch.testing.assert_close(torch.sigmoid(pooled), cell_types @ read)
        instance = InstanceScorer(small_backbone(), scorer, (1, 2), "window", threshold=0.3)
        probability, keep = instance.decide(cells, descriptors, positives)
        torch.testing.assert_close(probability, torch.sigmoid(pooled))
        assert keep.tolist() == (torch.sigmoid(pooled) >= 0.3).tolist()
        single, _ = instance.decide(cells, descriptors, positives[:1])        # one positive: the plain logit
        torch.testing.assert_close(single, torch.sigmoid(logits))
    with pytest.raises(ValueError, match=r"expected \(N, 2, 8\)"):
        scorer(torch.randn(5, 3, 8), reference, descriptors, reference_descriptors)
    with pytest.raises(ValueError, match="classes must be at least 2"):
        TypeScorer(2, 8, 3, classes=1)


def test_the_types_objective_fits_a_classifier_of_every_train_cell_and_attaches_as_a_scorer(tmp_path, monkeypatch):
    from percs.api import Segmenter, load_model
    from percs.model.instance import TypeScorer
    from percs.train.scorer import attach_scorer, collect_type_cells, fit_type_scorer

    bench = make_benchmark(tmp_path)
    generic = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    backbone = load_model(generic, "cpu")[0].backbone
    settings = ScorerTraining(layers=(1,), objective="types", context_window=3.0)
    from percs.data.format import load_dataset

    dataset = load_dataset(bench)
    images = collect_type_cells(dataset, backbone, settings, progress=False)
    records = dataset.in_split("train")
    assert len(images) == len(records)
    assert [len(i["types"]) for i in images] == [r.n_instances for r in records]
    assert images[0]["types"] == [records[0].type_of(c) for c in range(1, records[0].n_instances + 1)]
    assert images[0]["cells"].shape == (records[0].n_instances, 2, 32)        # its window, then the context window

    scorer, classes = fit_type_scorer(images, settings)
    assert isinstance(scorer, TypeScorer) and classes == sorted({t for i in images for t in i["types"]})
    vectors = torch.cat([i["cells"] for i in images]).float()
    descriptors = torch.cat([i["descriptors"] for i in images])
    truth = torch.tensor([classes.index(t) for i in images for t in i["types"]])
    with torch.no_grad():
        accuracy = (scorer.type_logits(vectors, descriptors).argmax(1) == truth).float().mean()
        standardised = (scorer.features(vectors, descriptors) - scorer.mean) / scorer.scale
    assert accuracy > 0.9                                   # red and green disks: the classifier learns the colours
    torch.testing.assert_close(standardised.mean(0), torch.zeros(standardised.shape[1]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least two cell types"):
        fit_type_scorer([dict(images[0], types=["a"] * len(images[0]["types"]))], settings)

    # as a scorer file it loads, attaches and decides as a CellScorer does
    path = tmp_path / "types.pt"
    save_scorer(path, scorer, settings, "vits14", {"dataset": "tiny"}, 0.0, backbone_fingerprint(backbone), classes)
    loaded, record = load_scorer(path)
    assert isinstance(loaded, TypeScorer) and record["classes"] == classes
    assert record["settings"]["objective"] == "types"
    with torch.no_grad():
        torch.testing.assert_close(loaded(vectors, vectors[0], descriptors, descriptors[0]),
                                   scorer(vectors, vectors[0], descriptors, descriptors[0]))
    attach_scorer(generic, path, 0.5, tmp_path / "model.pt")
    segmenter = Segmenter.from_checkpoint(tmp_path / "model.pt", "cpu")
    assert isinstance(segmenter.instance.scorer, TypeScorer)
    image, red, _ = red_and_green_disks()
    result = segmenter.segment(image, segmenter.reference(image, labels=red, label=1))
    assert result.cell_probability.shape == (int(result.labels.max()),)
    # train_scorer: the cells embedded (or read from its cache) and fitted, the file records what it learned
    import percs.model.backbone_weights as backbone_weights
    from percs.train.scorer import train_scorer

    monkeypatch.setattr(backbone_weights, "load_backbone", lambda name, weights: backbone)
    for _ in range(2):                                          # the second run reads the cache the first wrote
        train_scorer(bench, None, tmp_path / "trained.pt", settings, cache=tmp_path / "cells.pt")
        trained, record = load_scorer(tmp_path / "trained.pt")
        assert record["classes"] == classes and record["trained_on"]["images"] == len(records)
        assert record["trained_on"]["cells"] == len(truth) and sum(record["trained_on"]["types"].values()) == len(truth)
        for name, tensor in scorer.state_dict().items():
            torch.testing.assert_close(trained.state_dict()[name], tensor)
    assert (tmp_path / "cells.pt").is_file()
    torch.save([{"cells": torch.zeros(1, 1, 32)}], tmp_path / "pairs.pt")     # a pairs cache: no types
    with pytest.raises(ValueError, match="does not hold typed cells"):
        train_scorer(bench, None, tmp_path / "trained.pt", settings, cache=tmp_path / "pairs.pt")
    with pytest.raises(ValueError, match="does not match objective 'pairs'"):
        save_scorer(tmp_path / "bad.pt", scorer, ScorerTraining(layers=(1,)), "vits14", {}, 0.0, "f", classes)
    with pytest.raises(ValueError, match="classes must name the TypeScorer's"):
        save_scorer(tmp_path / "bad.pt", scorer, settings, "vits14", {}, 0.0, "f", classes[:1])
    with pytest.raises(ValueError, match="objective must be one of"):
        ScorerTraining(objective="classes")
    with pytest.raises(ValueError, match="tune_blocks must be 0"):
        ScorerTraining(objective="types", tune_blocks=1)
    with pytest.raises(ValueError, match="type_l2 must be"):
        ScorerTraining(objective="types", type_l2=-1.0)


@pytest.mark.parametrize("embedding", ["window", "patch"])
def test_cell_flips_average_each_cells_vectors_over_the_four_flips_and_do_not_see_a_flip(embedding):
    from percs.model.instance import FLIP_VIEWS, flipped

    backbone = small_backbone()
    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.normal(size=(3, 56, 70)).astype(np.float32))
    labels = torch.zeros(56, 70, dtype=torch.int64)
    labels[4:14, 6:24], labels[30:50, 40:61], labels[20:27, 2:9] = 3, 1, 7
    plain = InstanceScorer(backbone, None, (2, 3), embedding, window=28, stride=14)
    flips = InstanceScorer(backbone, None, (2, 3), embedding, window=28, stride=14, cell_flips=True)
    assert flips.views == FLIP_VIEWS and plain.views == ((),)
    cells, vectors, descriptors = flips.cells(image, labels)
    views = [plain.cells(flipped(image, dims), flipped(labels, dims)) for dims in FLIP_VIEWS]
    assert cells.tolist() == [1, 3, 7] and all(v[0].tolist() == [1, 3, 7] for v in views)
    torch.testing.assert_close(vectors, torch.stack([v[1] for v in views]).mean(0))
    torch.testing.assert_close(descriptors, views[0][2])
    assert not torch.allclose(vectors, views[0][1], atol=1e-3)        # the views differ: the mean is not one of them
    # the mean over the flips is the same for the image mirrored: the decision no longer depends on orientation
    torch.testing.assert_close(flips.cells(image.flip(-1), labels.flip(-1))[1], vectors, atol=1e-5, rtol=1e-5)
    mask = labels == 1
    reference, reference_descriptors = flips.reference(image, mask)
    manual = [plain.reference(flipped(image, dims), flipped(mask, dims)) for dims in FLIP_VIEWS]
    torch.testing.assert_close(reference, torch.stack([r[0] for r in manual]).mean(0))
    torch.testing.assert_close(reference_descriptors, manual[0][1])
    torch.testing.assert_close(flips.reference(image.flip(-2), mask.flip(-2))[0], reference, atol=1e-5, rtol=1e-5)
    empty = flips.cells(image, torch.zeros_like(labels))
    assert empty[0].numel() == 0 and empty[1].shape == (0, 2, 32)
    with pytest.raises(ValueError, match="cell_flips must be True or False"):
        InstanceScorer(backbone, None, (2, 3), embedding, cell_flips=1)


def test_the_types_objective_with_cell_flips_trains_on_four_views_and_decides_on_their_mean(tmp_path, monkeypatch):
    from percs.api import load_model
    from percs.data.format import load_dataset
    from percs.model.instance import FLIP_VIEWS, flipped
    from percs.predict import as_input_image
    from percs.train.scorer import attach_scorer, collect_type_cells, train_scorer

    bench = make_benchmark(tmp_path)
    generic = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    backbone = load_model(generic, "cpu")[0].backbone
    settings = ScorerTraining(layers=(1,), objective="types", cell_flips=True)
    dataset = load_dataset(bench)
    images = collect_type_cells(dataset, backbone, settings, progress=False)
    record = dataset.in_split("train")[0]
    n = record.n_instances
    assert images[0]["views"] == 4 and images[0]["cells"].shape == (4 * n, 1, 32)
    assert images[0]["types"] == [record.type_of(c) for c in range(1, n + 1)] * 4
    embedder = InstanceScorer(backbone, None, (1,), "window")
    image = as_input_image(dataset.read_image(record), torch.device("cpu"))
    labels = torch.from_numpy(dataset.read_labels(record).astype("int64"))
    for k, dims in enumerate(FLIP_VIEWS):                 # view k: the cells of the image flipped along dims
        _, vectors, descriptors = embedder.cells(flipped(image, dims), flipped(labels, dims))
        torch.testing.assert_close(images[0]["cells"][k * n:(k + 1) * n], vectors.half())
        torch.testing.assert_close(images[0]["descriptors"][k * n:(k + 1) * n], descriptors)

    import percs.model.backbone_weights as backbone_weights

    monkeypatch.setattr(backbone_weights, "load_backbone", lambda name, weights: backbone)
    train_scorer(bench, None, tmp_path / "flips.pt", settings, cache=tmp_path / "cells.pt")
    scorer, saved = load_scorer(tmp_path / "flips.pt")
    cells = sum(r.n_instances for r in dataset.in_split("train"))
    assert saved["settings"]["cell_flips"] is True
    assert saved["trained_on"]["views"] == 4 and saved["trained_on"]["cells"] == cells
    assert sum(saved["trained_on"]["types"].values()) == cells
    with pytest.raises(ValueError, match="another number of flips"):    # a one-view cache for a four-view fit
        train_scorer(bench, None, tmp_path / "one.pt", ScorerTraining(layers=(1,), objective="types"),
                     cache=tmp_path / "cells.pt")
    # the reading of one true cell's type, from its first view or its four views' mean, against a loop
    from percs.train.scorer import type_reading

    classes = saved["classes"]
    for mean_views in (False, True):
        reading = type_reading(scorer, classes, images, mean_views)
        assert [r["cells"] for r in reading] == [len(i["types"]) // 4 for i in images]
        for image, got in zip(images, reading):
            m = len(image["types"]) // 4
            views = image["cells"].float().reshape(4, m, 1, 32)
            with torch.no_grad():
                p = torch.softmax(scorer.type_logits(views.mean(0) if mean_views else views[0],
                                                     image["descriptors"][:m]), 1)
            truth = [classes.index(t) for t in image["types"][:m]]
            assert got["right"] == sum(int(p[i].argmax()) == t for i, t in enumerate(truth))
            assert got["log_loss"] == pytest.approx(-sum(float(torch.log(p[i, t])) for i, t in enumerate(truth)),
                                                    rel=1e-4)
    with pytest.raises(ValueError, match="not \\['nucleus'\\]"):
        type_reading(scorer, classes, [dict(images[0], types=["nucleus"] * len(images[0]["types"]))], True)
    attach_scorer(generic, tmp_path / "flips.pt", 0.5, tmp_path / "model.pt")
    model, _ = load_model(tmp_path / "model.pt", "cpu")
    assert model.instance.cell_flips is True                  # the attached model decides on the four views' mean
    with pytest.raises(ValueError, match="cell_flips applies to objective 'types'"):
        ScorerTraining(cell_flips=True)


def test_train_scorer_refuses_cell_flips_without_the_types_objective(tmp_path, capsys):
    from percs.cli import main

    bench = make_benchmark(tmp_path)
    assert main(["train-scorer", "--data", str(bench), "--out", str(tmp_path / "s.pt"), "--cell-flips"]) == 2
    assert "--cell-flips applies to --objective types" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
