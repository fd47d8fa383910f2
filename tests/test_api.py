"""percs.api.Segmenter: references given two ways, results, the second filter, checkpoints, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import tiny_model
from predict_helpers import FieldModel, ThresholdModel, cell_field, checkpoint_config, write_tiny_checkpoint
from scipy.special import expit

from conftest import data_dir
from percs.api import Reference, SegmentationResult, Segmenter
from percs.data.synthetic import synthetic_image
from percs.metrics import evaluate
from percs.predict import PredictorConfig
from percs.train.checkpoint import CheckpointError
from percs.train.setup import build_model

SMALL = PredictorConfig(window=56, stride=42, reference_window=56, niter=50)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machines have two loaded cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_image((112, 130), seed=1)


def squares() -> np.ndarray:
    """(60, 80) labels 1..4 in raster order: four 12 x 12 squares."""
    labels = np.zeros((60, 80), np.int32)
    for cell, (top, left) in enumerate([(4, 6), (5, 40), (30, 10), (32, 50)], start=1):
        labels[top : top + 12, left : left + 12] = cell
    return labels


def test_reference_as_mask_or_as_label_gives_the_same_embedding(synthetic):
    segmenter = Segmenter(tiny_model(), SMALL)
    by_mask = segmenter.reference(synthetic.image, synthetic.labels == 7)
    by_label = segmenter.reference(synthetic.image, labels=synthetic.labels, label=7)
    other = segmenter.reference(synthetic.image, (synthetic.labels == 3).astype(np.uint8))
    assert isinstance(by_mask, Reference) and by_mask.embedding.shape == (32,)
    assert torch.equal(by_mask.embedding, by_label.embedding)
    np.testing.assert_array_equal(by_label.mask, synthetic.labels == 7)
    assert not torch.allclose(by_mask.embedding, other.embedding)


def test_segment_returns_numpy_arrays_of_the_documented_shapes(synthetic):
    segmenter = Segmenter(tiny_model(), SMALL)
    result = segmenter.segment(synthetic.image, segmenter.reference(synthetic.image, synthetic.labels == 1))
    height, width = synthetic.image.shape
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == (height, width) and result.labels.dtype == np.int32
    assert result.probability.shape == (height, width) and result.probability.dtype == np.float32
    assert result.flows.shape == (2, height, width) and result.flows.dtype == np.float32
    assert result.cell_probability.shape == (result.labels.max(),)
    assert 0 < result.probability.min() <= result.probability.max() < 1


def test_a_known_field_gives_back_the_true_cells_and_their_mean_probability(synthetic):
    labels = synthetic.labels
    logits = {cell: 1.0 + cell / 10 for cell in range(1, labels.max() + 1)}
    field = cell_field(labels, logits)
    segmenter = Segmenter(FieldModel(), SMALL)
    result = segmenter.segment(field, segmenter.reference(field, labels == 1))
    np.testing.assert_array_equal(result.labels, labels)
    expected = expit(np.array([logits[cell] for cell in range(1, labels.max() + 1)]))
    np.testing.assert_allclose(result.cell_probability, expected, rtol=1e-6)


def test_second_filter_drops_unlikely_cells_and_renumbers_in_raster_order():
    labels = squares()
    field = cell_field(labels, {1: 0.4, 2: 3.0, 3: 0.2, 4: 2.5})  # probabilities 0.60, 0.95, 0.55, 0.92
    unfiltered = Segmenter(FieldModel(), SMALL)
    reference = unfiltered.reference(field, labels == 2)
    np.testing.assert_array_equal(unfiltered.segment(field, reference).labels, labels)
    result = Segmenter(FieldModel(), SMALL, min_cell_probability=0.9).segment(field, reference)
    expected = np.where(labels == 2, 1, np.where(labels == 4, 2, 0))
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels.dtype == np.int32
    np.testing.assert_allclose(result.cell_probability, expit([3.0, 2.5]), rtol=1e-6)
    kept_all = Segmenter(FieldModel(), SMALL, min_cell_probability=0.0).segment(field, reference)
    np.testing.assert_array_equal(kept_all.labels, labels)


def test_generic_model_ignores_the_reference(synthetic):
    segmenter = Segmenter(tiny_model(generic=True), SMALL)
    first = segmenter.reference(synthetic.image, synthetic.labels == 1)
    second = segmenter.reference(synthetic.image, synthetic.labels == 9)
    assert first.embedding is None
    results = [segmenter.segment(synthetic.image, r) for r in (first, second, None)]
    for result in results[1:]:
        np.testing.assert_array_equal(result.probability, results[0].probability)
        np.testing.assert_array_equal(result.labels, results[0].labels)


def test_segment_many_is_lazy_and_equals_segment():
    labels = squares()
    fields = [cell_field(labels, {1: 2.0, 2: 2.0, 3: 2.0, 4: 2.0}), cell_field(labels, {2: 2.0})]
    segmenter = Segmenter(FieldModel(), SMALL)
    reference = segmenter.reference(fields[0], labels == 1)
    read = []

    def images():
        for field in fields:
            read.append(1)
            yield field

    results = segmenter.segment_many(images(), reference)
    first = next(results)
    assert len(read) == 1 and first.labels.max() == 4
    assert [r.labels.max() for r in results] == [1]


def test_from_checkpoint_restores_the_model_and_applies_overrides(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "best.pt")
    segmenter = Segmenter.from_checkpoint(path, device="cpu", predict={"batch_size": 3}, min_cell_probability=0.5)
    assert segmenter.predictor.config == PredictorConfig(window=56, stride=42, batch_size=3, niter=50)
    assert segmenter.min_cell_probability == 0.5 and not segmenter.generic
    torch.manual_seed(0)
    original = Segmenter(build_model(checkpoint_config(tmp_path).model), segmenter.predictor.config)
    image = synthetic_image((70, 84), seed=2)
    results = [s.segment(image.image, s.reference(image.image, image.labels == 1)) for s in (segmenter, original)]
    np.testing.assert_array_equal(results[0].probability, results[1].probability)
    with pytest.raises(ValueError, match=r"predict has unknown keys \['windows'\]"):
        Segmenter.from_checkpoint(path, device="cpu", predict={"windows": 3})


def test_from_checkpoint_of_a_generic_model(tmp_path):
    segmenter = Segmenter.from_checkpoint(write_tiny_checkpoint(tmp_path / "g.pt", generic=True), device="cpu")
    assert segmenter.generic


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "best.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        Segmenter.from_checkpoint(path, device="cpu")


def test_real_image_reference_two_ways_and_cells_found():
    import tifffile

    folder = data_dir("stardist_sample")
    image, truth = tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")
    label = int(truth.max())  # ids are not contiguous: 183 is the last of 125 nuclei
    segmenter = Segmenter(tiny_model(), PredictorConfig(window=224, stride=224))
    by_label = segmenter.reference(image, labels=truth, label=label)
    by_mask = segmenter.reference(image, truth == label)
    assert torch.equal(by_label.embedding, by_mask.embedding)
    found = Segmenter(ThresholdModel(), PredictorConfig(window=224, stride=168)).segment(image, by_label)
    stats = evaluate(truth.astype(np.int32), found.labels, 0.5)[0]
    assert stats.n_true == 125 and stats.tp >= 30  # bright blobs: separate nuclei found, touching ones merged
    np.testing.assert_allclose(
        found.cell_probability, [found.probability[found.labels == c].mean() for c in range(1, stats.n_pred + 1)],
        rtol=1e-5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"reference_mask": np.zeros((60, 80), bool)}, "reference_mask is empty"),
        ({"labels": squares(), "label": 7}, "label 7 is not a cell of labels"),
        ({"labels": squares(), "label": 0}, "label 0 is not a cell of labels"),
        ({"labels": squares()}, "label is missing"),
        ({"reference_mask": squares()[:, :70] == 1}, r"reference_mask has shape \(60, 70\), expected .*\(60, 80\)"),
        ({"labels": squares()[:50], "label": 1}, r"labels has shape \(50, 80\)"),
        ({"reference_mask": squares()}, "reference_mask is not binary"),
        ({"reference_mask": squares() == 1, "labels": squares(), "label": 1}, "not both"),
        ({}, "not neither"),
        ({"reference_mask": squares() == 1, "label": 1}, "label is given without labels"),
        ({"reference_mask": (squares() == 1).astype(np.float32)}, "reference_mask has dtype float32"),
    ],
)
def test_reference_errors_name_the_argument(arguments, message):
    segmenter = Segmenter(FieldModel(), SMALL)
    image = np.zeros((60, 80), np.uint8)
    with pytest.raises(ValueError, match=message):
        segmenter.reference(image, arguments.pop("reference_mask", None), **arguments)


def test_segment_and_constructor_errors():
    segmenter = Segmenter(FieldModel(), SMALL)
    with pytest.raises(ValueError, match="reference is None, but the model is not generic"):
        segmenter.segment(np.zeros((60, 80), np.uint8), None)
    with pytest.raises(TypeError, match="reference must be a Reference"):
        segmenter.segment(np.zeros((60, 80), np.uint8), torch.zeros(4))
    reference = segmenter.reference(np.zeros((60, 80), np.uint8), squares() == 1)
    with pytest.raises(ValueError, match=r"image has shape \(1, 60, 80, 3\)"):
        segmenter.segment(np.zeros((1, 60, 80, 3), np.uint8), reference)
    with pytest.raises(ValueError, match="min_cell_probability must be in"):
        Segmenter(FieldModel(), SMALL, min_cell_probability=1.5)
    with pytest.raises(ValueError, match="reference_image has shape"):
        segmenter.reference(np.zeros(5), squares() == 1)


@pytest.mark.parametrize("shape", [(1, 1), (13, 80), (60, 13), (1, 500)])
def test_images_under_one_patch_are_refused_before_the_model_runs(shape):
    class Refuse(FieldModel):
        def embed_reference(self, images, masks):
            raise AssertionError("the model ran")

        forward = embed_reference

    segmenter = Segmenter(Refuse(), SMALL)
    reference = Reference(torch.zeros(4), squares() == 1)
    with pytest.raises(ValueError, match=rf"^image is {shape[0]} x {shape[1]} pixels .* at least 14 x 14"):
        segmenter.segment(np.zeros(shape, np.uint8), reference)
    with pytest.raises(ValueError, match=rf"^image is {shape[0]} x {shape[1]} pixels"):
        segmenter.segment(torch.zeros(3, *shape), reference)
    with pytest.raises(ValueError, match=rf"^reference_image is {shape[0]} x {shape[1]} pixels"):
        segmenter.reference(np.zeros(shape, np.uint8), np.ones(shape, bool))


def test_images_of_one_patch_are_padded_to_a_window_and_cut_back():
    """14 x 14 (one patch) and 14 x 70 images, smaller than the 56-pixel window: the field comes back exactly,
    cells included (the predictor pads with zeros and crops the stitched output). The cells stay under 40% of
    the image: flows_to_masks drops larger masks (max_size_fraction, of the image, not of the padded window)."""
    for shape, side in [((14, 14), 6), ((14, 70), 10)]:
        labels = np.zeros(shape, np.int32)
        labels[2 : 2 + side, 3 : 3 + side] = 1
        segmenter = Segmenter(FieldModel(), SMALL)
        reference = segmenter.reference(np.zeros(shape, np.uint8), labels == 1)
        result = segmenter.segment(cell_field(labels, {1: 3.0}), reference)
        assert result.labels.shape == shape
        np.testing.assert_array_equal(result.labels, labels)
        np.testing.assert_allclose(result.cell_probability, [expit(3.0)], rtol=1e-6)


def test_from_checkpoint_checks_its_arguments_before_reading_the_checkpoint(tmp_path, monkeypatch):
    import percs.train.checkpoint

    path = write_tiny_checkpoint(tmp_path / "best.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read")

    monkeypatch.setattr(percs.train.checkpoint, "load_checkpoint", refuse)
    with pytest.raises(ValueError, match=r"predict has unknown keys \['windows'\]"):
        Segmenter.from_checkpoint(path, device="cpu", predict={"windows": 3})
    with pytest.raises(ValueError, match="min_cell_probability must be in"):
        Segmenter.from_checkpoint(path, device="cpu", min_cell_probability=2)
    with pytest.raises(ValueError, match="device 'gpu0' is not a device"):
        Segmenter.from_checkpoint(path, device="gpu0")
    with pytest.raises(TypeError, match="predict must be a PredictorConfig or a dict"):
        Segmenter.from_checkpoint(path, device="cpu", predict=3)


def test_checkpoint_that_is_a_folder_or_missing_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is not a file"):
        Segmenter.from_checkpoint(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'no.pt'} does not exist"):
        Segmenter.from_checkpoint(tmp_path / "no.pt", device="cpu")
