"""Several references, positive and negative: the decision rule against a NumPy oracle, `Segmenter.segment`
with references/negatives, and `Segmenter.refine` from clicks without a backbone pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baseline_helpers import red_and_green_disks, scored_checkpoint
from percs.model.instance import InstanceScorer
from predict_helpers import DistanceScorer

pytestmark = pytest.mark.usefixtures("one_thread")


def _logit_oracle(vectors: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    return np.stack([1.0 - ((vectors - r[None]) ** 2).sum((1, 2)) for r in references], 1)


def _random_candidates(seed: int, n_cells: int, n_references: int, threshold: float):
    """(vectors (N, 2, 4) float32, cells (their tensor), descriptors (N, 3) zeros, references [(2, 4)], the same
    as References [(vectors, descriptors)], an InstanceScorer of the DistanceScorer at threshold): random
    candidates whose logits `_logit_oracle` computes."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_cells, 2, 4)).astype(np.float32)
    references = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(n_references)]
    as_ref = [(torch.from_numpy(r), torch.zeros(3)) for r in references]
    instance = InstanceScorer(None, DistanceScorer(offset=1.0), threshold=threshold)
    return vectors, torch.from_numpy(vectors), torch.zeros(n_cells, 3), references, as_ref, instance


def test_decide_keeps_the_best_positive_match_unless_a_negative_matches_better():
    vectors, cells, descriptors, references, as_ref, instance = _random_candidates(0, 30, 5, threshold=0.2)
    for positives, negatives in (([0], []), ([0, 1, 2], []), ([0], [3]), ([0, 1], [3, 4]), ([2], [0, 1, 3, 4])):
        probability, keep = instance.decide(cells, descriptors, [as_ref[i] for i in positives],
                                            [as_ref[i] for i in negatives])
        best = _logit_oracle(vectors, [references[i] for i in positives]).max(1)
        expected = 1 / (1 + np.exp(-best))
        expected_keep = expected >= 0.2
        if negatives:
            rejected = _logit_oracle(vectors, [references[i] for i in negatives]).max(1) > best
            expected, expected_keep = np.where(rejected, 0.0, expected), expected_keep & ~rejected
        np.testing.assert_allclose(probability.numpy(), expected, rtol=1e-5)
        np.testing.assert_array_equal(keep.numpy(), expected_keep)
    one, _ = instance.decide(cells, descriptors, as_ref[:1])
    assert torch.equal(one, instance.probabilities(cells, descriptors, as_ref[0]))   # K=1, M=0: bit for bit
    with pytest.raises(ValueError, match="references is empty"):
        instance.decide(cells, descriptors, [])
    empty, kept = instance.decide(cells[:0], descriptors[:0], as_ref[:2], as_ref[2:3])
    assert empty.shape == kept.shape == (0,)


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    """(instance-level Segmenter with threshold -1, the plain generic Segmenter) on a tiny generic model."""
    from percs.api import Segmenter

    model, generic = scored_checkpoint(tmp_path_factory.mktemp("references"), -1.0)
    return Segmenter.from_checkpoint(model, "cpu"), Segmenter.from_checkpoint(generic, "cpu")


def _disk_images():
    image, red, green = red_and_green_disks()
    return image, red, green


def _found_every_disk(monkeypatch, segmenter, red, green) -> None:
    """The generic model's prediction replaced by every disk (the tiny untrained model finds none)."""
    from percs.predict.predictor import Prediction

    labels = torch.from_numpy(np.where(green > 0, green + 4, red).astype(np.int32))
    found = Prediction(labels, torch.zeros(2, *labels.shape), torch.zeros(labels.shape), torch.zeros(8))
    monkeypatch.setattr(segmenter.predictor, "predict", lambda image, embedding=None, scale=1.0: found)


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0])
def test_a_margin_keeps_the_cells_near_the_images_best_match(margin):
    vectors, cells, descriptors, references, as_ref, instance = _random_candidates(1, 25, 3, threshold=0.99)
    instance.margin = margin
    probability, keep = instance.decide(cells, descriptors, as_ref[:2], as_ref[2:])
    best = _logit_oracle(vectors, references[:2]).max(1)
    rejected = _logit_oracle(vectors, references[2:]).max(1) > best
    np.testing.assert_array_equal(keep.numpy(), (best >= best.max() - margin * (1 + 1e-6)) & ~rejected)
    np.testing.assert_allclose(probability.numpy(), np.where(rejected, 0.0, 1 / (1 + np.exp(-best))), rtol=1e-5)
    assert keep[int(best.argmax())] or rejected[int(best.argmax())]  # the best match is kept unless rejected
    instance.margin = None  # back to the probability threshold, which no cell reaches here
    assert not instance.decide(cells, descriptors, as_ref[:2])[1].any()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin must be None or a finite number >= 0"):
            instance.margin = bad


