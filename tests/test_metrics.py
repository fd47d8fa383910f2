"""percs.metrics (label_overlaps, match_overlaps, evaluate) against the NumPy/SciPy references, properties,
real label images, input errors, and the CUDA path (skipped without a GPU)."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.draw import disk

from conftest import real_label_images, requires_cuda
from percs import _metrics_cuda
from percs import metrics as M
from percs.reference import metrics as R
from percs.synthetic_labels import touching_cells

SHAPES = [(0, 0), (1, 1), (1, 7), (9, 1), (13, 17), (32, 32), (41, 23)]
THRESHOLDS = (0.1, 0.3, 1 / 3, 0.5, 0.7, 0.9)


def perturbed(labels: np.ndarray, seed: int, shift: int = 2, drop: float = 0.05) -> np.ndarray:
    """labels shifted by `shift` px along a random axis, with a fraction `drop` of the labels removed."""
    rng = np.random.default_rng(seed)
    out = np.roll(labels, shift * int(rng.choice([-1, 1])), axis=int(rng.integers(0, 2)))
    present = np.unique(out[out > 0])
    dropped = rng.choice(present, size=round(drop * len(present)), replace=False)
    out[np.isin(out, dropped)] = 0
    return out


def random_pair(shape, seed):
    """A random true label image and a prediction: shifted, some cells dropped, merged or split, relabelled."""
    rng = np.random.default_rng(seed)
    H, W = shape
    n = int(rng.integers(0, max(1, H * W // 30) + 1))
    true = touching_cells(shape, n, float(rng.uniform(1.5, 7)), seed)
    pred = perturbed(true, seed, shift=int(rng.integers(0, 3)), drop=float(rng.uniform(0, 0.3)))
    if rng.random() < 0.5 and pred.size:  # split every cell along a random row parity
        pred = np.where((np.arange(H)[:, None] % 2 == 1) & (pred > 0), pred + 10_000, pred)
    if rng.random() < 0.3 and pred.size:  # merge neighbouring labels
        pred = (pred + 1) // 2
    return true, shuffled(pred, seed) if rng.random() < 0.5 else pred


def shuffled(labels: np.ndarray, seed: int, max_label: int = 2**31 - 1) -> np.ndarray:
    """The same masks under random distinct labels in [1, max_label] (any input labels; 0 stays 0)."""
    values, inverse = np.unique(labels, return_inverse=True)
    new = np.random.default_rng(seed).choice(max_label, size=len(values), replace=False) + 1
    new[values == 0] = 0
    return new[inverse].reshape(labels.shape)


def assert_overlaps_equal(overlaps: M.Overlaps, expected: dict) -> None:
    for name, value in expected.items():
        np.testing.assert_array_equal(getattr(overlaps, name), value, err_msg=name)


def assert_stats_match_reference(stats, expected) -> None:
    for s, e in zip(stats, expected, strict=True):
        assert (s.tp, s.fp, s.fn) == (e["tp"], e["fp"], e["fn"])
        assert s.matched_iou_sum == pytest.approx(e["matched_iou_sum"], abs=1e-9)
        for scope in ("pooled", "image_mean"):
            for name, value in e[scope].items():
                assert getattr(getattr(s, scope), name) == pytest.approx(value, abs=1e-12), (scope, name)


# ---------------------------------------------------------------- label_overlaps


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_label_overlaps_matches_reference(shape, seed):
    true, pred = random_pair(shape, seed)
    assert_overlaps_equal(M.label_overlaps(true, pred), R.label_overlaps([true], [pred]))


def test_label_overlaps_batch_of_mixed_shapes_and_dtypes():
    pairs = [random_pair(shape, seed) for seed, shape in enumerate(SHAPES)]
    dtypes = [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32, np.uint64]
    true = [t.astype(dtypes[b % len(dtypes)]) if t.max(initial=0) < 200 else t for b, (t, _) in enumerate(pairs)]
    pred = [p.astype(np.int64) for _, p in pairs]
    expected = R.label_overlaps([t for t, _ in pairs], [p for _, p in pairs])
    assert_overlaps_equal(M.label_overlaps(true, pred), expected)
    assert_overlaps_equal(M.label_overlaps([torch.from_numpy(t) for t in true], pred), expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_label_overlaps_take_dtypes_equal_to_native_ones(dtype):
    """A dtype object equal to a native one but not it (as Zarr's readers make: '<i4' spelled out) is read."""
    true, pred = random_pair((20, 30), 3)
    spelled = np.dtype(dtype).newbyteorder("<")
    assert spelled == np.dtype(dtype) and spelled is not np.dtype(dtype)
    expected = R.label_overlaps([true], [pred])
    assert_overlaps_equal(M.label_overlaps(true.astype(dtype).view(spelled), pred.astype(dtype).view(spelled)), expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint64])
