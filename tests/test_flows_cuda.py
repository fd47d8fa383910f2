"""CUDA kernels of percs.flows cross-checked against the CPU kernels, op by op and end to end.

Integer outputs must be identical and every output must stay on the input's GPU. Flows must agree to 1e-6 and
flow errors to 1e-10 relative (summation order), except where the two backends' log1p, which may differ in the
last bit (CUDA's vs glibc's), meets a gradient that is itself rounding noise in a cell that is not mirror
symmetric (a symmetric cell's centre is exactly (0, 0) on both): see assert_flows_match.
Skipped without a CUDA device or without percs._cuda.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cuda_available, real_label_images
from skimage.draw import disk, ellipse

from percs import _backend, _flows_cuda
from percs import flows as F
from percs.reference import flows as R
from percs.synthetic_labels import scramble_labels, touching_cells

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device and percs._cuda")]

SHAPES = [(0, 0), (0, 5), (4, 0), (1, 1), (1, 7), (9, 1), (2, 2), (13, 17), (32, 32), (41, 23), (64, 97)]


def gpu(array, device="cuda"):
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def host(tensor, device="cuda", dtype=None):
    """The tensor as NumPy, after checking that it stayed on the GPU (and its dtype)."""
    expected = torch.device(device)  # "cuda" has no index: any GPU index matches it
    assert isinstance(tensor, torch.Tensor) and tensor.device.type == expected.type
    assert expected.index in (None, tensor.device.index)
    assert dtype is None or tensor.dtype == dtype
    return tensor.cpu().numpy()


def random_labels(shape, seed, density=0.6):
    rng = np.random.default_rng(seed)
    n = max(1, int(shape[0] * shape[1] * density / 40))
    return touching_cells(shape, int(rng.integers(0, n + 1)), float(rng.uniform(1, 6)), seed)


def special_labels():
    """Corner cases: one-pixel cells, lines, a full-image cell, cells on the border, disconnected labels."""
    pixels = np.arange(1, 36, dtype=np.int32).reshape(5, 7)
    pixels[::2, ::2] = 0
    line = np.zeros((3, 40), np.int32)
    line[1, 3:37] = 4
    diagonal = np.eye(25, dtype=np.int32) * 9
    split = np.zeros((12, 12), np.int32)
    split[1:4, 1:4] = 5
    split[8:11, 6:11] = 5  # one label, two pieces: one cell
    border = np.zeros((10, 11), np.int32)
    border[:3, :] = 1
    border[:, -2:] = 2
    border[-1, :5] = 3
    return [pixels, line, diagonal, split, border, np.full((6, 9), 3, np.int32), np.ones((1, 1), np.int32)]


def label_cases():
    cases = [random_labels(shape, seed) for shape in SHAPES for seed in range(4)]
    return cases + special_labels()


def random_unit_flows(shape, seed):
    flows = np.random.default_rng(seed).normal(size=(2, *shape)).astype(np.float32)
    return flows / np.maximum(np.sqrt((flows**2).sum(0)), 1e-3)


def rings(seed, shape=(40, 40)):
    """Random cells plus ring-shaped masks (holes), some nested or touching the border."""
    rng = np.random.default_rng(seed)
    labels = random_labels(shape, seed, density=0.3)
    for label in range(100, 100 + int(rng.integers(1, 5))):
        cy, cx = rng.integers(0, shape[0], 2)
        r = int(rng.integers(2, 10))
        ring = np.zeros(shape, bool)
        ring[disk((cy, cx), r, shape=shape)] = True
        ring[disk((cy, cx), max(r - 2, 1), shape=shape)] = False
        labels[ring] = label
        labels[disk((cy, cx), max(r - 5, 0) + 0.5, shape=shape)] = label + 50 if rng.uniform() < 0.5 else 0
    return labels


def spiral(size=41):
    """A mask whose outside is a long corridor: the flood from the border needs many sweeps."""
    labels = np.zeros((size, size), np.int32)
    y0, x0, y1, x1 = 0, 0, size - 1, size - 1
    while y1 - y0 > 3:
        labels[y0, x0 : x1 + 1] = labels[y0 : y1 + 1, x1] = labels[y1, x0 : x1 + 1] = 1
        labels[y0 + 2 : y1 + 1, x0] = 1
        y0, x0, y1, x1 = y0 + 2, x0 + 2, y1 - 2, x1 - 2
    return labels


def assert_flows_match(got, expected, labels):
    """(B, 2, H, W) or (2, H, W) flows equal to 1e-6, except at cell pixels where |grad L| < 1e-9 |L| (L = log1p
    of the temperature, e.g. the centre of a symmetric cell): there the gradient is rounding noise and an ulp of
    log1p turns the direction."""
    got, expected = (got[None], expected[None]) if got.ndim == 3 else (got, expected)
    labels = labels[None] if labels.ndim == 2 else labels
    for b, y, x in np.argwhere(np.abs(got - expected).max(axis=1) > 1e-6):
        message = f"image {b} pixel {(y, x)}: flows {got[b, :, y, x]} on the GPU, {expected[b, :, y, x]} on the CPU"
        assert labels[b, y, x] > 0 and gradient_is_rounding_noise(labels[b], y, x), message


def gradient_is_rounding_noise(labels, y, x):
    ys, xs = np.nonzero(labels == labels[y, x])
    L = R.cell_log_temperature(labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == labels[y, x])
    by, bx = y - ys.min() + 1, x - xs.min() + 1
    gradient = np.hypot(L[by + 1, bx] - L[by - 1, bx], L[by, bx + 1] - L[by, bx - 1])
    return gradient < 1e-9 * np.abs(L[by - 1 : by + 2, bx - 1 : bx + 2]).max()


def mean_squared_difference(labels, mask_flows, flows):
    """(labels.max(),) per-mask mean of |mask_flows - flows|^2, computed in float64 (0 for absent labels)."""
    n = int(labels.max()) if labels.size else 0
    squared = ((mask_flows.astype(np.float64) - flows) ** 2).sum(0)
    sums = np.bincount(labels.ravel(), squared.ravel(), minlength=n + 1)[1:]
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return np.divide(sums, counts, out=np.zeros(n), where=counts > 0)


# ---------------------------------------------------------------- module and cell table


def test_device_count_agrees_with_torch():
    assert _backend._cuda.device_count() == torch.cuda.device_count()


@pytest.mark.parametrize("index", range(len(label_cases())))
def test_cell_table_matches_numpy(index):
    labels = label_cases()[index]
    labels = scramble_labels(labels, index) if index % 2 else labels
    pixels, cell, cell_labels = _flows_cuda._group_cells(gpu(labels)[None])
    expected = []
    for value in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == value)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        cy, cx = R.cell_centre(labels[box] == value)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        expected.append([0, value, ys.min(), xs.min(), h, w, cy + ys.min(), cx + xs.min()])
    if not expected:
        assert cell_labels.numel() == 0
        return
    table = _flows_cuda._cell_table(pixels, cell, cell_labels, *labels.shape, buffers=1)
    np.testing.assert_array_equal(host(table.boxes, dtype=torch.int32), np.array(expected, np.int64))


# ---------------------------------------------------------------- masks_to_flows


@pytest.mark.parametrize("index", range(len(label_cases())))
def test_masks_to_flows_matches_cpu(index):
    labels = label_cases()[index]
    variants = [labels, scramble_labels(labels, index)]
    if labels.size and labels.max() < 256:
        variants.append(labels.astype(np.uint8))
    for variant in variants:
        got = host(F.masks_to_flows(gpu(variant)), dtype=torch.float32)
        assert_flows_match(got, F.masks_to_flows(variant), variant)


def test_symmetric_cell_has_exactly_zero_flow_at_its_centre_on_the_gpu():
    # The shared stencil sums in mirror-symmetric pairs, so CUDA's log1p cannot turn the centre's zero gradient.
    from test_flows import mirror_symmetric_cells

    for labels in mirror_symmetric_cells():
        ys, xs = np.nonzero(labels)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        got = host(F.masks_to_flows(gpu(labels)), dtype=torch.float32)
        assert got[:, cy, cx].tolist() == [0.0, 0.0]
        np.testing.assert_array_equal(got[0, ::-1], -got[0])
        np.testing.assert_array_equal(got[1, :, ::-1], -got[1])


def test_masks_to_flows_batch_and_views():
    batch = np.stack([random_labels((30, 20), s) for s in range(5)])
    batch[2] = 0  # an empty image in the batch
    expected = F.masks_to_flows(batch)
    assert_flows_match(host(F.masks_to_flows(gpu(batch))), expected, batch)
    transposed = gpu(batch.transpose(0, 2, 1).copy()).transpose(1, 2)  # non-contiguous view
    assert_flows_match(host(F.masks_to_flows(transposed)), expected, batch)
    assert host(F.masks_to_flows(gpu(np.zeros((3, 0, 4), np.int32)))).shape == (3, 2, 0, 4)


def test_masks_to_flows_is_deterministic_and_follows_the_stream():
    labels = gpu(touching_cells((120, 90), 40, 9, seed=7))
    first = F.masks_to_flows(labels)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        second = F.masks_to_flows(labels)
    stream.synchronize()
    assert torch.equal(first, second)


# ---------------------------------------------------------------- follow_flows


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] * s[1] > 0])
@pytest.mark.parametrize("seed", range(3))
def test_follow_flows_matches_cpu_exactly(shape, seed):
    rng = np.random.default_rng(seed)
    mask_flows = F.masks_to_flows(random_labels(shape, seed))
    for flows in (random_unit_flows(shape, seed), mask_flows, np.zeros((2, *shape), np.float32)):
        points = (rng.uniform(size=(200, 2)) * (np.array(shape) - 1)).astype(np.float32)
        points[:4] = [[0, 0], [shape[0] - 1, shape[1] - 1], [0, shape[1] - 1], [shape[0] - 1, 0]]
        for niter in (0, 1, 37, 200):
            got = host(F.follow_flows(gpu(flows), gpu(points), niter), dtype=torch.float32)
            np.testing.assert_array_equal(got, F.follow_flows(flows, points, niter))


def test_follow_flows_many_points_and_no_points():
    flows = np.full((2, 3, 2), 0.25, np.float32)
    points = np.zeros((17_000_000, 2), np.float32)  # more than one grid of threads: the grid-stride loop
    got = F.follow_flows(gpu(flows), gpu(points), 3)
    assert torch.equal(got, torch.tensor([[0.75, 0.75]], device="cuda").expand_as(got))
    assert host(F.follow_flows(gpu(flows), gpu(np.zeros((0, 2), np.float32)), 5)).shape == (0, 2)


# ---------------------------------------------------------------- get_masks and renumbering


def clustered_endpoints(shape, seed):
    rng = np.random.default_rng(seed)
    H, W = shape
    n_points = int(rng.integers(0, H * W + 1))
    pixel_index = rng.choice(H * W, n_points, replace=False).astype(np.int64)
    attractors = rng.uniform(size=(int(rng.integers(1, 8)), 2)) * (np.array(shape) - 1)
    spread = rng.normal(scale=rng.uniform(0, 3), size=(n_points, 2))
    ends = np.clip(attractors[rng.integers(0, len(attractors), n_points)] + spread, 0, np.array(shape) - 1)
    return ends.astype(np.float32), pixel_index


@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (30, 30), (64, 48), (128, 100)])
@pytest.mark.parametrize("seed", range(8))
def test_get_masks_matches_cpu_exactly(shape, seed):
    ends, pixel_index = clustered_endpoints(shape, seed)
    for fraction in (0.4, 0.05, 1.0):
        labels, n_seeds = _flows_cuda._get_masks(gpu(ends), gpu(pixel_index), *shape, fraction)
        expected = _backend.cpu.get_masks(ends, pixel_index, *shape, F.SEED_MIN_COUNT, F.GROW_MIN_COUNT, fraction)
        np.testing.assert_array_equal(host(labels, dtype=torch.int32), expected)
        assert n_seeds >= expected.max()


@pytest.mark.parametrize("seed", range(6))
def test_canonical_matches_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, size=(17, 23)).astype(np.int32)
    labels[labels == 5] = 0  # a gap
    got = _flows_cuda._canonical(gpu(labels), 11)
    np.testing.assert_array_equal(host(got, dtype=torch.int32), R.canonical(labels))


def test_unit_flows_is_a_true_division():
    values = np.random.default_rng(0).normal(scale=7, size=(2, 300, 301)).astype(np.float32)
    np.testing.assert_array_equal(host(_flows_cuda._unit_flows(gpu(values))), values / np.float32(F.FLOW_SCALE))


# ---------------------------------------------------------------- flow_error and fill_holes


@pytest.mark.parametrize("index", range(len(label_cases())))
def test_flow_error_matches_cpu(index):
    labels = label_cases()[index]
    if labels.size and labels.max() >= 2:
        labels[labels == 2] = 0  # a label gap: error 0
    mask_flows, gpu_mask_flows = F.masks_to_flows(labels), host(F.masks_to_flows(gpu(labels)))
    assert_flows_match(gpu_mask_flows, mask_flows, labels)
    # Masks whose GPU flows turned at a rounding-noise pixel are checked against those flows instead.
    turned = np.unique(labels[np.abs(gpu_mask_flows - mask_flows).max(axis=0) > 1e-6])
    for flows in (random_unit_flows(labels.shape, index), mask_flows):
        got = host(F.flow_error(gpu(labels), gpu(flows)), dtype=torch.float64)
        expected = F.flow_error(labels, flows)
        assert got.shape == expected.shape
        same = np.setdiff1d(np.arange(1, len(expected) + 1), turned) - 1
        np.testing.assert_allclose(got[same], expected[same], rtol=1e-10, atol=1e-14)
        own = mean_squared_difference(labels, gpu_mask_flows, flows)
        np.testing.assert_allclose(got[turned - 1], own[turned - 1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(12))
def test_fill_holes_matches_cpu_exactly(seed):
    labels = rings(seed, shape=(40, 40) if seed % 3 else (33, 57))
    np.testing.assert_array_equal(host(F.fill_holes(gpu(labels)), dtype=torch.int32), F.fill_holes(labels))


@pytest.mark.parametrize("labels", [spiral(), spiral(64) * 3, np.zeros((5, 0), np.int32), np.zeros((3, 3), np.int32)])
def test_fill_holes_corner_cases(labels):
    got = host(F.fill_holes(gpu(labels.astype(np.int64))), dtype=torch.int32)
    np.testing.assert_array_equal(got, F.fill_holes(labels))


def test_fill_holes_nested_masks():
    labels = np.zeros((21, 21), np.int32)
    labels[ellipse(10, 10, 9.5, 9.5)] = 1
    labels[ellipse(10, 10, 8, 8)] = 0
    labels[ellipse(10, 10, 5, 5)] = 2
    labels[ellipse(10, 10, 3.5, 3.5)] = 0
    labels[10, 10] = 3
    np.testing.assert_array_equal(host(F.fill_holes(gpu(labels))), F.fill_holes(labels))


def test_large_image_uses_grid_stride_loops():
    labels = np.zeros((4200, 4100), np.int32)  # more pixels than one grid of threads covers
    for k, (cy, cx) in enumerate([(100, 100), (2100, 2000), (4150, 4050)], start=1):
        labels[disk((cy, cx), 40, shape=labels.shape)] = k
        labels[disk((cy, cx), 10, shape=labels.shape)] = 0
    np.testing.assert_array_equal(host(F.fill_holes(gpu(labels))), F.fill_holes(labels))
    ends = np.array([[2100, 2000]] * 50 + [[4199, 4099]] * 20, np.float32)
    pixel_index = np.arange(70, dtype=np.int64) * 1000
    got, _ = _flows_cuda._get_masks(gpu(ends), gpu(pixel_index), 4200, 4100, 0.4)
    np.testing.assert_array_equal(host(got), _backend.cpu.get_masks(ends, pixel_index, 4200, 4100, 10, 2, 0.4))


# ---------------------------------------------------------------- flows_to_masks


def both_backends(flows, cellprob, **kwargs):
    got = host(F.flows_to_masks(gpu(flows), gpu(cellprob), **kwargs), dtype=torch.int32)
    return got, F.flows_to_masks(flows, cellprob, **kwargs)


def shapes_image(seed, shape=(96, 120)):
    """Disks and ellipses (skimage.draw), some touching, with noisy flows and logits."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(1, 16):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if k % 2:
            rr, cc = disk((cy, cx), rng.uniform(3, 14), shape=shape)
        else:
            rr, cc = ellipse(cy, cx, rng.uniform(3, 12), rng.uniform(5, 18), shape=shape, rotation=rng.uniform(0, 3))
        labels[rr, cc] = k
    noise = rng.normal(scale=rng.uniform(0, 2), size=(2, *shape)).astype(np.float32)
    flows = F.FLOW_SCALE * F.masks_to_flows(labels) + noise
    cellprob = np.where(labels > 0, 3.0, -3.0).astype(np.float32) + rng.normal(size=shape).astype(np.float32)
    return flows, cellprob


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"min_size": 0}, {"flow_threshold": 0.0}, {"flow_threshold": 0.1}, {"max_size_fraction": 0.01},
     {"cellprob_threshold": 1.5, "niter": 50}],
)
def test_flows_to_masks_matches_cpu_on_shapes(seed, kwargs):
    got, expected = both_backends(*shapes_image(seed), **kwargs)
    np.testing.assert_array_equal(got, expected)