@pytest.mark.parametrize("expand", [0.25, 0.5, 1.0])
def test_expand_averages_in_the_images_best_match_as_a_second_reference(expand):
    vectors, cells, descriptors, references, as_ref, instance = _random_candidates(2, 20, 3, threshold=0.3)
    best = _logit_oracle(vectors, references[:2]).max(1)
    match = _logit_oracle(vectors, [vectors[int(best.argmax())]])[:, 0]  # every cell against the best match
    score = (1 - expand) * best + expand * match
    rejected = _logit_oracle(vectors, references[2:]).max(1) > best
    cut = float(np.sort(score)[-6:-4].mean())                               # between the 5th and 6th best scores
    instance.threshold, instance.expand = 1 / (1 + np.exp(-cut)), expand
    probability, keep = instance.decide(cells, descriptors, as_ref[:2], as_ref[2:])
    expected = 1 / (1 + np.exp(-score))
    np.testing.assert_allclose(probability.numpy(), np.where(rejected, 0.0, expected), rtol=1e-4)
    np.testing.assert_array_equal(keep.numpy(), (score >= cut) & ~rejected)
    assert 0 < keep.sum() < (~rejected).sum()                               # the threshold cuts this image
    order = np.argsort(-best)                                               # a negative on the best match itself:
    negative = [(cells[int(order[0])], torch.zeros(3))]                     # the next eligible cell leads instead
    probability, _ = instance.decide(cells, descriptors, as_ref[:2], negative)
    rejected = _logit_oracle(vectors, [vectors[int(order[0])]])[:, 0] > best
    lead = next(int(i) for i in order if not rejected[i])
    second = (1 - expand) * best + expand * _logit_oracle(vectors, [vectors[lead]])[:, 0]
    np.testing.assert_allclose(probability.numpy(), np.where(rejected, 0.0, 1 / (1 + np.exp(-second))), rtol=1e-4)
    assert rejected[int(order[0])] and lead != int(order[0])
    instance.margin = 0.0                                                   # the margin applies to the same score
    np.testing.assert_array_equal(instance.decide(cells, descriptors, as_ref[:2])[1].numpy(),
                                  score == score.max())
    instance.margin, instance.expand = None, 0.0                            # back to the references alone
    assert torch.equal(instance.decide(cells, descriptors, as_ref[:1])[0],
                       instance.probabilities(cells, descriptors, as_ref[0]))
    instance.expand = expand
    empty, kept = instance.decide(cells[:0], descriptors[:0], as_ref[:2])
    assert empty.shape == kept.shape == (0,)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"expand must be a number in \[0, 1\]"):
            instance.expand = bad


def test_one_reference_as_a_list_is_the_single_reference_result(segmenters):
    segmenter, _ = segmenters
    image, red, _ = _disk_images()
    reference = segmenter.reference(image, labels=red, label=1)
    single = segmenter.segment(image, reference)
    listed = segmenter.segment(image, references=[reference], negatives=[])
    np.testing.assert_array_equal(listed.labels, single.labels)
    np.testing.assert_array_equal(listed.probability, single.probability)
    np.testing.assert_array_equal(listed.cell_probability, single.cell_probability)
    again = segmenter.refine(single)
    np.testing.assert_array_equal(again.labels, single.labels)


