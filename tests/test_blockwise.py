"""Blockwise prediction (percs.predict.blockwise): the block grid, exact stitching, whole-image normalisation
from histograms, and a mosaic of real images with cells on block borders and corners segmented on a dask
LocalCluster of two workers, against whole-image prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from blockwise_helpers import BLOCK, PREDICT, cluster, mosaic, mosaic_of_real_cells  # noqa: F401  (fixtures)
from predict_helpers import ThresholdModel, instance_threshold_model

from percs.data.normalize import channel_range
from percs.flows import renumber
from percs.metrics import evaluate
from percs.predict.api import Segmenter
from percs.predict.blocks import assemble_core, block_grid, context_step, global_ids, neighbours, owned_cells
from percs.predict.blockwise import BlockwiseConfig, ReferenceRegion, reference_region_embedding, segment_blockwise
from percs.predict.image_stats import merge_statistics, ranges_from_statistics, region_counts
from percs.predict.source import ImageSource

pytestmark = pytest.mark.usefixtures("one_thread")

def crossing_cells(labels: np.ndarray, block: int) -> np.ndarray:
    """The ids of the cells of labels (H, W) that cross a block border (their pixels lie in several blocks)."""
    ids = []
    for axis in (0, 1):
        lines = np.arange(block, labels.shape[axis], block)
        before = np.take(labels, lines - 1, axis=axis)
        after = np.take(labels, lines, axis=axis)
        ids.append(before[(before == after) & (before > 0)])
    return np.unique(np.concatenate([i.ravel() for i in ids]))


def test_block_grid_cores_tile_the_image_and_contexts_sit_on_the_window_grid():
    for shape, block, overlap, stride in [((1000, 1300), 256, 100, 84), ((256, 255), 512, 30, 42),
                                          ((700, 40), 64, 64, 168), ((17, 900), 96, 0, 30)]:
        grid = block_grid(shape, block, overlap, stride)
        covered = np.zeros(shape, np.int32)
        for row in grid:
            for b in row:
                y0, y1, x0, x1 = b.core
                cy0, cy1, cx0, cx1 = b.context
                covered[y0:y1, x0:x1] += 1
                assert cy0 % context_step(stride) == 0 and cx0 % context_step(stride) == 0
                assert cy0 <= max(0, y0 - overlap) and cx0 <= max(0, x0 - overlap)
                assert cy1 == min(shape[0], y1 + overlap) and cx1 == min(shape[1], x1 + overlap)
        assert (covered == 1).all()


def test_block_size_smaller_than_the_overlap_is_refused():
    with pytest.raises(ValueError, match="block size 100 is smaller than the overlap 150"):
        block_grid((1000, 1000), 100, 150, 84)


def stitch_from_whole(labels: np.ndarray, block: int, overlap: int):
    """Blockwise stitching of an exact segmentation: each block's labels are the whole image's cut to its
    context (cells at its cut edges cut too), renumbered canonically."""
    grid = block_grid(labels.shape, block, overlap, 14)
    blocks = [b for row in grid for b in row]
    owned = []
    for b in blocks:
        cy0, cy1, cx0, cx1 = b.context
        context = renumber(labels[cy0:cy1, cx0:cx1])
        owned.append(owned_cells(context, np.ones(context.shape, np.float32), b, labels.shape))
    lookups = global_ids([o.anchors for o in owned], labels.shape[1])
    out = np.zeros(labels.shape, np.int32)
    width = len(grid[0])
    for b in blocks:
        parts = [(owned[i].labels, owned[i].origin, lookups[i])
                 for i in (n.index[0] * width + n.index[1] for n in neighbours(grid, b))]
        y0, y1, x0, x1 = b.core
        out[y0:y1, x0:x1] = assemble_core(b.core, parts)
    return out, sum(int(o.cut.sum()) for o in owned)


@pytest.mark.parametrize("seed", range(6))
def test_stitching_an_exact_segmentation_gives_it_back_exactly(seed):
    """Cells smaller than the overlap, many of them on block borders and corners: the stitched labels are the
    whole image's, ids and all (raster order of first pixels), none cut, none twice."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(150, 400, 2))
    block = int(rng.choice([48, 64, 80]))
    labels = np.zeros(shape, np.int32)
    corners = [(y, x) for y in range(block, shape[0], block) for x in range(block, shape[1], block)]
    centres = corners + [tuple(rng.integers(0, shape)) for _ in range(40)]
    for k, (cy, cx) in enumerate(centres, start=1):
        rr, cc = ellipse(cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2), rng.uniform(3, 14), rng.uniform(3, 14),
                         shape=shape, rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = k
    labels = renumber(labels)
    stitched, cut = stitch_from_whole(labels, block, overlap=30)
    assert cut == 0
    np.testing.assert_array_equal(stitched, labels)


