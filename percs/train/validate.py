"""Validation during training: the queries of one split through the Predictor, scored by percs.metrics."""

from __future__ import annotations

import numpy as np
import torch

from percs.data.format import Dataset, Query
from percs.metrics import evaluate
from percs.predict import Predictor, PredictorConfig


class Validator:
    """AP of a model on the queries of `split` (the first `max_queries`; 0 = all), images read once.

    For each query the reference cell is embedded from its own image, the query image predicted, and the
    prediction matched against the query image's cells of the target type. Returns pooled AP at IoU 0.5
    (the paper's rule, IoU > t) and 0.3, or None when the split has no query.
    """

    def __init__(self, dataset: Dataset, split: str, config: PredictorConfig, max_queries: int = 0):
        queries = [q for q in dataset.queries if dataset.record(q.image).split == split]
        self.queries: list[Query] = queries[:max_queries] if max_queries else queries
        self.dataset, self.config = dataset, config
        self._images: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.queries)

    def _read(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._images:
            record = self.dataset.record(name)
            self._images[name] = (self.dataset.read_image(record), self.dataset.read_labels(record))
        return self._images[name]

    def run(self, model: torch.nn.Module) -> dict[str, float] | None:
        """{"ap50", "ap30", "queries"} of `model` (left in the train/eval mode it had)."""
        if not self.queries:
            return None
        predictor = Predictor(model, self.config)
        true_labels, pred_labels = [], []
        for query in self.queries:
            image, labels = self._read(query.image)
            wanted = self.dataset.record(query.image).labels_of_type(query.target_type)
            true_labels.append(np.where(np.isin(labels, wanted), labels, 0))
            reference_image, reference_labels = self._read(query.reference_image)
            reference_mask = reference_labels == query.reference_label
            embedding = None
            if not getattr(model, "generic", False):
                embedding = predictor.embed_reference(reference_image, reference_mask)
            scale = predictor.scale_of(reference_mask)
            pred_labels.append(predictor.predict(image, embedding, scale).labels.cpu().numpy())
        at50, at30 = evaluate(true_labels, pred_labels, thresholds=(0.5, 0.3))
        return {"ap50": float(at50.pooled.ap), "ap30": float(at30.pooled.ap), "queries": len(self.queries)}