def test_refine_rescores_the_found_cells_from_clicks_without_a_backbone_pass(segmenters, monkeypatch):
    segmenter, _ = segmenters
    image, red, green = _disk_images()
    monkeypatch.setattr(segmenter.instance, "scorer", DistanceScorer(offset=1.0))
    _found_every_disk(monkeypatch, segmenter, red, green)
    segmenter.instance.threshold = 0.0
    try:
        reference = segmenter.reference(image, labels=red, label=1)
        result = segmenter.segment(image, reference)
        found = result.candidates.labels.numpy()
        assert result.labels.max() == len(result.candidates.cells) == 8       # threshold 0 keeps every cell
        target = int(result.candidates.cells[-1])
        point = tuple(int(v) for v in np.argwhere(found == target)[0])

        def no_backbone(*args, **kwargs):
            raise AssertionError("refine ran the backbone")

        monkeypatch.setattr(segmenter.instance.backbone, "forward", no_backbone)
        monkeypatch.setattr(segmenter.predictor, "predict", no_backbone)
        removed = segmenter.refine(result, remove=[point])
        # the clicked green disk matches itself (and the other green disks, alike) better than the red reference
        np.testing.assert_array_equal(removed.labels > 0, red > 0)
        assert removed.probability[green > 0].max() == 0 and removed.probability[red > 0].min() > 0
        by_mask = segmenter.refine(result, remove=[found == target])        # the cell's mask: the same cell
        np.testing.assert_array_equal(by_mask.labels, removed.labels)
        twice = segmenter.refine(segmenter.refine(result, add=[point]), remove=[point])
        assert len(twice.candidates.positives) == 2 and len(twice.candidates.negatives) == 1
        # a tie (the cell is a positive and a negative) keeps it: a negative must match strictly better
        np.testing.assert_array_equal(twice.labels > 0, found > 0)
        with pytest.raises(ValueError, match="on background"):
            segmenter.refine(result, add=[(0, 0)])
        with pytest.raises(ValueError, match="outside the image"):
            segmenter.refine(result, remove=[(10_000, 3)])
        with pytest.raises(ValueError, match="bool mask"):
            segmenter.refine(result, add=[np.zeros((3, 3), bool)])
        with pytest.raises(ValueError, match="mask is empty"):
            segmenter.refine(result, add=[np.zeros(found.shape, bool)])
    finally:
        segmenter.instance.threshold = -1.0


def test_segment_with_several_references_and_negatives_checks_its_arguments(segmenters):
    segmenter, plain = segmenters
    image, red, green = _disk_images()
    reference = segmenter.reference(image, labels=red, label=1)
    other = segmenter.reference(image, labels=green, label=int(green.max()))
    result = segmenter.segment(image, references=[reference, other], negatives=[other])
    assert result.labels.shape == image.shape[:2] and len(result.candidates.negatives) == 1
    with pytest.raises(ValueError, match="not both"):
        segmenter.segment(image, reference, references=[reference])
    with pytest.raises(ValueError, match="references is empty"):
        segmenter.segment(image, references=[])
    with pytest.raises(TypeError, match=r"negatives\[0\] must be a Reference"):
        segmenter.segment(image, reference, negatives=[red == 1])
    with pytest.raises(ValueError, match="without an instance scorer"):
        segmenter.segment(image, references=[reference, plain.reference(image, labels=red, label=1)])
    with pytest.raises(ValueError, match="refine needs"):
        plain.refine(plain.segment(image, None), add=[(1, 1)])


