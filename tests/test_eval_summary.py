"""percs.evaluate.summary (query means, pooled ratios, image bootstrap) and percs.evaluate.controls on
hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from percs.data.format import CellType, Dataset, ImageRecord, Query
from percs.evaluate.controls import Reference, wrong_references
from percs.evaluate.summary import BootstrapConfig, QueryCounts, group_by, resample_weights, summarize

CONFIG = BootstrapConfig(resamples=500, seed=3)


def counts(image: str, tp: int, fp: int, fn: int, cell_type: str = "a", origin: str = "native") -> QueryCounts:
    return QueryCounts(image, cell_type, origin, (tp, tp), (fp, fp), (fn, fn))


def test_means_and_pooled_figures():
    results = [counts("i", 3, 1, 0), counts("j", 0, 0, 4)]
    summary = summarize(results, (0.3, 0.5), CONFIG)
    at = summary.thresholds[0]
    assert summary.n_queries == 2 and summary.n_images == 2
    assert at.mean["ap"].value == pytest.approx((3 / 4 + 0) / 2)
    assert at.mean["precision"].value == pytest.approx((3 / 4 + 0) / 2)  # no prediction, true cells: 0
    assert at.pooled["ap"].value == pytest.approx(3 / 8)
    assert at.pooled["recall"].value == pytest.approx(3 / 7)
    assert (at.tp, at.fp, at.fn) == (3, 1, 4)


def test_interval_is_degenerate_when_every_image_scores_the_same():
    results = [counts(f"image{i}", 1, 1, 0) for i in range(6)] + [counts("image0", 2, 2, 0)]
    for estimate in (*summarize(results, (0.5,), CONFIG).thresholds[0].mean.values(),
                     *summarize(results, (0.5,), CONFIG).thresholds[0].pooled.values()):
        assert estimate.low == pytest.approx(estimate.value) and estimate.high == pytest.approx(estimate.value)


def test_images_not_queries_are_resampled():
    # One image whose queries differ: every resample draws that image with all its queries, so no spread.
    one_image = [counts("only", tp, 4 - tp, 0) for tp in range(5)]
    ap = summarize(one_image, (0.5,), CONFIG).thresholds[0].mean["ap"]
    assert ap.value == pytest.approx(0.5) and ap.low == pytest.approx(0.5) and ap.high == pytest.approx(0.5)
    # The same queries on five images do spread, and the interval holds the point estimate.
    spread = summarize([counts(f"image{tp}", tp, 4 - tp, 0) for tp in range(5)], (0.5,), CONFIG)
    ap = spread.thresholds[0].mean["ap"]
    assert ap.low < ap.value < ap.high and 0 <= ap.low and ap.high <= 1


def test_resample_weights_are_seeded_draws_of_every_image():
    weights = resample_weights(7, CONFIG)
    assert weights.shape == (500, 7) and (weights.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(weights, resample_weights(7, CONFIG))
    assert not np.array_equal(weights, resample_weights(7, BootstrapConfig(resamples=500, seed=4)))
    assert np.all(np.abs(weights.mean(axis=0) - 1) < 0.2)  # every image drawn once per resample on average


def test_group_by_and_config_errors():
    results = [counts("i", 1, 0, 0, "b", "pasted"), counts("j", 1, 0, 0, "a"), counts("i", 0, 1, 1, "a")]
    assert {k: len(v) for k, v in group_by(results, "target_type").items()} == {"a": 2, "b": 1}
    assert list(group_by(results, "origin")) == ["native", "pasted"]
    with pytest.raises(ValueError, match="no queries"):
        summarize([], (0.5,), CONFIG)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        BootstrapConfig(resamples=0)
    with pytest.raises(ValueError, match="level"):
        BootstrapConfig(level=1.0)


def _record(name: str, types: tuple[str, ...]) -> ImageRecord:
    return ImageRecord(name, f"images/{name}.png", f"labels/{name}.tif", (8, 8), 1, "test", types)


def test_wrong_reference_takes_an_absent_type_and_its_median_whole_cell():
    labels = {"ab": np.array([[1, 2]]), "c": np.zeros((8, 8), np.int32), "abc": np.array([[1, 2, 3]])}
    labels["c"][0, 0] = 1  # touches the border
    labels["c"][2:4, 2:4] = 2  # whole, 4 pixels
    labels["c"][2:5, 5:7] = 3  # whole, 6 pixels
    labels["c"][5:7, 1:3] = 4  # whole, 4 pixels
    dataset = Dataset("d", (CellType("a", "m"), CellType("b", "m"), CellType("c", "n")),
                      (_record("ab", ("a", "b")), _record("c", ("c", "c", "c", "c")), _record("abc", ("a", "b", "c"))))
    queries = [Query("ab", "a", "ab", 1), Query("abc", "a", "ab", 1)]
    chosen = wrong_references(dataset, queries, seed=0, read_labels=labels.__getitem__)
    # Type c is the only one absent from "ab"; its whole cells sorted by (area, label) are 2, 4, 3: the middle
    # one is 4 (with the border cell 1 counted it would be 2). "abc" holds every type: no wrong reference.
    assert chosen == [Reference("c", 4), None]
