"""percs.overlay: display stretch, outline colours and places, input errors, PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from percs.overlay import PREDICTED_COLOUR, REFERENCE_COLOUR, TRUE_COLOUR, display_image, draw_overlay, save_png


def two_squares() -> np.ndarray:
    labels = np.zeros((30, 40), np.int32)
    labels[2:8, 3:9] = 1  # 6 x 6: 20 boundary pixels
    labels[15:25, 20:30] = 2  # 10 x 10: 36 boundary pixels
    return labels


def colour_mask(rgb: np.ndarray, colour) -> np.ndarray:
    return (rgb == np.array(colour, np.uint8)).all(axis=-1)


def test_display_image_stretches_grey_to_full_range_and_repeats_it():
    image = np.linspace(0, 1000, 30 * 40).reshape(30, 40).astype(np.uint16)
    rgb = display_image(image)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255  # below the 1st / above the 99th percentile: clipped
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_display_image_two_channels_leave_blue_empty():
    rng = np.random.default_rng(0)
    image = rng.random((10, 12, 2)).astype(np.float32)
    rgb = display_image(image)
    assert rgb[..., 2].max() == 0 and rgb[..., 0].max() == 255 and rgb[..., 1].max() == 255


def test_outlines_are_inner_boundaries_in_their_colours():
    labels = two_squares()
    rgb = draw_overlay(np.zeros((30, 40), np.uint8), labels)
    predicted = colour_mask(rgb, PREDICTED_COLOUR)
    assert predicted.sum() == 20 + 36
    assert predicted[2, 3] and predicted[7, 8] and not predicted[4, 5] and not predicted[1, 3]
    assert not colour_mask(rgb, TRUE_COLOUR).any() and not colour_mask(rgb, REFERENCE_COLOUR).any()


def test_reference_is_drawn_over_predicted_and_predicted_over_true():
    labels = two_squares()
    truth = np.zeros_like(labels)
    truth[15:25, 20:30] = 1  # the same square as predicted cell 2: hidden under it
    truth[10:13, 30:33] = 2  # a cell only in the truth: 8 boundary pixels
    rgb = draw_overlay(np.full((30, 40, 3), 128, np.uint8), labels, true_labels=truth, reference_mask=labels == 1)
    assert colour_mask(rgb, REFERENCE_COLOUR).sum() == 20
    assert colour_mask(rgb, PREDICTED_COLOUR).sum() == 36
    assert colour_mask(rgb, TRUE_COLOUR).sum() == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": np.zeros((30, 41), np.int32)}, "labels has shape"),
        ({"labels": np.zeros((30, 40), np.float32)}, "labels has dtype"),
        ({"true_labels": np.zeros((29, 40), np.int32)}, "true_labels has shape"),
        ({"reference_mask": np.zeros((30, 40, 1), bool)}, "reference_mask has shape"),
    ],
)
def test_draw_overlay_errors_name_the_argument(kwargs, message):
    arguments = {"labels": two_squares(), **kwargs}
    labels = arguments.pop("labels")
    with pytest.raises(ValueError, match=message):
        draw_overlay(np.zeros((30, 40), np.uint8), labels, **arguments)


def test_draw_overlay_rejects_a_bad_image():
    with pytest.raises(ValueError, match="image has shape"):
        draw_overlay(np.zeros((2, 30, 40, 3), np.uint8), two_squares())


def test_save_png_round_trip(tmp_path):
    rgb = draw_overlay(np.arange(1200, dtype=np.uint16).reshape(30, 40), two_squares())
    save_png(tmp_path / "o.png", rgb)
    with Image.open(tmp_path / "o.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with pytest.raises(ValueError, match="rgb must be"):
        save_png(tmp_path / "bad.png", rgb.astype(np.float32))
