"""percs.flows kernels (C++ CPU backend) against the NumPy references, properties and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.draw import disk, ellipse

from percs import flows as F
from percs.reference import flows as R
from percs.synthetic_labels import scramble_labels, touching_cells

SHAPES = [(1, 1), (1, 7), (9, 1), (13, 17), (32, 32), (41, 23)]


def random_labels(shape, seed, density=0.6):
    H, W = shape
    rng = np.random.default_rng(seed)
    n = max(1, int(H * W * density / 40))
    return touching_cells(shape, int(rng.integers(0, n + 1)), float(rng.uniform(1, 6)), seed)


@st.composite
def label_images(draw, max_side=24):
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    return random_labels((H, W), seed)


# ---------------------------------------------------------------- masks_to_flows

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(4))
def test_masks_to_flows_matches_reference(shape, seed):
    labels = random_labels(shape, seed)
    np.testing.assert_allclose(F.masks_to_flows(labels), R.masks_to_flows(labels), rtol=0, atol=1e-6)


def mirror_symmetric_cells():
    """Label images of one cell symmetric about its centre row, column and diagonal (and an odd rectangle)."""
    cells = []
    for radius in (1, 2, 3, 5, 8):
        labels = np.zeros((2 * radius + 5, 2 * radius + 5), np.int32)
        labels[disk((radius + 2, radius + 2), radius + 0.5, shape=labels.shape)] = 1
        cells.append(labels)
    diamond = np.zeros((11, 11), np.int32)
    yy, xx = np.mgrid[:11, :11]
    diamond[np.abs(yy - 5) + np.abs(xx - 5) <= 4] = 3
    rectangle = np.zeros((9, 13), np.int32)
    rectangle[1:8, 2:11] = 7
    return cells + [diamond, rectangle]


@pytest.mark.parametrize("index", range(len(mirror_symmetric_cells())))
def test_symmetric_cell_has_exactly_zero_flow_at_its_centre(index):
    # The stencil sums in mirror-symmetric pairs, so the temperatures are exactly symmetric and the centre's
    # gradient is exactly 0 whatever log1p rounds to (NumPy's AVX-512 log1p and glibc's differ in the last bit).
    labels = mirror_symmetric_cells()[index]
    ys, xs = np.nonzero(labels)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    for flows in (F.masks_to_flows(labels), R.masks_to_flows(labels)):
        assert flows[:, cy, cx].tolist() == [0.0, 0.0]
        # Mirror images of the cell give exactly mirrored flows.
        np.testing.assert_array_equal(flows[0, ::-1], -flows[0])
        np.testing.assert_array_equal(flows[1, :, ::-1], -flows[1])


@settings(max_examples=40, deadline=None)
@given(label_images())
def test_masks_to_flows_unit_inside_zero_outside(labels):
    flows = F.masks_to_flows(labels)
    norm = np.sqrt((flows.astype(np.float64) ** 2).sum(0))
    assert np.all(norm[labels == 0] == 0)
    inside = norm[labels > 0]
    assert np.all((np.abs(inside - 1) < 1e-5) | (inside == 0))


@settings(max_examples=25, deadline=None)
@given(label_images(), st.integers(0, 1000))
def test_masks_to_flows_ignores_label_values(labels, seed):
    np.testing.assert_array_equal(F.masks_to_flows(labels), F.masks_to_flows(scramble_labels(labels, seed)))


def test_masks_to_flows_each_cell_alone():
    labels = touching_cells((48, 40), 12, 7, seed=3)
    alone = sum(F.masks_to_flows(np.where(labels == k, 1, 0)) for k in range(1, labels.max() + 1))
    np.testing.assert_array_equal(F.masks_to_flows(labels), alone)


def test_masks_to_flows_points_to_centre_of_disk():
    labels = np.zeros((41, 41), np.int32)
    labels[disk((20, 20), 15)] = 1
    flows = F.masks_to_flows(labels)
    ys, xs = np.nonzero(labels)
    away = np.hypot(ys - 20, xs - 20) > 3
    ys, xs = ys[away], xs[away]
    towards = -((ys - 20) * flows[0, ys, xs] + (xs - 20) * flows[1, ys, xs]) / np.hypot(ys - 20, xs - 20)
    assert towards.min() > 0.9


def test_masks_to_flows_batch_equals_single_images():
    batch = np.stack([random_labels((20, 30), s) for s in range(3)])
    expected = np.stack([F.masks_to_flows(image) for image in batch])
    np.testing.assert_array_equal(F.masks_to_flows(batch), expected)


def test_masks_to_flows_tensor_in_tensor_out():
    labels = random_labels((16, 16), 1)
    out = F.masks_to_flows(torch.from_numpy(labels))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), F.masks_to_flows(labels))


def test_masks_to_flows_empty_and_background():
    assert F.masks_to_flows(np.zeros((0, 5), np.int32)).shape == (2, 0, 5)
    assert not F.masks_to_flows(np.zeros((7, 5), np.uint16)).any()
    assert not F.masks_to_flows(np.ones((1, 1), np.int64)).any()  # a one-pixel cell has no gradient


# ---------------------------------------------------------------- follow_flows

def random_unit_flows(shape, seed):
    rng = np.random.default_rng(seed)
    flows = rng.normal(size=(2, *shape)).astype(np.float32)
    return flows / np.maximum(np.sqrt((flows**2).sum(0)), 1e-3)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_follow_flows_matches_reference(shape, seed):
    flows = random_unit_flows(shape, seed)
    rng = np.random.default_rng(seed)
    points = (rng.uniform(size=(50, 2)) * (np.array(shape) - 1)).astype(np.float32)
    np.testing.assert_array_equal(F.follow_flows(flows, points, 30), R.follow_flows(flows, points, 30))


def test_follow_flows_on_mask_flows_matches_reference():
    labels = touching_cells((40, 50), 15, 8, seed=5)
    flows = F.masks_to_flows(labels)
    points = np.argwhere(labels > 0).astype(np.float32)
    np.testing.assert_array_equal(F.follow_flows(flows, points, 200), R.follow_flows(flows, points, 200))


def test_zero_flow_leaves_points_in_place():
    points = np.array([[0, 0], [3.25, 4.5], [6, 8]], np.float32)
    np.testing.assert_array_equal(F.follow_flows(np.zeros((2, 7, 9), np.float32), points, 50), points)


def test_constant_flow_moves_and_clamps():
    flows = np.zeros((2, 10, 30), np.float32)
    flows[1] = 0.5
    ends = F.follow_flows(flows, np.array([[2.0, 1.0], [5.0, 25.0]], np.float32), 8)
    np.testing.assert_allclose(ends, [[2.0, 5.0], [5.0, 29.0]])


# ---------------------------------------------------------------- get_masks

def clustered_endpoints(shape, seed):
    """End points gathered around a few random attractors, with stray points."""
    rng = np.random.default_rng(seed)
    H, W = shape
    n_points = int(rng.integers(0, H * W + 1))
    pixel_index = rng.choice(H * W, n_points, replace=False).astype(np.int64)
    attractors = rng.uniform(size=(int(rng.integers(1, 6)), 2)) * (np.array(shape) - 1)
    ends = attractors[rng.integers(0, len(attractors), n_points)] + rng.normal(scale=rng.uniform(0, 3), size=(n_points, 2))
    ends = np.clip(ends, 0, np.array(shape) - 1).astype(np.float32)
    return ends, pixel_index


@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (30, 30), (64, 48)])
@pytest.mark.parametrize("seed", range(6))
def test_get_masks_matches_reference(shape, seed):
    ends, pixel_index = clustered_endpoints(shape, seed)
    for fraction in (0.4, 0.05):
        got = F._backend.cpu.get_masks(ends, pixel_index, *shape, F.SEED_MIN_COUNT, F.GROW_MIN_COUNT, fraction)
        np.testing.assert_array_equal(got, R.get_masks(ends, pixel_index, shape, max_size_fraction=fraction))


def test_get_masks_output_is_canonical():
    ends, pixel_index = clustered_endpoints((64, 64), 11)
    got = F._backend.cpu.get_masks(ends, pixel_index, 64, 64, 10, 2, 0.4)
    np.testing.assert_array_equal(got, R.canonical(got))


# ---------------------------------------------------------------- flow_error

@pytest.mark.parametrize("seed", range(5))
def test_flow_error_matches_reference(seed):
    labels = random_labels((30, 36), seed)
    flows = random_unit_flows((30, 36), seed)
    np.testing.assert_allclose(F.flow_error(labels, flows), R.flow_error(labels, flows), rtol=1e-12, atol=1e-12)


def test_flow_error_of_own_flows_is_zero_and_gaps_give_zero():
    labels = touching_cells((40, 40), 10, 7, seed=2)
    labels[labels == 3] = 0
    errors = F.flow_error(labels, F.masks_to_flows(labels))
    assert errors.shape == (labels.max(),)
    np.testing.assert_allclose(errors, 0, atol=1e-12)


# ---------------------------------------------------------------- fill_holes

def rings(seed):
    rng = np.random.default_rng(seed)
    labels = random_labels((40, 40), seed, density=0.3)
    for label in range(100, 100 + int(rng.integers(1, 4))):
        cy, cx = rng.integers(5, 35, 2)
        r = int(rng.integers(3, 9))
        ring = np.zeros_like(labels, bool)
        ring[disk((cy, cx), r, shape=labels.shape)] = True
        ring[disk((cy, cx), max(r - 2, 1), shape=labels.shape)] = False
        labels[ring] = label
    return labels


@pytest.mark.parametrize("seed", range(10))
def test_fill_holes_matches_reference(seed):
    labels = rings(seed)
    np.testing.assert_array_equal(F.fill_holes(labels), R.fill_holes(labels))


def test_fill_holes_nested_goes_to_inner_mask_and_keeps_others():
    labels = np.zeros((21, 21), np.int32)
    labels[ellipse(10, 10, 9.5, 9.5)] = 1
    labels[ellipse(10, 10, 8, 8)] = 0
    labels[ellipse(10, 10, 5, 5)] = 2
    labels[ellipse(10, 10, 3.5, 3.5)] = 0
    labels[10, 10] = 3
    filled = F.fill_holes(labels)
    assert filled[10, 9] == 2 and filled[10, 10] == 3 and filled[10, 3] == 1
    assert (filled == 0).sum() == (labels == 0).sum() - ((labels == 0) & (filled > 0)).sum()


# ---------------------------------------------------------------- flows_to_masks

def round_trip(labels, **kwargs):
    flows = F.FLOW_SCALE * F.masks_to_flows(labels)
    cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)
    return F.flows_to_masks(flows, cellprob, **kwargs)


def matched_at_half(true, pred):
    """Number of true cells with a predicted mask of IoU > 0.5 (such a match is unique)."""
    pairs, inter = np.unique(true.astype(np.int64) * (pred.max() + 1) + pred, return_counts=True)
    t, p = np.divmod(pairs, pred.max() + 1)
    keep = (t > 0) & (p > 0)
    area_t, area_p = np.bincount(true.ravel()), np.bincount(pred.ravel())
    iou = inter[keep] / (area_t[t[keep]] + area_p[p[keep]] - inter[keep])
    return int((iou > 0.5).sum())


@pytest.mark.parametrize("seed", range(5))
def test_flows_to_masks_round_trip_recovers_labels(seed):
    labels = R.canonical(F.remove_small_masks(touching_cells((96, 80), 25, 9, seed=seed), 15))
    pred = round_trip(labels)
    n = labels.max()
    assert matched_at_half(labels, pred) >= n - 1 and pred.max() <= n + 1


def test_flows_to_masks_round_trip_exact_on_disks():
    labels = np.zeros((70, 90), np.int32)
    for k, (cy, cx, r) in enumerate([(15, 15, 10), (20, 40, 12), (50, 30, 14), (45, 70, 15)], start=1):
        labels[disk((cy, cx), r, shape=labels.shape)] = k
    np.testing.assert_array_equal(round_trip(labels), R.canonical(labels))


@pytest.mark.parametrize("seed", range(5))
def test_flows_to_masks_matches_reference_chain(seed):
    rng = np.random.default_rng(seed)
    labels = touching_cells((64, 72), 14, 8, seed=seed)
    flows = F.FLOW_SCALE * F.masks_to_flows(labels) + rng.normal(scale=1.0, size=(2, 64, 72)).astype(np.float32)
    cellprob = rng.normal(size=(64, 72)).astype(np.float32) + np.where(labels > 0, 2, -2)
    got = F.flows_to_masks(flows, cellprob, min_size=5)
    unit = flows / np.float32(F.FLOW_SCALE)
    pixel_index = np.flatnonzero(cellprob > 0)
    points = np.stack(np.divmod(pixel_index, 72), axis=1).astype(np.float32)
    masks = R.get_masks(R.follow_flows(unit, points, 200), pixel_index, (64, 72))
    errors = R.flow_error(masks, unit)
    masks[np.isin(masks, np.flatnonzero(errors > 0.4) + 1)] = 0
    sizes = np.bincount(masks.ravel())
    masks[np.isin(masks, np.flatnonzero(sizes < 5)) & (masks > 0)] = 0
    np.testing.assert_array_equal(got, R.canonical(R.fill_holes(masks)))


def test_flows_to_masks_tensor_in_tensor_out():
    labels = touching_cells((40, 40), 6, 8, seed=1)
    flows = torch.from_numpy(F.FLOW_SCALE * F.masks_to_flows(labels))
    out = F.flows_to_masks(flows, torch.from_numpy(np.where(labels > 0, 5.0, -5.0).astype(np.float32)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32


def test_flows_to_masks_empty_and_background_images():
    for shape in [(0, 0), (1, 1), (5, 0), (12, 9)]:
        out = F.flows_to_masks(np.zeros((2, *shape), np.float32), np.full(shape, -1.0, np.float32))
        assert out.shape == shape and out.dtype == np.int32 and not out.any()
    one = F.flows_to_masks(np.zeros((2, 1, 1), np.float32), np.ones((1, 1), np.float32), min_size=0)
    assert one.shape == (1, 1)


def test_flow_threshold_drops_masks_with_wrong_flows():
    labels = touching_cells((60, 60), 8, 10, seed=4)
    flows = F.FLOW_SCALE * F.masks_to_flows(labels)
    cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)
    reversed_cell = labels == labels[30, 30]
    bad = flows.copy()
    bad[:, reversed_cell] *= -1  # flows pointing out of a cell do not converge inside it
    kept = F.flows_to_masks(bad, cellprob)
    assert not kept[reversed_cell].any() or F.flow_error(kept, bad / F.FLOW_SCALE).max() <= 0.4
    assert F.flows_to_masks(bad, cellprob, flow_threshold=0.0).max() >= kept.max()


# ---------------------------------------------------------------- input errors

@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.masks_to_flows(np.zeros(5, np.int32)), "labels has 1 dims"),
        (lambda: F.masks_to_flows(np.zeros((3, 3), np.float32)), "labels must have an integer dtype"),
        (lambda: F.masks_to_flows(np.zeros((3, 3), bool)), "labels must have an integer dtype"),
        (lambda: F.masks_to_flows(-np.ones((3, 3), np.int32)), "labels has negative labels"),
        (lambda: F.masks_to_flows([[1, 2]]), "labels"),
        (lambda: F.flows_to_masks(np.zeros((3, 4, 4), np.float32), np.zeros((4, 4), np.float32)), "flows has shape"),
        (lambda: F.flows_to_masks(np.zeros((2, 4, 4), np.float32), np.zeros((4, 5), np.float32)), "cellprob"),
        (lambda: F.flows_to_masks(np.full((2, 4, 4), np.nan, np.float32), np.zeros((4, 4), np.float32)), "flows has non-finite"),
        (lambda: F.flows_to_masks(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.int32)), "cellprob must have a floating"),
        (lambda: F.flows_to_masks(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.float32), niter=-1), "niter"),
        (lambda: F.flows_to_masks(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.float32), min_size=-1), "min_size"),
        (lambda: F.flows_to_masks(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.float32), max_size_fraction=0), "max_size_fraction"),
        (lambda: F.follow_flows(np.zeros((2, 4, 4), np.float32), np.array([[5.0, 0.0]], np.float32)), "points has positions outside"),
        (lambda: F.follow_flows(np.zeros((2, 4, 4), np.float32), np.zeros((3, 3), np.float32)), "points has shape"),
        (lambda: F.flow_error(np.zeros((4, 4), np.int32), np.zeros((2, 4, 5), np.float32)), "unit_flows has shape"),
        (lambda: F.fill_holes(np.zeros((4, 4), np.float64)), "labels must have an integer dtype"),
    ],
)
def test_input_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_kernel_rejects_unrenumbered_labels_and_stray_points():
    with pytest.raises(ValueError, match="labels"):
        F._backend.cpu.masks_to_flows(np.full((1, 2, 2), 99, np.int32))
    with pytest.raises(ValueError, match="endpoints"):
        F._backend.cpu.get_masks(np.array([[7.0, 0.0]], np.float32), np.array([0]), 2, 2, 10, 2, 0.4)
    with pytest.raises(ValueError, match="pixel_index"):
        F._backend.cpu.get_masks(np.array([[0.0, 0.0]], np.float32), np.array([9]), 2, 2, 10, 2, 0.4)


# ---------------------------------------------------------------- property tests (hypothesis), every kernel

@st.composite
def flow_fields(draw, max_side=20):
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    return random_unit_flows((H, W), draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(flow_fields(), st.integers(0, 2**31 - 1), st.integers(0, 60))
def test_follow_flows_property_matches_reference_and_stays_inside(flows, seed, niter):
    _, H, W = flows.shape
    rng = np.random.default_rng(seed)
    points = (rng.uniform(size=(20, 2)) * (np.array([H, W]) - 1)).astype(np.float32)
    ends = F.follow_flows(flows, points, niter)
    np.testing.assert_array_equal(ends, R.follow_flows(flows, points, niter))
    assert (ends >= 0).all() and (ends[:, 0] <= H - 1).all() and (ends[:, 1] <= W - 1).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0.05, 1.0))
def test_get_masks_property_matches_reference_and_is_canonical(H, W, seed, fraction):
    ends, pixel_index = clustered_endpoints((H, W), seed)
    got = F._backend.cpu.get_masks(ends, pixel_index, H, W, F.SEED_MIN_COUNT, F.GROW_MIN_COUNT, fraction)
    np.testing.assert_array_equal(got, R.get_masks(ends, pixel_index, (H, W), max_size_fraction=fraction))
    np.testing.assert_array_equal(got, R.canonical(got))
    assert not got.ravel()[np.setdiff1d(np.arange(H * W), pixel_index)].any()  # only start pixels get labels
    assert np.bincount(got.ravel())[1:].max(initial=0) <= fraction * H * W


@settings(max_examples=30, deadline=None)
@given(label_images(), st.integers(0, 2**31 - 1))
def test_flow_error_property_matches_reference_own_flows_zero(labels, seed):
    flows = random_unit_flows(labels.shape, seed)
    np.testing.assert_allclose(F.flow_error(labels, flows), R.flow_error(labels, flows), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.flow_error(labels, F.masks_to_flows(labels)), 0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_fill_holes_property_matches_reference_and_keeps_masks(seed):
    labels = rings(seed)
    filled = F.fill_holes(labels)
    np.testing.assert_array_equal(filled, R.fill_holes(labels))
    assert (filled[labels > 0] == labels[labels > 0]).all()  # no mask pixel is overwritten
    np.testing.assert_array_equal(F.fill_holes(filled), filled)  # idempotent