def test_label_overlaps_huge_labels_and_gaps(dtype):
    true, pred = random_pair((40, 30), 7)
    top = np.iinfo(np.int32).max if dtype == np.int32 else 2**62
    huge_true = shuffled(true, 1, max_label=top).astype(dtype)
    huge_pred = shuffled(pred, 2, max_label=top).astype(dtype)
    overlaps = M.label_overlaps(huge_true, huge_pred)
    assert_overlaps_equal(overlaps, R.label_overlaps([huge_true.astype(np.int64)], [huge_pred.astype(np.int64)]))
    edge = np.array([[0, top]], dtype)
    assert M.label_overlaps(edge, edge).true_labels.tolist() == [top]


def test_overlaps_from_counts_matches_label_overlaps():
    """The CUDA path's host assembly, fed the (image, true, pred, count) rows its kernels produce."""
    pairs = [random_pair(shape, seed) for seed, shape in enumerate(SHAPES * 2)]
    rows = []
    for b, (true, pred) in enumerate(pairs):
        keys, counts = np.unique(np.stack([true.ravel(), pred.ravel()]), axis=1, return_counts=True)
        keep = (keys[0] > 0) | (keys[1] > 0)
        rows.append(np.stack([np.full(keep.sum(), b), keys[0][keep], keys[1][keep], counts[keep]]))
    rows = np.concatenate(rows, axis=1)[:, np.random.default_rng(0).permutation(sum(r.shape[1] for r in rows))]
    got = _metrics_cuda.overlaps_from_counts(*rows, n_images=len(pairs))
    assert_overlaps_equal(M.Overlaps(**got), R.label_overlaps(*zip(*pairs)))


def test_launch_groups_split_by_shape_and_table_memory(monkeypatch):
    monkeypatch.setattr(_metrics_cuda, "MAX_SLOTS_PER_LAUNCH", 3 * _metrics_cuda.table_capacity(16))
    images = [torch.zeros(s) for s in [(4, 4)] * 5 + [(2, 8), (2, 8), (4, 4)]]
    assert _metrics_cuda._launch_groups(images) == [(0, 3), (3, 5), (5, 7), (7, 8)]
    assert [_metrics_cuda.table_capacity(n) for n in (0, 1, 2, 3, 16)] == [2, 2, 4, 8, 32]


# ---------------------------------------------------------------- match_overlaps


def as_array(values) -> np.ndarray:
    return np.asarray(list(values), np.int64)


@st.composite
def overlap_graphs(draw):
    """Overlaps arrays of one image with arbitrary small areas (many exact IoU ties, e.g. 1/2, 1/3)."""
    n_true, n_pred = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    true_areas = draw(st.lists(st.integers(1, 12), min_size=n_true, max_size=n_true))
    pred_areas = draw(st.lists(st.integers(1, 12), min_size=n_pred, max_size=n_pred))
    cells = [(t, p) for t in range(n_true) for p in range(n_pred)]
    pairs = sorted(draw(st.sets(st.sampled_from(cells), max_size=20))) if cells else []
    inter = [draw(st.integers(1, min(true_areas[t], pred_areas[p]))) for t, p in pairs]
    return {"true_labels": as_array(range(1, n_true + 1)), "true_areas": as_array(true_areas),
            "true_offsets": as_array([0, n_true]), "pred_labels": as_array(range(1, n_pred + 1)),
            "pred_areas": as_array(pred_areas), "pred_offsets": as_array([0, n_pred]),
            "pair_true": as_array([t for t, _ in pairs]), "pair_pred": as_array([p for _, p in pairs]),
            "pair_intersection": as_array(inter), "pair_offsets": as_array([0, len(pairs)])}


