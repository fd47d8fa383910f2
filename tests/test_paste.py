"""percs.data.paste: windows with padding, placement uniform over free positions only, blending and flows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from percs.data import paste
from percs.data.cells import cell_table, median_area_label
from percs.flows import masks_to_flows


def test_window_pads_with_the_fill_value():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = paste.window(array, -1, 2, 3, 4, np.array([-1.0, -2.0], np.float32))
    assert out.shape == (2, 3, 4)
    assert (out[0, 0] == -1).all() and (out[1, 0] == -2).all() and (out[:, :, 2:] < 0).all()
    assert np.array_equal(out[:, 1:, :2], array[:, :2, 2:])
    assert (paste.window(array[0], 10, 10, 2, 2, 7) == 7).all()


def _free_corners(occupied: np.ndarray, footprint: np.ndarray) -> set[tuple[int, int]]:
    H, W = occupied.shape
    h, w = footprint.shape
    return {(y, x) for y in range(H - h + 1) for x in range(W - w + 1)
            if not (occupied[y:y + h, x:x + w] & footprint).any()}


@pytest.mark.parametrize("tries", [paste.RANDOM_TRIES, 0])  # rejection sampling, and the exact fallback alone
def test_find_position_is_uniform_over_free_positions(monkeypatch, tries):
    monkeypatch.setattr(paste, "RANDOM_TRIES", tries)
    occupied = np.zeros((7, 9), bool)
    occupied[2:4, 3:6] = True
    occupied[6, 0] = True
    footprint = np.array([[1, 1, 0], [0, 1, 1]], bool)
    free = _free_corners(occupied, footprint)
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, int], int] = {}
    n = 100 * len(free)
    for _ in range(n):
        corner = paste.find_position(rng, occupied, footprint)
        counts[corner] = counts.get(corner, 0) + 1
    assert set(counts) == free
    expected = n / len(free)
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in counts.values())


def test_find_position_without_room():
    rng = np.random.default_rng(1)
    occupied = np.zeros((10, 10), bool)
    occupied[::3, ::3] = True
    assert paste.find_position(rng, occupied, np.ones((4, 4), bool)) is None
    assert paste.find_position(rng, np.zeros((3, 3), bool), np.ones((4, 2), bool)) is None


def test_paste_cell_keeps_the_gap_blends_the_ring_and_carries_the_flows():
    source = np.zeros((20, 20), np.int32)
    source[5:11, 6:12] = 1
    source[11:14, 6:9] = 2  # a neighbour touching cell 1: its pixels must not come along
    pixels = np.full((3, 20, 20), 2.0, np.float32)
    pixels[:, source > 0] = 10.0
    flows = masks_to_flows(source)
    box = cell_table(source).box_of(1)
    cutout = paste.cut_cell(pixels, source, 1, box, gap=1, cell_type="a", flows=flows)
    assert cutout.mask.sum() == 36 and not (cutout.ring & (paste.window(source, 4, 5, 8, 8, 0) == 2)).any()

    canvas = np.zeros((3, 16, 16), np.float32)
    labels = np.zeros((16, 16), np.int32)
    labels[0:3, 0:3] = 5
    target_flows = np.zeros((2, 16, 16), np.float32)
    occupied = labels > 0
    pasted = paste.paste_cells(np.random.default_rng(3), canvas, labels, occupied, 3, lambda rng: (cutout, "a"),
                               target_flows)
    assert [label for label, _ in pasted] == [6, 7][: len(pasted)] and len(pasted) >= 1
    for label, _ in pasted:
        cell = labels == label
        assert cell.sum() == 36 and (canvas[:, cell] == 10).all()
        assert not (ndimage.binary_dilation(cell, np.ones((3, 3), bool)) & (labels > 0) & ~cell).any()
        ring = ndimage.binary_dilation(cell, np.ones((3, 3), bool)) & ~cell
        # the mean of canvas (0) and source background (2); twice where the rings of two pasted cells meet
        assert set(np.unique(canvas[:, ring]).tolist()) <= {0.0, 1.0, 1.5}
        np.testing.assert_array_equal(target_flows[:, cell], masks_to_flows(cell.astype(np.int32))[:, cell])
    assert (labels[0:3, 0:3] == 5).all()


def test_cell_table_and_median_area_rule():
    labels = np.zeros((8, 9), np.int32)
    labels[0:2, 0:2] = 1  # touches the border
    labels[3:5, 3:6] = 2
    labels[6:7, 2:4] = 3
    table = cell_table(labels)
    assert table.labels.tolist() == [1, 2, 3] and table.areas.tolist() == [4, 6, 2]
    assert table.whole.tolist() == [False, True, True] and table.box_of(2) == (3, 3, 5, 6)
    assert median_area_label(np.array([4, 2, 9, 7]), np.array([5, 5, 1, 8])) == 2  # (5, 2) before (5, 4)
    with pytest.raises(ValueError, match="no candidate cells"):
        median_area_label(np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(KeyError, match="label 4 has no pixels"):
        table.box_of(4)