def test_percs_predict_takes_several_references_and_negatives(segmenters, tmp_path, monkeypatch, capsys):
    import tifffile

    from percs.api import Segmenter
    from percs.cli import main

    segmenter, plain = segmenters
    image, red, green = _disk_images()
    labels = np.where(green > 0, green + 4, red).astype(np.int32)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "one.tif", (labels == 2).astype(np.uint8))
    given = []

    def recording(self, image, reference=None, *, references=None, negatives=None):
        given.append((reference, references, negatives))
        return real_segment(self, image, reference, references=references, negatives=negatives)

    real_segment = Segmenter.segment
    monkeypatch.setattr(Segmenter, "segment", recording)
    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(lambda cls, *a, **k: segmenter))
    base = ["predict", str(tmp_path / "image.tif"), "--checkpoint", str(tmp_path / "image.tif"),
            "--reference-image", str(tmp_path / "image.tif"), "--reference-mask", str(tmp_path / "labels.tif"),
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--reference-label", "1", "--reference-label", "3",
                        "--negative-label", "5", "--extra-reference", str(tmp_path / "image.tif"),
                        str(tmp_path / "one.tif"), "--extra-negative", str(tmp_path / "image.tif"),
                        str(tmp_path / "labels.tif"), "6", "7"]) == 0
    _, references, negatives = given[-1]
    assert len(references) == 3 and len(negatives) == 3
    np.testing.assert_array_equal(references[1].mask, labels == 3)
    np.testing.assert_array_equal(references[2].mask, labels == 2)
    np.testing.assert_array_equal(negatives[2].mask, labels == 7)
    assert (tmp_path / "a" / "image_labels.tif").is_file()
    assert main(base + ["--out", str(tmp_path / "b"), "--reference-label", "1"]) == 0
    assert given[-1][1] is None and given[-1][0] is not None                 # one reference: as before
    capsys.readouterr()
    for extra, message in ((["--reference-mask", str(tmp_path / "one.tif"), "--negative-label", "5"],
                            "give --reference-label too"),
                           (["--reference-label", "1", "--extra-reference", "x.tif"], "takes IMAGE MASK"),
                           (["--reference-label", "1", "--extra-negative", "a", "b", "c"], "LABEL must be integers"),
                           (["--reference-label", "1", "--negative-label", "99"], "no cell labelled 99")):
        assert main(base + ["--out", str(tmp_path / "c"), *extra]) == 2
        assert message in capsys.readouterr().err
    try:
        assert main(base + ["--out", str(tmp_path / "m"), "--reference-label", "1", "--decision-margin", "0"]) == 0
        assert segmenter.instance.margin == 0.0
        assert (tmp_path / "m" / "image_labels.tif").is_file()
    finally:
        segmenter.instance.margin = None   # the module's segmenter, given back as it was
    try:
        assert main(base + ["--out", str(tmp_path / "x"), "--reference-label", "1", "--expand", "0.5"]) == 0
        assert segmenter.instance.expand == 0.5
    finally:
        segmenter.instance.expand = 0.0
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "n"), "--reference-label", "1", "--decision-margin", "-1"]) == 2
    assert "--decision-margin must be a finite number >= 0" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "n"), "--reference-label", "1", "--expand", "2"]) == 2
    assert "--expand must be a number in [0, 1]" in capsys.readouterr().err
    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(lambda cls, *a, **k: plain))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "d"), "--reference-label", "1", "--reference-label", "2"]) == 2
    assert "instance-level decision" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e"), "--reference-label", "1", "--decision-margin", "1"]) == 2
    assert "--decision-margin needs a model with an instance-level decision" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e"), "--reference-label", "1", "--expand", "0.5"]) == 2
    assert "--expand needs a model with an instance-level decision" in capsys.readouterr().err


def test_the_instance_scorer_embeds_at_the_segmenters_precision(segmenters, monkeypatch):
    """Reference and found cells are embedded at the arithmetic the segmenter's predictor runs, so that a
    bfloat16 segmenter never compares bfloat16 cells with a float32 reference."""
    import dataclasses

    from percs.api import Segmenter

    segmenter, _ = segmenters
    image, red, green = _disk_images()
    vectors = {}
    for precision in ("bfloat16", "float32"):  # float32 last: the module's model is given back as it was
        config = dataclasses.replace(segmenter.predictor.config, precision=precision)
        made = Segmenter(segmenter.model, config)
        assert made.instance.precision == precision
        _found_every_disk(monkeypatch, made, red, green)
        result = made.segment(image, made.reference(image, labels=red, label=1))
        vectors[precision] = (result.candidates.vectors, result.candidates.positives[0][0])
    for lowered, exact in zip(vectors["bfloat16"], vectors["float32"]):
        assert lowered.dtype == exact.dtype == torch.float32
        assert 0 < float((lowered - exact).abs().max()) <= 0.05 * float(exact.abs().max())