@settings(max_examples=300, deadline=None)
@given(overlap_graphs(), st.sampled_from(["gt", "ge"]))
def test_match_overlaps_matches_linear_sum_assignment(graph, iou_rule):
    overlaps = M.Overlaps(**graph)
    iou = overlaps.iou()
    thresholds = tuple(sorted(set(THRESHOLDS) | set(iou.tolist()) - {0.0, 1.0}))
    matches = M.match_overlaps(overlaps, thresholds, iou_rule=iou_rule)
    tp, matched_iou = R.match_overlaps(graph, thresholds, iou_rule)
    np.testing.assert_array_equal(matches.tp, tp)
    np.testing.assert_allclose(matches.matched_iou, matched_iou, rtol=0, atol=1e-9)
    for k, t in enumerate(thresholds):  # the flags form a matching of passing pairs with those totals
        chosen = matches.matched[:, k]
        assert np.all((iou[chosen] > t) if iou_rule == "gt" else (iou[chosen] >= t))
        assert len(set(overlaps.pair_true[chosen])) == len(set(overlaps.pair_pred[chosen])) == chosen.sum() == tp[0, k]
        assert iou[chosen].sum() == pytest.approx(matches.matched_iou[0, k], abs=1e-12)


def test_match_overlaps_exact_half_split():
    """A cell split into two halves: IoU exactly 1/2 with both, a tie that only '>=' counts."""
    true = np.zeros((4, 8), np.int32)
    true[:, 2:6] = 7
    pred = np.where(np.arange(8) < 4, 1, 2) * (true > 0)
    ge, gt = M.evaluate(true, pred, 0.5, iou_rule="ge")[0], M.evaluate(true, pred, 0.5, iou_rule="gt")[0]
    assert (ge.tp, ge.fp, ge.fn, ge.pooled.mean_matched_iou) == (1, 1, 0, 0.5)
    assert (gt.tp, gt.fp, gt.fn) == (0, 2, 1)


def test_match_overlaps_checks_its_input():
    overlaps = M.label_overlaps(*random_pair((20, 20), 3))
    bad = overlaps.as_dict() | {"pair_intersection": overlaps.pair_intersection + 1000}
    with pytest.raises(ValueError, match="overlaps.pair_intersection"):
        M.match_overlaps(M.Overlaps(**bad))
    bad = overlaps.as_dict() | {"pair_offsets": overlaps.pair_offsets[:1]}
    with pytest.raises(ValueError, match="overlaps.pair_offsets"):
        M.match_overlaps(M.Overlaps(**bad))


# ---------------------------------------------------------------- evaluate


@pytest.mark.parametrize("iou_rule", ["gt", "ge"])
@pytest.mark.parametrize("seed", range(8))
def test_evaluate_matches_reference(seed, iou_rule):
    pairs = [random_pair(shape, 100 * seed + k) for k, shape in enumerate(SHAPES[1:])]
    true, pred = [t for t, _ in pairs], [p for _, p in pairs]
    stats = M.evaluate(true, pred, THRESHOLDS, iou_rule=iou_rule)
    assert_stats_match_reference(stats, R.evaluate(true, pred, THRESHOLDS, iou_rule))
    for s in stats:
        assert s.tp + s.fn == s.n_true and s.tp + s.fp == s.n_pred
        assert np.all(s.image_tp + s.image_fn == [len(np.unique(t[t > 0])) for t in true])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 40))
