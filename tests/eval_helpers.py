"""Deterministic methods for the `percs eval` tests, computed from the benchmark's own labels.

They find which stored image they were given by the hash of its pixels (every image of a synthetic
benchmark differs), so they see exactly what a real method sees: an image, a reference image and a mask.
"""

from __future__ import annotations

import hashlib

import numpy as np

from percs.data.format import Dataset, ImageRecord
from percs.evaluate.methods import METHODS, MethodEntry


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


class OracleMethod:
    """Returns the true cells of whichever type the reference cell has: AP 1 when given the query's own
    reference, nothing right when given a cell of a type the image does not hold."""

    name = "oracle (true cells of the reference's type)"

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.records = {_digest(dataset.read_image(r)): r for r in dataset.images}

    def record_of(self, image: np.ndarray) -> ImageRecord:
        return self.records[_digest(image)]

    def reference_type(self, reference_image: np.ndarray, reference_mask: np.ndarray) -> str:
        record = self.record_of(reference_image)
        labels = self.dataset.read_labels(record)[reference_mask]
        return record.type_of(int(np.bincount(labels).argmax()))

    def segment(self, image, reference_image, reference_mask) -> np.ndarray:
        record = self.record_of(image)
        labels = self.dataset.read_labels(record)
        wanted = record.labels_of_type(self.reference_type(reference_image, reference_mask))
        return np.where(np.isin(labels, wanted), labels, 0).astype(np.int32)


class HalfOracleMethod(OracleMethod):
    """The oracle's cells with an odd label only: scores that vary from query to query."""

    name = "half oracle"

    def segment(self, image, reference_image, reference_mask) -> np.ndarray:
        labels = super().segment(image, reference_image, reference_mask)
        return np.where(labels % 2 == 1, labels, 0)


class EmptyMethod:
    """Finds nothing."""

    name = "empty"

    def segment(self, image, reference_image, reference_mask) -> np.ndarray:
        return np.zeros(image.shape[:2], np.int32)


def register_test_methods(monkeypatch) -> None:
    """Registers "oracle", "half-oracle" and "empty" for the duration of one test."""
    for key, cls in (("oracle", OracleMethod), ("half-oracle", HalfOracleMethod), ("empty", EmptyMethod)):
        factory = (lambda args, dataset, cls=cls: cls(dataset)) if cls is not EmptyMethod else \
            (lambda args, dataset: EmptyMethod())
        monkeypatch.setitem(METHODS, key, MethodEntry(key, f"test method {cls.name}", factory))
