"""percs.data.stacks: the axes of an image file (metadata, options, guesses) and the plane and channels kept, on
TIFFs written the ways microscopes and scripts write them (ImageJ, OME, tifffile, no metadata), and PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from percs.data.io import DataFileError, read_image
from percs.data.stacks import StackOptions, parse_axes, parse_channels, parse_plane, select_stack

H, W = 12, 16


def planes(n: int, seed: int = 0) -> np.ndarray:
    """(n, H, W) uint16 planes that differ from each other."""
    return np.random.default_rng(seed).integers(0, 4000, (n, H, W), dtype=np.uint16)


def select(path, **options):
    return select_stack(read_image(path), path, (H, W), path.with_suffix(".labels"), StackOptions(**options))


def test_plain_images_are_kept_whole_and_copied(tmp_path):
    rgb = planes(3).transpose(1, 2, 0).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "c.tif", planes(1)[0])
    for name, expected in (("a.png", rgb), ("b.tif", rgb), ("c.tif", planes(1)[0])):
        selected = select(tmp_path / name)
        assert selected.verbatim and selected.guess is None and selected.selection == {}
        assert np.array_equal(selected.image, expected)


@pytest.mark.parametrize("how", ["imagej", "shaped", "ome"])
def test_z_stacks_with_metadata_need_a_plane(tmp_path, how):
    stack = planes(5)
    path = tmp_path / "z.tif"
    if how == "ome":
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX"})
    else:
        tifffile.imwrite(path, stack, imagej=how == "imagej", metadata={"axes": "ZYX"})
    with pytest.raises(DataFileError, match=r"z.tif: image has shape \(5, 12, 16\), a stack of 5 planes \(axes ZYX\)"
                                            r"; choose .* --plane mid\|max\|N"):
        select(path)
    middle = select(path, plane="mid")
    assert middle.guess is None and not middle.verbatim and middle.selection == {"axes": "ZYX", "plane": 2}
    assert np.array_equal(middle.image, stack[2])
    assert np.array_equal(select(path, plane="max").image, stack.max(0))
    assert np.array_equal(select(path, plane=4).image, stack[4])
    with pytest.raises(DataFileError, match=r"--plane 5: image has 5 planes \(0..4; axes ZYX\)"):
        select(path, plane=5)


def test_an_unlabelled_leading_axis_is_guessed_channels_unless_a_plane_is_asked_for(tmp_path):
    stack = planes(5)
    tifffile.imwrite(tmp_path / "q.tif", stack, photometric="minisblack")  # tifffile's default axes: QYX
    guessed = select(tmp_path / "q.tif")
    assert guessed.axes == "CYX" and np.array_equal(guessed.image, stack.transpose(1, 2, 0))
    assert "guessed axes CYX for images of shape (5, 12, 16)" in guessed.guess
    assert "--plane mid|max|N (or --axes ZYX)" in guessed.guess
    by_flag = select(tmp_path / "q.tif", plane="mid")
    assert by_flag.guess is None and by_flag.axes == "ZYX" and np.array_equal(by_flag.image, stack[2])
    channels = select(tmp_path / "q.tif", channels=(3, 1))
    assert channels.guess is None and np.array_equal(channels.image, stack[[3, 1]].transpose(1, 2, 0))
    assert np.array_equal(select(tmp_path / "q.tif", axes="ZYX", plane="max").image, stack.max(0))
    with pytest.raises(DataFileError, match="both --plane and --channels were given.*give --axes ZYX or CYX"):
        select(tmp_path / "q.tif", plane="mid", channels=(0,))


def test_zcyx_stacks_take_a_plane_then_channels(tmp_path):
    stack = planes(4 * 3).reshape(4, 3, H, W)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "raw.tif", stack, photometric="minisblack")
    known = select(tmp_path / "ij.tif", plane=1, channels=(2,))
    assert known.guess is None and known.selection == {"axes": "ZCYX", "plane": 1, "channels": [2]}
    assert np.array_equal(known.image, stack[1, 2])
    assert np.array_equal(select(tmp_path / "ij.tif", plane="max").image, stack.max(0).transpose(1, 2, 0))
    raw = select(tmp_path / "raw.tif", plane=1, channels=(2,))
    assert np.array_equal(raw.image, stack[1, 2]) and "ImageJ's order; if channels come first" in raw.guess
    swapped = select(tmp_path / "raw.tif", axes="CZYX", plane=1, channels=(2,))
    assert swapped.guess is None and np.array_equal(swapped.image, stack[2, 1])


def test_rgb_time_series_and_channel_selection_of_png(tmp_path):
    series = planes(2 * 3).reshape(2, H, W, 3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", series, photometric="rgb")  # QYXS: the leading axis holds planes
    selected = select(tmp_path / "t.tif", plane=1)
    assert selected.guess is None and np.array_equal(selected.image, series[1])
    Image.fromarray(series[0]).save(tmp_path / "a.png")
    grey = select(tmp_path / "a.png", channels=(1,))
    assert not grey.verbatim and np.array_equal(grey.image, series[0][..., 1])
    assert select(tmp_path / "a.png", channels=(0, 1, 2)).verbatim
    with pytest.raises(DataFileError, match=r"--channels 3: image has 3 channel\(s\) \(0..2, axes YXC\)"):
        select(tmp_path / "a.png", channels=(3,))


def test_layouts_that_fit_no_rule_are_errors_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((2, 3, 5, H, W), np.uint8), photometric="minisblack")
    with pytest.raises(DataFileError, match="five.tif: image has shape .*one plane axis and one channel axis"):
        select(tmp_path / "five.tif", plane="mid")
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((3, H, W - 1), np.uint8), photometric="minisblack")
    with pytest.raises(DataFileError, match=r"small.tif: image has shape \(3, 12, 15\) but its labels"):
        select(tmp_path / "small.tif")
    tifffile.imwrite(tmp_path / "z.tif", planes(3), photometric="minisblack")
    with pytest.raises(DataFileError, match="has shape .*3 axes, but --axes is ZCYX"):
        select(tmp_path / "z.tif", axes="ZCYX")


def test_option_parsing_names_the_option():
    assert parse_plane("MID") == "mid" and parse_plane("3") == 3 and parse_plane(None) is None
    assert parse_channels("0, 2") == (0, 2) and parse_axes("zcyx") == "ZCYX"
    for parse, text, message in ((parse_plane, "middle", "--plane 'middle': expected mid"),
                                 (parse_plane, "-1", "--plane '-1'"),
                                 (parse_channels, "0,0", "a channel is listed twice"),
                                 (parse_channels, "a", "--channels 'a': expected channel indices"),
                                 (parse_axes, "ZZYX", "--axes 'ZZYX': expected the letters"),
                                 (parse_axes, "QYX", "--axes 'QYX'"), (parse_axes, "ZY", "--axes 'ZY'")):
        with pytest.raises(ValueError, match=message):
            parse(text)
    with pytest.raises(ValueError, match="plane 'top' is not mid, max"):
        StackOptions(plane="top").check()