def test_evaluate_ignores_label_values(seed, H, W):
    true, pred = random_pair((H, W), seed)
    stats = M.evaluate(true, pred, THRESHOLDS)
    relabelled = M.evaluate(shuffled(true, seed + 1), shuffled(pred, seed + 2), THRESHOLDS)
    for a, b in zip(stats, relabelled):  # IoU sums may differ in the last bit: they add in label order
        assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn)
        assert astuple(a.pooled) == pytest.approx(astuple(b.pooled), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_evaluate_image_against_itself_is_perfect(seed):
    true, _ = random_pair((50, 60), seed)
    n = len(np.unique(true[true > 0]))
    for s in M.evaluate(true, true, (0.0, 0.5, 0.99), iou_rule="gt") + M.evaluate(true, true, 1.0, iou_rule="ge"):
        assert (s.tp, s.fp, s.fn) == (n, 0, 0)
        assert s.pooled == M.Scores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("shift", [0, 3, 8, 15, 25])
def test_shifted_disks_have_the_iou_geometry_predicts(shift):
    radius = 40
    true, pred = np.zeros((2, 120, 160), np.int32)
    true[disk((60, 60), radius)] = 1
    pred[disk((60, 60 + shift), radius)] = 5
    half = shift / (2 * radius)
    lens = 2 * radius**2 * (math.acos(half) - half * math.sqrt(1 - half**2))
    expected = lens / (2 * math.pi * radius**2 - lens)
    below, above = M.evaluate(true, pred, (expected - 0.02, min(expected + 0.02, 0.999)))
    assert below.tp == 1 and below.pooled.mean_matched_iou == pytest.approx(expected, abs=0.01)
    assert above.tp == (1 if shift == 0 else 0)


def test_empty_images_have_defined_scores():
    empty, one = np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32)
    one[2:5, 2:5] = 3
    stats = M.evaluate([empty, one, empty], [empty, empty, one], 0.5)[0]
    assert (stats.tp, stats.fp, stats.fn) == (0, 1, 1)
    assert stats.pooled == M.Scores(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert astuple(stats.image_mean) == pytest.approx((1 / 3,) * 6)
    assert M.evaluate(empty, empty, 0.5)[0].pooled == M.Scores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert M.evaluate(np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32))[0].pooled.ap == 1.0


def test_evaluate_on_torch_tensors_and_batches():
    pairs = [random_pair((30, 30), seed) for seed in range(5)]
    true, pred = np.stack([t for t, _ in pairs]), np.stack([p for _, p in pairs])
    expected = M.evaluate(list(true), list(pred))
    for t, p in [(true, pred), (torch.from_numpy(true), torch.from_numpy(pred).long())]:
        assert [(s.tp, s.fp, s.fn) for s in M.evaluate(t, p)] == [(s.tp, s.fp, s.fn) for s in expected]


# ---------------------------------------------------------------- real label images


@pytest.fixture(scope="module")
def real_pairs():
    images = real_label_images("cellpose_styles", "dsb2018_stage1_test", "consep", "stardist_sample")
    return [(name, true, perturbed(true, seed=0)) for name, true in images]


def test_real_images_match_reference(real_pairs):
    # Every image through percs; the dense reference on every 4th (it is ~100x slower).
    subset = real_pairs[::4]
    true, pred = [t for _, t, _ in subset], [p for _, _, p in subset]
    for iou_rule in ("gt", "ge"):
        assert_stats_match_reference(M.evaluate(true, pred, THRESHOLDS, iou_rule=iou_rule),
                                     R.evaluate(true, pred, THRESHOLDS, iou_rule))
    stats = M.evaluate([t for _, t, _ in real_pairs], [p for _, _, p in real_pairs], (0.3, 0.5))
    assert stats[0].n_true > 30_000 and 0 < stats[1].tp <= stats[0].tp < stats[0].n_pred