def test_flows_to_masks_empty_and_background_images():
    for shape in [(0, 0), (1, 1), (5, 0), (12, 9)]:
        got, expected = both_backends(np.zeros((2, *shape), np.float32), np.full(shape, -1.0, np.float32))
        np.testing.assert_array_equal(got, expected)
    got, expected = both_backends(np.zeros((2, 7, 7), np.float32), np.ones((7, 7), np.float32), min_size=0)
    np.testing.assert_array_equal(got, expected)


def test_flows_to_masks_float64_inputs_and_views():
    flows, cellprob = shapes_image(3)
    flows64 = gpu(flows.astype(np.float64).transpose(0, 2, 1).copy()).transpose(1, 2)
    got = host(F.flows_to_masks(flows64, gpu(cellprob.astype(np.float64))), dtype=torch.int32)
    np.testing.assert_array_equal(got, F.flows_to_masks(flows.astype(np.float64), cellprob.astype(np.float64)))


@pytest.fixture(scope="module")
def real_images():
    return real_label_images("cellpose_styles")


def test_flows_to_masks_matches_cpu_on_real_images(real_images):
    assert len(real_images) == 30
    rng = np.random.default_rng(0)
    for name, labels in real_images:
        unit = F.masks_to_flows(labels)
        assert_flows_match(host(F.masks_to_flows(gpu(labels))), unit, labels)
        flows = F.FLOW_SCALE * unit + rng.normal(scale=0.5, size=unit.shape).astype(np.float32)
        cellprob = np.where(labels > 0, 3.0, -3.0).astype(np.float32) + rng.normal(size=labels.shape).astype(np.float32)
        got, expected = both_backends(flows, cellprob)
        assert expected.max() > 0.8 * len(np.unique(labels)) - 1, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


