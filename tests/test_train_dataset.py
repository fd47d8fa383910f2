"""The training Dataset: targets equal flows recomputed from its masks, flips, dynamic pasting with a gap inside a
modality group, references, determinism with DataLoader workers, padding, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from percs.data.build import BuildConfig, build_benchmark
from percs.data.dataset import Batch, SamplingConfig, TrainDataset, collate
from percs.data.format import DatasetError, load_dataset
from percs.data.io import DataFileError
from percs.data.scale import equivalent_diameter
from percs.data.synthetic import write_synthetic_dataset
from percs.flows import masks_to_flows
from real_subsets import NOVEL, build_subset_benchmark, import_consep_subset

SQUARE = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real subsets as a benchmark without fixed mixed images (the Dataset pastes by itself)."""
    return load_dataset(build_subset_benchmark(tmp_path_factory.mktemp("real"), variants=0))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "src", images_per_type=3, mixed_images=0, shape=(96, 120), seed=1)
    return build_benchmark([root / "src"], root / "bench", BuildConfig(variants=0, test_fraction=0.0))


def _centre_is_tied(cell: np.ndarray) -> bool:
    """Whether several pixels of a cell are nearest its median (y, x): the flow kernel then breaks the tie in
    raster order, which a flip does not preserve."""
    ys, xs = np.nonzero(cell)
    d = (ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2
    return int((d == d.min()).sum()) > 1


def test_flows_of_cropped_flipped_pasted_items_equal_flows_recomputed_from_their_masks(real):
    dataset = TrainDataset(real, "train", SamplingConfig(flip_probability=1.0), seed=2, length=12)
    checked, tied, pasted_checked = 0, 0, 0
    for index in range(len(dataset)):
        item = dataset[index]
        instances, flows = item.instances.numpy(), item.flows.numpy()
        recomputed = masks_to_flows(instances)
        assert not flows[:, instances == 0].any()
        S = instances.shape[0]
        border = set(np.unique(np.r_[instances[0], instances[-1], instances[:, 0], instances[:, -1]]).tolist())
        for label, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is None or label in border:
                continue  # cut by the crop border: its flows are those of the whole cell
            cell = instances[box] == label
            if _centre_is_tied(cell):
                tied += 1
                continue
            np.testing.assert_allclose(flows[(slice(None),) + box][:, cell], recomputed[(slice(None),) + box][:, cell],
                                       atol=1e-5)
            checked += 1
            pasted_checked += bool(item.pasted[label - 1])
        assert S == 224
    assert checked > 200 and pasted_checked > 50 and tied < 0.2 * checked


def test_flips_flip_the_image_the_masks_and_the_flow_vectors(real):
    plain = TrainDataset(real, "train", SamplingConfig(flip_probability=0.0), seed=5)[1]
    flipped = TrainDataset(real, "train", SamplingConfig(flip_probability=1.0), seed=5)[1]
    assert torch.equal(flipped.image, plain.image.flip(1, 2))
    assert torch.equal(flipped.flows, -plain.flows.flip(1, 2))
    assert torch.equal(flipped.same_type, plain.same_type.flip(0, 1))
    assert torch.equal(flipped.instances > 0, (plain.instances > 0).flip(0, 1))
    assert torch.equal(flipped.instance_types.sort().values, plain.instance_types.sort().values)


def test_pasted_cells_keep_a_gap_come_from_the_split_and_stay_in_the_group(real):
    dataset = TrainDataset(real, "train", SamplingConfig(), seed=3, length=9)
    train_types = {t for r in real.in_split("train") for t in r.instance_types}
    assert not train_types & set(NOVEL)
    names = [t.name for t in real.cell_types]
    n_pasted = 0
    for index in range(len(dataset)):
        item = dataset[index]
        own = set(dataset.records[index % len(dataset.records)].instance_types)
        instances = item.instances.numpy()
        for k in np.flatnonzero(item.pasted.numpy()):
            cell = instances == k + 1
            assert not (ndimage.binary_dilation(cell, SQUARE) & (instances > 0) & ~cell).any()
            cell_type = names[int(item.instance_types[k])]
            assert cell_type in train_types and cell_type not in own
            assert real.modality_of(cell_type) in {real.modality_of(t) for t in own}
            n_pasted += 1
        assert {names[int(t)] for t in item.instance_types} <= train_types
    assert n_pasted > 50


def _reference_checks(item: torch.Tensor) -> None:
    same = item.same_type.numpy() > 0
    ids = np.flatnonzero(item.instance_types.numpy() == int(item.reference_type)) + 1
    assert np.array_equal(same, np.isin(item.instances.numpy(), ids))
    mask = item.reference_mask.numpy() > 0
    assert ndimage.label(mask)[1] == 1 and item.reference_image.shape == (3, 224, 224)
    ys, xs = np.nonzero(mask)
    assert abs((ys.min() + ys.max() + 1) / 2 - 112) <= 1 and abs((xs.min() + xs.max() + 1) / 2 - 112) <= 1


def test_references_present_or_absent(real):
    present = TrainDataset(real, "train", SamplingConfig(absent_fraction=0.0), seed=1, length=6)
    absent = TrainDataset(real, "train", SamplingConfig(absent_fraction=1.0, paste=False), seed=1, length=6)
    n_absent = 0
    for index in range(6):
        item = present[index]
        _reference_checks(item)
        assert int(item.reference_type) in item.instance_types.tolist() and item.same_type.any()
        item = absent[index]
        _reference_checks(item)
        types = {real.cell_types[int(t)].name for t in item.instance_types}
        if set(absent.reference_types) <= types:  # every type of the split is in the crop: none can be absent
            assert item.same_type.any()
        else:
            assert int(item.reference_type) not in item.instance_types.tolist() and not item.same_type.any()
            n_absent += 1
    assert n_absent >= 3


def test_images_smaller_than_the_crop_are_padded(real):
    narrow = [i for i, r in enumerate(real.in_split("novel")) if r.shape[1] < 224]
    dataset = TrainDataset(real, "novel", SamplingConfig(), seed=0)
    item = dataset[narrow[0]]
    valid = item.valid.numpy()
    assert valid.all(axis=1).sum() == 0 and valid.any(axis=0).sum() == real.in_split("novel")[narrow[0]].shape[1]
    assert not item.instances.numpy()[~valid].any() and not item.flows.numpy()[:, ~valid].any()


def test_deterministic_per_item_epoch_and_with_workers(synthetic):
    config = SamplingConfig(crop_size=56, reference_size=42)
    a, b = TrainDataset(synthetic, "train", config, seed=7), TrainDataset(synthetic, "train", config, seed=7)
    first = [a[i] for i in range(len(a))]
    for x, y in zip(first, [b[i] for i in range(len(b))]):
        assert all(torch.equal(getattr(x, k), getattr(y, k)) for k in vars(x))
    a.set_epoch(1)
    assert not all(torch.equal(x.image, a[i].image) for i, x in enumerate(first))
    a.set_epoch(0)
    in_process = list(torch.utils.data.DataLoader(a, batch_size=4, collate_fn=collate))
    workers = list(torch.utils.data.DataLoader(a, batch_size=4, collate_fn=collate, num_workers=2))
    assert isinstance(in_process[0], Batch) and len(in_process) == len(workers)
    for x, y in zip(in_process, workers):
        assert all(torch.equal(getattr(x, k), getattr(y, k)) for k in vars(x))
    batch = in_process[0]
    assert batch.image.shape == (4, 3, 56, 56) and batch.flows.shape == (4, 2, 56, 56)
    assert batch.reference_image.shape == (4, 3, 42, 42) and batch.reference_mask.shape == (4, 42, 42)
    assert batch.instance_types.shape == batch.pasted.shape and batch.instances.dtype == torch.int64
    for b in range(4):  # padding of the per-instance tensors
        k = int(batch.instances[b].max())
        assert (batch.instance_types[b, :k] >= 0).all() and (batch.instance_types[b, k:] == -1).all()


def test_pannuke_protocol_pastes_nothing_and_never_targets_distractors(tmp_path):
    source = import_consep_subset(tmp_path)
    bench = build_benchmark([source], tmp_path / "bench", BuildConfig(distractor_types=("other",)))
    dataset = TrainDataset(bench, "train", SamplingConfig(absent_fraction=0.5), seed=0, length=8)
    assert not dataset.paste and dataset.reference_types == ["epithelial", "inflammatory", "spindle"]
    for index in range(len(dataset)):
        item = dataset[index]
        assert not item.pasted.any() and bench.cell_types[int(item.reference_type)].name != "other"


def test_input_errors(synthetic):
    with pytest.raises(ValueError, match="crop_size is 100, expected a positive multiple of the patch size 14"):
        TrainDataset(synthetic, "train", SamplingConfig(crop_size=100))
    with pytest.raises(ValueError, match="absent_fraction is 1.5"):
        TrainDataset(synthetic, "train", SamplingConfig(absent_fraction=1.5))
    with pytest.raises(ValueError, match="has no images in split 'test'"):
        TrainDataset(synthetic, "test")
    with pytest.raises(IndexError, match="index 99 is out of range"):
        TrainDataset(synthetic, "train")[99]
    with pytest.raises(ValueError, match="collate got no items"):
        collate([])


def test_bad_files_are_named(synthetic, tmp_path):
    copy = build_benchmark([synthetic.root], tmp_path / "copy", BuildConfig(variants=0, test_fraction=0.0))
    record = copy.in_split("train")[0]
    image_path = copy.root / record.image
    image_path.write_bytes(image_path.read_bytes()[:50])
    with pytest.raises(DatasetError, match=f"{image_path}: sha256"):
        TrainDataset(copy.root)
    dataset = TrainDataset(load_dataset(copy.root, verify=False), "train")
    with pytest.raises(DataFileError, match=f"{image_path}: cannot read image"):
        dataset[0]
    labels_path = copy.root / copy.in_split("train")[1].labels
    labels_path.write_bytes(b"not a tiff")
    with pytest.raises(DataFileError, match=f"{labels_path}: cannot read labels"):
        TrainDataset(load_dataset(copy.root, verify=False), "train")


@pytest.mark.parametrize("sampling, expected_share", [("cell", 0.75), ("type", 0.5)])
def test_reference_type_follows_the_sampling_rule(real, sampling, expected_share):
    """Three cells of one type and one of another: "cell" picks the first type 3 times in 4, "type" 1 in 2."""
    dataset = TrainDataset(real, "train", SamplingConfig(absent_fraction=0.0, reference_sampling=sampling), seed=0)
    major, minor = dataset.reference_types[:2]
    canvas = dataset._crop(0, np.random.default_rng(0))
    canvas.types = {1: major, 2: minor, 3: major, 4: major}
    rng = np.random.default_rng(5)
    draws = [dataset._reference_type(canvas, rng) for _ in range(4000)]
    assert set(draws) == {major, minor}
    assert abs(draws.count(major) / len(draws) - expected_share) < 0.03


def test_reference_sampling_is_checked():
    with pytest.raises(ValueError, match="reference_sampling"):
        SamplingConfig(reference_sampling="area").check()


@pytest.mark.parametrize("diameter", [20.0, 40.0])
def test_reference_diameter_resizes_each_item_by_its_reference(real, diameter):
    """Without jitter the reference cell comes out `diameter` px across (nearest resizing: within 10%) unless its
    scale met the 4x limit; the crop keeps crop_size, its flows stay unit vectors inside cells, and the cells of the
    reference's type are resized with it (their median within 2x of the reference's size in 7 of 10 items here)."""
    config = SamplingConfig(scale_jitter=0.0, absent_fraction=0.0)
    dataset = TrainDataset(real, "train", config, seed=3, length=10, reference_diameter=diameter)
    on_size, near = 0, 0
    for item in (dataset[i] for i in range(10)):
        assert item.image.shape == (3, 224, 224) and item.reference_mask.shape == (224, 224)
        assert item.flows.norm(dim=0)[item.instances > 0].max() <= 1 + 1e-5
        across = equivalent_diameter(float(item.reference_mask.sum()))
        on_size += abs(across / diameter - 1) < 0.1
        ids, areas = np.unique(item.instances[item.same_type > 0].numpy(), return_counts=True)
        if len(ids):
            near += 0.5 < equivalent_diameter(np.median(areas)) / diameter < 2
    assert on_size >= 9 and near >= 7
    jittered = TrainDataset(real, "train", SamplingConfig(scale_jitter=0.25, absent_fraction=0.0), seed=3, length=10,
                            reference_diameter=diameter)
    sizes = [equivalent_diameter(float(jittered[i].reference_mask.sum())) / diameter for i in range(10)]
    assert all(1 / 1.25 - 0.1 < s < 1.25 + 0.1 for s in sizes if s > 0.75) and np.std(sizes) > 0.03


def test_reference_diameter_and_jitter_are_checked(real):
    with pytest.raises(ValueError, match="reference_diameter must be 0 .off. or a number of pixels >= 1"):
        TrainDataset(real, "train", reference_diameter=-2)
    with pytest.raises(ValueError, match="scale_jitter is -0.1, expected a finite number >= 0"):
        SamplingConfig(scale_jitter=-0.1).check()
