"""Synthetic images: deterministic, canonical labels, distinct cell types, touching cells, written in the format."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, gaussian_filter
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from percs.cli import main
from percs.data.format import load_dataset
from percs.data.synthetic import CELL_STYLES, STYLES, synthetic_image, write_synthetic_dataset
from percs.flows import renumber

FLUORESCENCE = tuple(s.name for s in CELL_STYLES if s.modality == "fluorescence")


def test_same_seed_same_image_other_seed_other_image():
    a, b = synthetic_image((96, 80), FLUORESCENCE, seed=5), synthetic_image((96, 80), FLUORESCENCE, seed=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.instance_types == b.instance_types
    c = synthetic_image((96, 80), FLUORESCENCE, seed=6)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("shape, types", [((256, 256), ("round",)), ((64, 200), FLUORESCENCE),
                                          ((120, 90), ("ring", "blob")), ((1, 1), ("granular",)), ((5, 7), ("blob",))])
def test_labels_are_canonical_connected_and_typed(shape, types):
    sample = synthetic_image(shape, types, seed=1)
    assert sample.labels.shape == shape and sample.labels.dtype == np.int32
    assert np.array_equal(sample.labels, renumber(sample.labels))
    assert len(sample.instance_types) == sample.labels.max() and set(sample.instance_types) <= set(types)
    rgb = STYLES[types[0]].modality == "brightfield"
    assert sample.image.shape == (shape + (3,) if rgb else shape) and sample.image.dtype == np.uint8
    pieces = connected_components(sample.labels, background=0, connectivity=1)
    assert pieces.max() == sample.labels.max()  # every instance is one 4-connected piece


def _cell_stats(cell_type: str):
    """(median area, mean contrast to the background, fine texture: high-pass std inside cells / contrast)."""
    sample = synthetic_image((256, 256), (cell_type,), seed=2)
    labels = sample.labels
    grey = (sample.image if sample.image.ndim == 2 else sample.image.mean(-1)).astype(np.float64)
    areas = np.bincount(labels.ravel())[1:]
    contrast = grey[labels > 0].mean() - grey[labels == 0].mean()
    interior = (labels > 0) & ~binary_dilation(find_boundaries(labels), iterations=2)
    fine = (grey - gaussian_filter(grey, 2))[interior].std() / abs(contrast)
    return np.median(areas), contrast, fine


def test_cell_types_differ_in_size_intensity_and_texture():
    stats = {s.name: _cell_stats(s.name) for s in CELL_STYLES}
    area, contrast, fine = ({t: s[k] for t, s in stats.items()} for k in range(3))
    assert area["round"] < area["elongated"] < area["granular"]
    assert area["ring"] < area["blob"]
    assert contrast["round"] > contrast["elongated"] > contrast["granular"] > 0
    assert contrast["ring"] < 0 and contrast["blob"] < 0  # brightfield: cells darker than the background
    assert fine["granular"] > 2 * fine["round"] and fine["elongated"] > 2 * fine["round"]  # speckles, stripes
    assert fine["ring"] > 1.5 * fine["blob"]  # rim against an even stain


def test_elongated_cells_are_elongated():
    sample = synthetic_image((256, 256), ("elongated", "round"), seed=3)
    ratios = {t: [] for t in ("elongated", "round")}
    for region in regionprops(sample.labels):
        if region.area > 20 and region.axis_minor_length > 0:
            ratios[sample.instance_types[region.label - 1]].append(region.axis_major_length / region.axis_minor_length)
    assert np.median(ratios["elongated"]) > 1.8 > 1.3 > np.median(ratios["round"])


def test_cells_touch():
    labels = synthetic_image((256, 256), FLUORESCENCE, seed=4).labels
    a, b = labels[:, :-1], labels[:, 1:]
    touching = (a > 0) & (b > 0) & (a != b)
    assert len({(int(x), int(y)) for x, y in zip(a[touching], b[touching])}) >= 5


def test_dataset_is_written_in_the_format(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "syn", images_per_type=1, mixed_images=2, shape=(64, 64), seed=1)
    loaded = load_dataset(tmp_path / "syn")
    assert loaded.images == ds.images and len(ds.images) == len(CELL_STYLES) + 2
    assert {(t.name, t.modality) for t in ds.cell_types} == {(s.name, s.modality) for s in CELL_STYLES}
    for record in ds.images[: len(CELL_STYLES)]:
        assert set(record.instance_types) == {record.name.split("/")[0]}
    for record in ds.images[len(CELL_STYLES):]:
        assert len({ds.modality_of(t) for t in record.instance_types}) == 1 and len(set(record.instance_types)) > 1
    write_synthetic_dataset(tmp_path / "again", images_per_type=1, mixed_images=2, shape=(64, 64), seed=1)
    assert (tmp_path / "syn" / "manifest.json").read_text() == (tmp_path / "again" / "manifest.json").read_text()


def test_cli_writes_a_synthetic_dataset(tmp_path, capsys):
    assert main(["data", "synthetic", "--out", str(tmp_path / "s"), "--images-per-type", "1", "--mixed-images",
                 "0", "--size", "48", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 's'}: 5 images")
    assert load_dataset(tmp_path / "s").meta == {"generator": "percs.data.synthetic", "seed": 3}


@pytest.mark.parametrize("kwargs, message", [
    (dict(cell_types=("nope",)), "must be non-empty names"),
    (dict(cell_types=()), "must be non-empty names"),
    (dict(cell_types=("round", "ring")), "mix modality groups"),
    (dict(shape=(0, 5)), "must be \\(H, W\\)"),
    (dict(shape=(5, 5, 3)), "must be \\(H, W\\)"),
    (dict(fill=1.5), "fill=1.5"),
    (dict(noise=-1), "noise=-1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_image(**kwargs)