# ---------------------------------------------------------------- devices and input errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.follow_flows(gpu(np.zeros((2, 4, 4), np.float32)), np.zeros((1, 2), np.float32)), "points must be"),
        (lambda: F.follow_flows(gpu(np.zeros((2, 4, 4), np.float32)), gpu(np.float32([[0, 4.5]]))), "outside"),
        (lambda: F.flow_error(gpu(np.ones((4, 4), np.int32)), np.zeros((2, 4, 4), np.float32)), "unit_flows must be"),
        (lambda: F.flows_to_masks(gpu(np.zeros((2, 4, 4), np.float32)), np.zeros((4, 4), np.float32)), "same device"),
        (lambda: F.fill_holes(gpu(np.full((2, 2), 2**31, np.int64))), "beyond int32"),
        (lambda: F.fill_holes(gpu(np.full((2, 2), 9, np.int32))), "exceeds the pixel count"),
        (lambda: F.flow_error(gpu(np.full((2, 2), 9, np.int32)), gpu(np.zeros((2, 2, 2), np.float32))), "renumber"),
    ],
)
def test_cuda_input_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_keeps_outputs_there():
    labels = touching_cells((50, 60), 12, 8, seed=1)
    flows = F.masks_to_flows(gpu(labels, "cuda:1"))
    assert_flows_match(host(flows, "cuda:1"), F.masks_to_flows(labels), labels)
    cellprob = gpu(np.where(labels > 0, 5.0, -5.0).astype(np.float32), "cuda:1")
    got = host(F.flows_to_masks(F.FLOW_SCALE * flows, cellprob), "cuda:1")
    np.testing.assert_array_equal(got, F.flows_to_masks(F.FLOW_SCALE * flows.cpu().numpy(), cellprob.cpu().numpy()))