def test_real_images_against_themselves_are_perfect(real_pairs):
    true = [t for _, t, _ in real_pairs]
    for s in M.evaluate(true, true, (0.5, 0.9)):
        assert s.fp == s.fn == 0 and s.pooled.ap == 1.0


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "true, pred, message",
    [
        (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), r"pred_labels\[0\] has shape \(4, 5\)"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), r"true_labels\[0\] must have an integer dtype"),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), bool), r"pred_labels\[0\] must have an integer dtype"),
        (np.zeros((4, 4), np.int32), -np.ones((4, 4), np.int32), r"pred_labels\[0\] has negative labels"),
        ([np.zeros((2, 2), np.int8)] * 2, [np.zeros((2, 2), np.int8), -np.ones((2, 2), np.int8)],
         r"pred_labels\[1\] has negative labels"),
        (-np.ones((3, 4), np.int64), np.zeros((3, 4), np.int64), r"true_labels\[0\] has negative labels"),
        ([np.zeros((2, 2), np.int32)] * 2, [np.zeros((2, 2), np.int32)], "pred_labels has 1 images, true_labels has 2"),
        (np.zeros((2, 2, 2, 2), np.int32), np.zeros((2, 2, 2, 2), np.int32), "true_labels has 4 dims"),
        ([], [], "true_labels has no images"),
        ([np.zeros((2, 2), np.int32)], [[[0, 0], [0, 0]]], r"pred_labels\[0\] must be a NumPy array"),
        (np.full((2, 2), 2**63, np.uint64), np.zeros((2, 2), np.uint64), r"true_labels\[0\] has labels beyond"),
    ],
)
def test_evaluate_input_errors(true, pred, message):
    with pytest.raises((ValueError, TypeError), match=message):
        M.evaluate(true, pred)


@pytest.mark.parametrize(
    "thresholds, iou_rule, message",
    [((0.5,), "gte", "iou_rule must be"), ((), "gt", "thresholds is empty"), ((1.0,), "gt", r"in \[0, 1\)"),
     ((0.0,), "ge", r"in \(0, 1\]"), ((float("nan"),), "gt", "thresholds must be in"), (("a",), "gt", "numbers")],
)
def test_evaluate_threshold_errors(thresholds, iou_rule, message):
    with pytest.raises((ValueError, TypeError), match=message):
        M.evaluate(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), thresholds, iou_rule=iou_rule)


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@requires_cuda
def test_cuda_label_overlaps_equal_cpu():
    pairs = [random_pair(shape, seed) for seed, shape in enumerate(SHAPES * 3)]
    pairs.append(tuple(shuffled(x, 5) for x in random_pair((64, 48), 5)))  # labels up to 2^31 - 1
    true = [torch.from_numpy(t.astype(np.int64)).cuda() for t, _ in pairs]
    pred = [torch.from_numpy(p.astype(np.int32)).cuda() for _, p in pairs]
    assert_overlaps_equal(M.label_overlaps(true, pred), M.label_overlaps(*zip(*pairs)).as_dict())


@pytest.mark.cuda
@requires_cuda
def test_cuda_evaluate_batch_equals_cpu():
    pairs = [random_pair((96, 80), seed) for seed in range(9)]
    true, pred = np.stack([t for t, _ in pairs]), np.stack([p for _, p in pairs])
    cpu = M.evaluate(true, pred, THRESHOLDS, iou_rule="ge")
    gpu = M.evaluate(torch.from_numpy(true).cuda(), torch.from_numpy(pred).cuda(), THRESHOLDS, iou_rule="ge")
    for a, b in zip(cpu, gpu):
        assert (a.tp, a.fp, a.fn, a.matched_iou_sum, a.pooled) == (b.tp, b.fp, b.fn, b.matched_iou_sum, b.pooled)


@pytest.mark.cuda
@requires_cuda
def test_cuda_input_errors():
    ok = torch.zeros((4, 4), dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=r"pred_labels\[0\] has negative labels"):
        M.evaluate(ok, -torch.ones_like(ok))
    with pytest.raises(ValueError, match=r"true_labels\[0\] has labels >= 2\^31"):
        M.evaluate(torch.full((4, 4), 2**40, device="cuda"), ok)
    with pytest.raises(ValueError, match=r"pred_labels\[0\] is on another device"):
        M.evaluate(ok, ok.cpu())