def test_a_cell_larger_than_the_overlap_comes_out_once_and_is_reported_cut():
    """Its block sees only part of it (the overlap was too small): that part comes out, once, and is counted."""
    labels = np.zeros((200, 200), np.int32)
    labels[20:180, 90:110] = 1  # 160 pixels tall, blocks of 64 with an overlap of 20
    labels[100:104, 10:14] = 2
    stitched, cut = stitch_from_whole(renumber(labels), 64, 20)
    assert cut == 1
    np.testing.assert_array_equal(np.unique(stitched), [0, 1, 2])
    assert (stitched[labels == 2] == 2).all() and (stitched[labels == 0] == 0).all()
    assert ((stitched == 1) <= (labels == 1)).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, bool])
def test_ranges_from_region_histograms_equal_numpys_percentiles(dtype):
    rng = np.random.default_rng(3)
    for trial in range(20):
        shape = tuple(int(s) for s in rng.integers(1, 80, 2)) + (2,)
        if dtype is bool:
            image = rng.random(shape) < rng.random()
        else:
            info = np.iinfo(dtype)
            image = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype) // (1 + trial % 3)
        cut = int(rng.integers(0, shape[0] + 1))
        parts = [region_counts(image[a:b], (a, 0), shape[:2], [0, 1]) for a, b in ((0, cut), (cut, shape[0])) if b > a]
        lower, upper = sorted(rng.uniform(0, 100, 2))
        got = ranges_from_statistics(merge_statistics(parts), lower, upper)
        for c in (0, 1):
            assert got[c] == channel_range(image[..., c], lower, upper)


def assert_blockwise_agrees(image, reference_image, reference_mask, client, labels_path) -> int:
    """Blockwise labels of image on the client's cluster against whole-image prediction: AP@0.5 >= 0.99 over
    all cells and over the cells that cross block borders; ids 1..N in raster order; returns the count of
    crossing cells."""
    import tifffile
    import zarr

    segmenter = Segmenter(ThresholdModel(), PREDICT)
    reference = segmenter.reference(reference_image, reference_mask)
    whole = segmenter.segment(image, reference).labels
    result = segment_blockwise(segmenter, image, reference, labels_path,
                               BlockwiseConfig(block_size=BLOCK, scheduler=client, progress=False))
    labels = zarr.open_array(str(result.labels), mode="r")[:]
    assert evaluate(whole, labels, 0.5)[0].pooled.ap >= 0.99
    # Not identical: Euler positions round differently in a block's frame and the whole image's.
    assert ((labels > 0) == (whole > 0)).mean() > 0.999
    crossing = crossing_cells(whole, BLOCK)
    on_borders = np.isin(whole, crossing)
    assert evaluate(np.where(on_borders, whole, 0), np.where(on_borders, labels, 0), 0.5)[0].pooled.ap >= 0.99
    assert labels.max() == result.n_cells == len(np.unique(labels)) - 1  # ids 1..N, consecutive
    np.testing.assert_array_equal(renumber(labels), labels)  # numbered in raster order of first pixels
    assert result.cut_cells == 0 and result.resumed == 0 and not Path(str(labels_path) + ".blocks").exists()
    np.testing.assert_array_equal(result.cells["area"], np.bincount(labels.ravel())[1:])
    if result.tiff is not None:
        np.testing.assert_array_equal(tifffile.imread(result.tiff), labels)
    return len(crossing)


def test_blockwise_labels_agree_with_whole_image_prediction_on_a_local_cluster(mosaic, cluster, tmp_path):
    assert assert_blockwise_agrees(*mosaic, cluster, tmp_path / "labels.zarr") >= 30  # cells on every border


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PERCS_LARGE_TESTS") != "1", reason="a 6k x 6k mosaic: set PERCS_LARGE_TESTS=1")
def test_a_6k_mosaic_agrees_with_whole_image_prediction(cluster, tmp_path):
    assert assert_blockwise_agrees(*mosaic_of_real_cells(6144, seed=1), cluster, tmp_path / "labels.zarr") >= 300


