"""The "percs-instance" method: PerCS-DINO's instance-level same-type decision (`percs.model.instance`).

Every cell of the query image is found by a generic percs model (`model.head.generic=true`, its flows and
"any cell" channel), each found cell is scored against the reference cell by a `CellScorer` from the frozen
backbone's block features pooled under it and its descriptors, and the cells whose same-type probability is
>= a threshold are kept. The threshold is chosen on the benchmark's val split as the filter baseline chooses
its own (`percs.baselines.filter.choose_threshold`: the grid value with the best mean AP@0.5 over the val
queries, -1 = keep every cell included), or given with --scorer-threshold.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from percs.baselines.common import ImageCache
from percs.baselines.filter import Candidates, keep_similar, tune_on_split
from percs.evaluate.methods import MethodUnavailable
from percs.model.instance import LAYERS, InstanceScorer, check_expand, scorer_label
from percs.predict import as_input_image


class InstanceDecision:
    """Masks from `source` (a `PercsGenericMasks`) kept by an `InstanceScorer` on the source model's backbone;
    `segment(image, reference_image, reference_mask)` -> (H, W) int32 (see the module docstring)."""

    def __init__(self, source, scorer, threshold: float = 0.5, layers=LAYERS, embedding: str = "window",
                 window_size: int = 56, context: float = 2.0, context_window: float = 0.0, expand: float = 0.0,
                 cell_flips: bool = False):
        config = source.predictor.config
        self.source = source
        self.instance = InstanceScorer(source.predictor.model.backbone, scorer, layers, embedding, threshold,
                                       config.reference_window, config.stride, config.batch_size, window_size,
                                       context, config.precision, context_window, expand, cell_flips)
        self.cells = ImageCache(self._cells)
        self.settings: dict = {}
        self.tuning = ""

    @property
    def threshold(self) -> float:
        return self.instance.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.instance.threshold = float(value)

    @property
    def device(self) -> torch.device:
        return next(self.instance.backbone.parameters()).device

    @property
    def name(self) -> str:
        expand = f", the image's best match weighted {self.instance.expand:g}" if self.instance.expand else ""
        scorer = scorer_label(self.instance.scorer)
        return f"PerCS-DINO instance decision ({self.source.name} masks + {scorer}{expand}, " \
               f"threshold {self.threshold:g}{self.tuning})"

    def _cells(self, image: np.ndarray, scale: float):
        labels = self.source(image, scale)
        tensor = as_input_image(image, self.device)
        cells, vectors, descriptors = self.instance.cells(tensor, torch.from_numpy(labels).to(self.device))
        return labels, cells.cpu().numpy(), vectors, descriptors

    def probabilities(self, image, reference_image, reference_mask) -> Candidates:
        """The query's generic masks (at the scale the reference sets) and each one's same-type probability
        (`InstanceScorer.decide`'s: with the image's best match averaged in when `expand` is set)."""
        labels, cells, vectors, descriptors = self.cells(image, self.source.scale_of(reference_mask))
        if len(cells) == 0:
            return Candidates(labels, cells, np.zeros(0, np.float32))
        reference = self._reference(reference_image, reference_mask)
        probability, _ = self.instance.decide(vectors, descriptors, [reference])
        return Candidates(labels, cells, probability.cpu().numpy())

    def segment(self, image: np.ndarray, reference_image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
        found = self.probabilities(image, reference_image, reference_mask)
        return keep_similar(found.labels, found.cells, found.similarity, self.threshold)

    def segment_references(self, image: np.ndarray, positives: list, negatives: list) -> np.ndarray:
        """(H, W) int32: the generic masks kept by `InstanceScorer.decide` against the positive and negative
        references [(image, mask)]; the masks at the positives' shared scale."""
        from percs.data.scale import shared_scale

        scale = shared_scale(self.source.scale_of(m) for _, m in positives)
        labels, cells, vectors, descriptors = self.cells(image, scale)
        made = [[self._reference(i, m) for i, m in group] for group in (positives, negatives)]
        _, keep = self.instance.decide(vectors, descriptors, made[0], made[1])
        return keep_similar(labels, cells, keep.cpu().numpy().astype(np.float32), 0.5)

    def _reference(self, reference_image, reference_mask):
        reference = as_input_image(reference_image, self.device)
        mask = torch.as_tensor(np.asarray(reference_mask) != 0, device=self.device)
        if tuple(mask.shape) != tuple(reference.shape[1:]):
            raise ValueError(f"reference_mask has shape {tuple(mask.shape)}, expected {tuple(reference.shape[1:])}")
        return self.instance.reference(reference, mask)

    def tune(self, dataset, split: str = "val", max_queries: int = 0) -> dict[float, float]:
        """Sets the threshold to the best grid value on `split`'s queries (the first max_queries; 0: all);
        returns every grid value's mean AP@0.5 (`percs.baselines.filter.tune_on_split`)."""
        return tune_on_split(self, self.probabilities, dataset, split, max_queries)


