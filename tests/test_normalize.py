"""normalize_image: percentile scaling per channel, the channel rule, ImageNet standardisation, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_dir
from percs.data.io import read_image
from percs.data.normalize import BACKBONE_MEAN, BACKBONE_STD, normalize_image

MEAN = np.array(BACKBONE_MEAN, np.float32)[:, None, None]
STD = np.array(BACKBONE_STD, np.float32)[:, None, None]


def unstandardise(out: np.ndarray) -> np.ndarray:
    return out * STD + MEAN


def reference_scale(channel: np.ndarray, lower=1.0, upper=99.0) -> np.ndarray:
    """Obviously correct percentile scaling in float64."""
    c = channel.astype(np.float64)
    lo, hi = np.percentile(c, lower), np.percentile(c, upper)
    if hi <= lo:
        lo, hi = c.min(), c.max()
    return np.zeros_like(c) if hi <= lo else (c - lo) / (hi - lo)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (64, 48), (7, 9, 1)])
def test_grey_is_repeated(shape):
    image = np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16)
    out = normalize_image(image)
    assert out.shape == (3,) + shape[:2] and out.dtype == np.float32
    scaled = unstandardise(out)
    expected = reference_scale(image.reshape(shape[:2]))
    for k in range(3):
        np.testing.assert_allclose(scaled[k], expected, atol=1e-5)


def test_rgb_channels_are_scaled_independently():
    rng = np.random.default_rng(1)
    image = np.stack([rng.normal(10, 1, (32, 40)), rng.normal(-500, 30, (32, 40)), rng.random((32, 40))], -1)
    scaled = unstandardise(normalize_image(image, 2.0, 98.0))
    for k in range(3):
        np.testing.assert_allclose(scaled[k], reference_scale(image[..., k], 2.0, 98.0), atol=1e-4)
        assert np.isclose(np.percentile(scaled[k], 2.0), 0, atol=1e-5)
        assert np.isclose(np.percentile(scaled[k], 98.0), 1, atol=1e-5)


def test_two_channels_become_c0_c1_zero():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (16, 12, 2)).astype(np.uint8)
    scaled = unstandardise(normalize_image(image))
    np.testing.assert_allclose(scaled[0], reference_scale(image[..., 0]), atol=1e-5)
    np.testing.assert_allclose(scaled[1], reference_scale(image[..., 1]), atol=1e-5)
    np.testing.assert_allclose(scaled[2], 0, atol=1e-6)


def test_more_channels_take_the_first_three_or_the_chosen_ones():
    image = np.random.default_rng(3).random((10, 11, 6)).astype(np.float32)
    np.testing.assert_array_equal(normalize_image(image), normalize_image(image[..., :3]))
    np.testing.assert_array_equal(normalize_image(image, channels=(4, 2, 5)), normalize_image(image[..., [4, 2, 5]]))
    np.testing.assert_array_equal(normalize_image(image, channels=(3, 1)), normalize_image(image[..., [3, 1]]))
    np.testing.assert_array_equal(normalize_image(image, channels=[5]), normalize_image(image[..., 5]))


def test_sparse_and_constant_channels():
    sparse = np.zeros((50, 50), np.uint8)
    sparse[:2, :3] = 200  # 0.24% of the pixels: the 1st and 99th percentiles are both 0
    scaled = unstandardise(normalize_image(sparse))
    assert np.isclose(scaled[0].max(), 1) and np.isclose(scaled[0].min(), 0, atol=1e-6)
    constant = np.full((8, 8, 3), 7.0)
    np.testing.assert_allclose(unstandardise(normalize_image(constant)), 0, atol=1e-6)


def test_dtype_and_affine_invariance():
    base = np.random.default_rng(4).integers(0, 200, (20, 30, 3))
    reference = normalize_image(base.astype(np.uint8))
    for image in (base.astype(np.uint16), base.astype(np.int32), base.astype(np.float64), base * 3.5 - 100):
        np.testing.assert_allclose(normalize_image(image), reference, atol=1e-4)
    assert normalize_image(base > 100).dtype == np.float32


def test_real_two_colour_cellpose_image():
    image = read_image(data_dir("cellpose_styles") / "Kc167" / "095_img.png")  # 16-bit RGB, blue empty
    out = normalize_image(image)
    assert out.shape == (3,) + image.shape[:2] and np.isfinite(out).all()
    np.testing.assert_allclose(unstandardise(out)[2], 0, atol=1e-6)


@pytest.mark.parametrize("image, kwargs, error, message", [
    (np.zeros(5), {}, ValueError, "image has 1 dims, expected 2"),
    (np.zeros((2, 3, 4, 5)), {}, ValueError, "image has 4 dims"),
    (np.zeros((0, 4)), {}, ValueError, "non-zero height"),
    (np.zeros((4, 4, 0)), {}, ValueError, "non-zero height"),
    (np.full((4, 4), np.nan), {}, ValueError, "NaN or infinite"),
    (np.zeros((4, 4), np.complex64), {}, TypeError, "dtype complex64"),
    ([[1, 2], [3, 4]], {}, TypeError, "must be a NumPy array"),
    (np.zeros((4, 4)), {"lower": 50, "upper": 50}, ValueError, "lower=50, upper=50"),
    (np.zeros((4, 4)), {"upper": 101}, ValueError, "0 <= lower < upper <= 100"),
    (np.zeros((4, 4, 3)), {"channels": (0, 3)}, ValueError, "are not all in 0..2"),
    (np.zeros((4, 4, 5)), {"channels": (0, 1, 2, 3)}, ValueError, "channels has 4 entries"),
    (np.zeros((4, 4, 5)), {"channels": ()}, ValueError, "channels has 0 entries"),
])
def test_bad_inputs(image, kwargs, error, message):
    with pytest.raises(error, match=message):
        normalize_image(image, **kwargs)