class FailingModel(ThresholdModel):
    """ThresholdModel that fails on its `fail_after`-th window batch (same weights, so the same settings)."""

    def __init__(self, fail_after: int):
        super().__init__()
        self.calls, self.fail_after = 0, fail_after

    def forward(self, images, reference_embedding):
        self.calls += 1
        if self.calls == self.fail_after:
            raise RuntimeError("killed")
        return super().forward(images, reference_embedding)


def test_a_killed_run_resumes_its_finished_blocks(mosaic, tmp_path):
    image = mosaic[0][:1024, :1024]
    reference = Segmenter(ThresholdModel(), PREDICT).reference(mosaic[1], mosaic[2])
    config = BlockwiseConfig(block_size=256, progress=False)
    fresh = segment_blockwise(Segmenter(ThresholdModel(), PREDICT), image, reference, tmp_path / "a.zarr", config)
    failing = FailingModel(fail_after=30)
    with pytest.raises(RuntimeError, match="killed"):
        segment_blockwise(Segmenter(failing, PREDICT), image, reference, tmp_path / "b.zarr", config)
    done = len(list((tmp_path / "b.zarr.blocks").glob("block_*.npz")))
    assert 0 < done < fresh.n_blocks
    counting = FailingModel(fail_after=-1)
    resumed = segment_blockwise(Segmenter(counting, PREDICT), image, reference, tmp_path / "b.zarr", config)
    assert resumed.resumed == done and 0 < counting.calls < failing.calls * fresh.n_blocks / done
    import zarr

    first, second = (zarr.open_array(str(tmp_path / name))[:] for name in ("a.zarr", "b.zarr"))
    np.testing.assert_array_equal(first, second)


def test_an_unfinished_run_with_other_settings_is_not_resumed(mosaic, tmp_path):
    image = mosaic[0][:512, :512]
    reference = Segmenter(ThresholdModel(), PREDICT).reference(mosaic[1], mosaic[2])
    (tmp_path / "c.zarr.blocks").mkdir()
    (tmp_path / "c.zarr.blocks" / "settings.json").write_text("{}")
    config = BlockwiseConfig(block_size=256, progress=False)
    with pytest.raises(ValueError, match="unfinished run with other settings"):
        segment_blockwise(Segmenter(ThresholdModel(), PREDICT), image, reference, tmp_path / "c.zarr", config)
    restarted = BlockwiseConfig(block_size=256, progress=False, restart=True)
    segmenter = Segmenter(ThresholdModel(), PREDICT)
    assert segmenter.segment_large(image, reference, tmp_path / "c.zarr", restarted).n_cells > 0


def test_input_errors_name_the_problem(mosaic, tmp_path):
    image, reference_image, reference_mask = mosaic
    segmenter = Segmenter(ThresholdModel(), PREDICT)
    reference = segmenter.reference(reference_image, reference_mask)
    with pytest.raises(ValueError, match="block size 128 is smaller than the overlap"):
        segment_blockwise(segmenter, image, reference, tmp_path / "x.zarr", BlockwiseConfig(block_size=128))
    with pytest.raises(ValueError, match="block_size must be a positive multiple of 16"):
        BlockwiseConfig(block_size=500)
    region = ReferenceRegion(ImageSource.from_array(image), np.ones((20, 20), bool), (2040, 100))
    with pytest.raises(ValueError, match="reference cell is outside the image"):
        reference_region_embedding(segmenter, region)
    with pytest.raises(ValueError, match="overlap is needed without a reference cell"):
        segment_blockwise(segmenter, image, None, tmp_path / "y.zarr")


def test_a_reference_inside_the_large_image_is_embedded_as_in_the_whole_image(mosaic):
    """The reference window read from the large image and normalised with its ranges is the window that the
    whole, normalised image gives."""
    from percs.model.percs_dino import PerCSOutput  # noqa: F401  (the FieldModel-like embedding below)

    image = mosaic[0]
    mask = np.zeros(image.shape[:2], bool)
    mask[1000:1012, 700:716] = True

    class WindowSum(ThresholdModel):
        def embed_reference(self, images, masks):
            return images.flatten(1).double().sum(1, keepdim=True).float()

    segmenter = Segmenter(WindowSum(), PREDICT)
    whole = segmenter.reference(image, mask).embedding
    region = ReferenceRegion(ImageSource.from_array(image), mask[1000:1012, 700:716], (1000, 700))
    assert torch_close(reference_region_embedding(segmenter, region), whole)


def torch_close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-6, atol=0))