def build_instance(args: argparse.Namespace, dataset=None) -> InstanceDecision:
    """The percs-instance method on `args.device`; its threshold chosen on `dataset`'s val split unless given."""
    from percs.api import resolve_device
    from percs.baselines.generic import PercsGenericMasks, generic_overrides
    from percs.train.scorer import backbone_fingerprint, load_scorer

    if not args.generic_checkpoint or not args.scorer:
        raise MethodUnavailable("--method percs-instance needs --generic-checkpoint (a generic percs model) and "
                                "--scorer (a `percs train-scorer` file)")
    if args.scorer_threshold is None and dataset is None:
        raise ValueError("--scorer-threshold is required without a dataset to choose it on")
    device = resolve_device(getattr(args, "device", "auto"))
    source = PercsGenericMasks(args.generic_checkpoint, device, getattr(args, "backbone_weights", None),
                               generic_overrides(args))
    scorer, record = load_scorer(args.scorer, device)
    fingerprint = backbone_fingerprint(source.predictor.model.backbone)
    if record.get("backbone_fingerprint") not in (None, fingerprint):
        raise ValueError(f"--scorer {args.scorer} was trained on other backbone weights than "
                         f"--generic-checkpoint {args.generic_checkpoint}'s (fingerprints differ)")
    settings = record["settings"]
    try:
        expand = check_expand(getattr(args, "scorer_expand", 0.0))
    except ValueError as error:
        raise ValueError(f"--scorer-expand: {error}") from None
    method = InstanceDecision(source, scorer, args.scorer_threshold or 0.0, record["layers"],
                              settings.get("embedding", "patch"), settings.get("window_size", 56),
                              settings.get("context", 2.0), settings.get("context_window", 0.0), expand,
                              settings.get("cell_flips", False))
    method.settings = {"masks": source.name, "generic_checkpoint": args.generic_checkpoint, "scorer": args.scorer,
                       "scorer_trained_on": record["trained_on"], "layers": record["layers"],
                       "embedding": method.instance.embedding, "device": str(device),
                       "predict": dataclasses.asdict(source.predictor.config), "expand": expand}
    if args.scorer_threshold is None:
        scores = method.tune(dataset, "val", args.scorer_val_queries)
        method.settings.update(val_queries=args.scorer_val_queries or "all", val_mean_ap50_by_threshold=scores)
    method.settings["threshold"] = method.threshold
    return method


def tune_threshold(generic_checkpoint, scorer, dataset_path, max_queries: int = 0,
                   device: str = "auto", backbone_weights=None, predict: dict | None = None, expand: float = 0.0
                   ) -> tuple[float, float]:
    """(threshold, its mean AP@0.5): the scorer's threshold chosen on the val split of `dataset_path` as
    `percs eval --method percs-instance` chooses it. backbone_weights: for a head-only generic model file;
    predict: the generic model's predict settings that replace its checkpoint's (flow_threshold, flips);
    expand: the decision's weight of the image's best match (`InstanceScorer.decide`)."""
    from percs.data.format import load_dataset

    args = argparse.Namespace(generic_checkpoint=str(generic_checkpoint), scorer=str(scorer), scorer_threshold=None,
                              scorer_val_queries=max_queries, device=device, backbone_weights=backbone_weights,
                              scorer_expand=expand, **(predict or {}))
    method = build_instance(args, load_dataset(dataset_path))
    return method.threshold, method.settings["val_mean_ap50_by_threshold"][method.threshold]
