"""percs.overlay: display stretch, outline colours and places, matches, legends, input errors, PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from percs.overlay import (FALSE_POSITIVE_COLOUR, FOUND_LEGEND, MATCHED_COLOUR, MISSED_COLOUR, PREDICTED_COLOUR,
                           REFERENCE_COLOUR, add_legend, display_image, draw_matches, draw_overlay, match_legend,
                           save_png)

COLOURS = (PREDICTED_COLOUR, REFERENCE_COLOUR, MATCHED_COLOUR, FALSE_POSITIVE_COLOUR, MISSED_COLOUR)


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
    assert all(not colour_mask(rgb, c).any() for c in COLOURS if c != PREDICTED_COLOUR)


def test_reference_is_drawn_over_predicted():
    labels = two_squares()
    rgb = draw_overlay(np.full((30, 40, 3), 128, np.uint8), labels, reference_mask=labels == 1)
    assert colour_mask(rgb, REFERENCE_COLOUR).sum() == 20
    assert colour_mask(rgb, PREDICTED_COLOUR).sum() == 36


def test_matches_colour_true_positives_false_positives_and_missed_cells():
    labels = two_squares()
    labels[26:28, 1:3] = 3  # a 2 x 2 prediction over no true cell: 4 boundary pixels, a false positive
    truth = np.zeros_like(labels)
    truth[15:25, 20:29] = 7  # IoU 90 / 100 with predicted cell 2: a true positive
    truth[2:8, 3:5] = 4  # IoU 12 / 36 with predicted cell 1: not a match, so cell 1 is a false positive
    truth[10:13, 30:33] = 9  # only in the truth: missed, 8 boundary pixels
    rgb = draw_matches(np.full((30, 40), 128, np.uint8), labels, truth, reference_mask=labels == 3)
    assert colour_mask(rgb, MATCHED_COLOUR).sum() == 36
    assert colour_mask(rgb, FALSE_POSITIVE_COLOUR).sum() == 20  # cell 1; cell 3 is under the reference
    assert colour_mask(rgb, REFERENCE_COLOUR).sum() == 4
    missed = colour_mask(rgb, MISSED_COLOUR)
    assert missed[10:13, 30:33].sum() == 8 and missed[2:8, 3:5].any() and not missed[15:25, 20:30].any()
    assert not colour_mask(rgb, PREDICTED_COLOUR).any()


def test_matches_follow_the_threshold_and_rule():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 1
    truth = np.zeros_like(labels)
    truth[0:4, 0:2] = 1  # IoU exactly 1/2
    strict = draw_matches(np.zeros((10, 10), np.uint8), labels, truth, threshold=0.5, iou_rule="gt")
    inclusive = draw_matches(np.zeros((10, 10), np.uint8), labels, truth, threshold=0.5, iou_rule="ge")
    assert colour_mask(strict, FALSE_POSITIVE_COLOUR).any() and not colour_mask(strict, MATCHED_COLOUR).any()
    assert colour_mask(inclusive, MATCHED_COLOUR).any() and not colour_mask(inclusive, MISSED_COLOUR).any()
    assert match_legend(0.5, "gt")[0][0] == "true positive (IoU > 0.5)"
    assert match_legend(0.3, "ge")[0][0] == "true positive (IoU >= 0.3)"


@pytest.mark.parametrize("width", [40, 112, 600])
@pytest.mark.parametrize("entries", [FOUND_LEGEND, match_legend()], ids=["found", "matches"])
def test_legend_strip_holds_every_swatch_under_the_unchanged_picture(width, entries):
    rgb = draw_overlay(np.arange(30 * width, dtype=np.uint16).reshape(30, width), np.zeros((30, width), np.int32))
    framed = add_legend(rgb, entries)
    assert framed.dtype == np.uint8 and framed.shape[0] > 30 + 10 and framed.shape[1] >= width
    np.testing.assert_array_equal(framed[:30, :width], rgb)
    assert (framed[:30, width:] == 255).all()  # white where a legend wider than the picture widened it
    strip = framed[30:]
    for _, colour in entries:
        assert colour_mask(strip, colour).sum() >= 8 * 8, colour  # a swatch: 8 x 8 inside its black border
    text = (strip[..., 0] == strip[..., 1]) & (strip[..., 1] == strip[..., 2]) & (strip[..., 0] < 128)
    assert text.sum() > 20 * len(entries)  # dark grey pixels: the borders and the names
    if width == 600:
        assert framed.shape[1] == width and framed.shape[0] < 30 + 30  # one row when the picture is wide


def test_narrow_picture_wraps_its_legend_into_rows():
    wide = add_legend(np.zeros((20, 600, 3), np.uint8), match_legend())
    narrow = add_legend(np.zeros((20, 200, 3), np.uint8), match_legend())
    assert narrow.shape[1] == 200 and narrow.shape[0] > wide.shape[0]  # as wide as the picture, in more rows


def test_legend_errors():
    with pytest.raises(ValueError, match="entries is empty"):
        add_legend(np.zeros((5, 5, 3), np.uint8), ())
    with pytest.raises(ValueError, match="rgb must be"):
        add_legend(np.zeros((5, 5)), FOUND_LEGEND)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": np.zeros((30, 41), np.int32)}, "labels has shape"),
        ({"labels": np.zeros((30, 40), np.float32)}, "labels has dtype"),
        ({"true_labels": np.zeros((29, 40), np.int32)}, "true_labels has shape"),
        ({"true_labels": np.zeros((30, 40), np.float64)}, "true_labels has dtype"),
        ({"reference_mask": np.zeros((30, 40, 1), bool)}, "reference_mask has shape"),
    ],
)
def test_draw_overlay_and_matches_errors_name_the_argument(kwargs, message):
    arguments = {"labels": two_squares(), "true_labels": two_squares(), **kwargs}
    labels, truth = arguments.pop("labels"), arguments.pop("true_labels")
    with pytest.raises(ValueError, match=message):
        draw_matches(np.zeros((30, 40), np.uint8), labels, truth, **arguments)
    if "true_labels" not in kwargs:
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