def test_an_instance_level_model_runs_block_by_block_as_on_the_whole_image(mosaic, tmp_path):
    """Every blob found, each kept by its (window-embedded, so block-independent) vectors' distance to the
    reference's: the blockwise labels agree with whole-image segmentation, a reference inside the large image
    gives the reference's vectors, and the decision drops some cells."""
    import torch

    model = instance_threshold_model()
    image, reference_image, reference_mask = mosaic
    segmenter = Segmenter(model, PREDICT)
    reference = segmenter.reference(reference_image, reference_mask)
    found = segmenter.segment(image, reference)
    probabilities = found.probability[found.candidates.labels.numpy() > 0]
    model.instance.threshold = float(np.median(probabilities))          # about half the cells kept
    whole = segmenter.segment(image, reference).labels
    assert 0 < whole.max() < len(found.candidates.cells)
    result = segment_blockwise(segmenter, image, reference, tmp_path / "labels.zarr",
                               BlockwiseConfig(block_size=BLOCK, progress=False))
    import zarr

    labels = zarr.open_array(str(result.labels), mode="r")[:]
    assert evaluate(whole, labels, 0.5)[0].pooled.ap >= 0.99
    cells = found.candidates.labels.numpy()
    negative = segmenter.reference(image, cells == int(found.candidates.cells[len(found.candidates.cells) // 2]))
    more = segmenter.reference(image, cells == int(found.candidates.cells[1]))
    whole = segmenter.segment(image, references=[reference, more], negatives=[negative]).labels
    result = segment_blockwise(segmenter, image, reference, tmp_path / "several.zarr",
                               BlockwiseConfig(block_size=BLOCK, progress=False), positives=[more],
                               negatives=[negative])
    assert evaluate(whole, zarr.open_array(str(result.labels), mode="r")[:], 0.5)[0].pooled.ap >= 0.99
    with pytest.raises(ValueError, match="instance-level decision"):
        segment_blockwise(Segmenter(ThresholdModel(), PREDICT), image, reference, tmp_path / "x.zarr",
                          BlockwiseConfig(block_size=BLOCK, progress=False), negatives=[negative])
    model.instance.margin = 0.5
    try:
        with pytest.raises(ValueError, match="margin .* needs the whole image"):
            segment_blockwise(segmenter, image, reference, tmp_path / "m.zarr", BlockwiseConfig(block_size=BLOCK))
    finally:
        model.instance.margin = None
    inside = np.zeros(image.shape[:2], bool)
    inside[found.candidates.labels.numpy() == int(found.candidates.cells[5])] = True
    rows, cols = np.nonzero(inside)
    crop = inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    region = ReferenceRegion(ImageSource.from_array(image), crop, (int(rows.min()), int(cols.min())))
    vectors, descriptors = reference_region_embedding(segmenter, region)
    expected = segmenter.reference(image, inside).vectors
    # the same window, sampled at centroids computed in the crop's frame and the image's: equal to rounding
    torch.testing.assert_close(vectors, expected[0], rtol=0, atol=1e-3)
    torch.testing.assert_close(descriptors, expected[1], rtol=1e-5, atol=1e-5)


def test_blockwise_runs_at_the_references_scale_as_the_whole_image(mosaic, tmp_path):
    """predict.reference_diameter: every block runs at the scale the reference sets (here half size), with the
    overlap counted in the image's pixels; the labels agree with the whole image's at that scale."""
    import dataclasses

    import zarr

    from percs.data.scale import equivalent_diameter

    image, reference_image, reference_mask = mosaic
    image = image[:1024, :1024]
    predict = dataclasses.replace(PREDICT, reference_diameter=equivalent_diameter(reference_mask.sum()) / 2)

    class Counting(ThresholdModel):
        windows = 0

        def forward(self, images, reference_embedding):
            self.windows += images.shape[0]
            return super().forward(images, reference_embedding)

    half, full = Counting(), Counting()
    segmenter = Segmenter(half, predict)
    reference = segmenter.reference(reference_image, reference_mask)
    assert reference.scale == 0.5
    whole = segmenter.segment(image, reference).labels
    native = Segmenter(full, PREDICT)
    native.segment(image, native.reference(reference_image, reference_mask))
    assert whole.shape == image.shape[:2] and whole.max() > 10
    assert half.windows == 36 and full.windows == 144     # 112-px windows, stride 84, over 512^2 and 1024^2
    result = segment_blockwise(segmenter, image, reference, tmp_path / "half.zarr",
                               BlockwiseConfig(block_size=BLOCK, progress=False))
    assert evaluate(whole, zarr.open_array(str(result.labels), mode="r")[:], 0.5)[0].pooled.ap >= 0.98
