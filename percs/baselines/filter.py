"""The "filter" method: a generic segmenter's masks kept when they look like the reference cell.

The paper's Cellpose-SAM baseline: every cell is segmented by a class-agnostic model
(`percs.baselines.generic`: Cellpose-SAM, or a percs checkpoint trained with `model.head.generic=true`);
each mask's embedding is DINOv2 features pooled under it, and a mask is kept when the cosine similarity of
its embedding to the reference cell's is >= a threshold. The threshold is chosen on the benchmark's val split:
the value of a grid (-1, i.e. keep all, then 0, 0.02, ..., 0.98) with the highest mean AP@0.5 over the val
queries (IoU > 0.5, the paper's rule), the lowest such value on ties; or given with --filter-threshold.

Embeddings, as percs embeds cells (`percs.model.reference`): the query image's features come from sliding
224 x 224 windows every 168 pixels on the image zero-padded to a multiple of 14 (as the predictor runs),
averaged where windows overlap, and each mask is pooled with the fraction of every 14 x 14 patch it covers;
the reference cell's embedding is the features of the 224 x 224 window centred on it pooled under its mask.
When the generic masks come from a percs model whose backbone is the filter's (same variant, equal weights:
a frozen DINOv2), the embedder takes that model's window features from its predictor instead of running the
backbone a second time on the same windows (`MaskEmbedder.sharing`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from percs.baselines.common import ImageCache, cosine_similarity
from percs.evaluate.methods import MethodUnavailable
from percs.flows import renumber
from percs.metrics import evaluate
from percs.model.backbone import PATCH_SIZE
from percs.model.reference import embed_reference, label_coverage, pool_features, reference_window
from percs.predict import as_input_image, sliding_windows, window_batches

THRESHOLD_GRID = (-1.0,) + tuple(round(0.02 * k, 2) for k in range(50))


class MaskEmbedder:
    """DINOv2 embeddings of masks and of a reference cell (see the module docstring); backbone: a percs
    `DinoVisionTransformer` (e.g. `percs.model.backbone_weights.load_backbone("vits14", weights)`)."""

    def __init__(self, backbone: torch.nn.Module, window: int = 224, stride: int = 168, batch_size: int = 8):
        self.backbone, self.window, self.stride, self.batch_size = backbone.eval(), window, stride, batch_size
        self.predictor = None

    @classmethod
    def sharing(cls, predictor) -> MaskEmbedder:
        """An embedder on the backbone of a `percs.predict.Predictor`'s model, with its window, stride and
        batch size, that reads window features through `predictor.window_features` (so an image the predictor
        has just segmented costs no second backbone pass)."""
        config = predictor.config
        embedder = cls(predictor.model.eval().backbone, config.window, config.stride, config.batch_size)
        embedder.predictor = predictor
        return embedder

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def features(self, image) -> torch.Tensor:
        """(C, Hp/14, Wp/14) features of a whole image (raw (H, W[, C]) array) over the padded (Hp, Wp) grid."""
        image = as_input_image(image, self.device)
        padded, corners = sliding_windows(image, self.window, self.stride)
        grid = (padded.shape[1] // PATCH_SIZE, padded.shape[2] // PATCH_SIZE)
        batches = list(window_batches(padded, corners, self.window, self.batch_size))
        if self.predictor is not None:
            per_batch = self.predictor.window_features(padded, corners)
        else:
            per_batch = [self.backbone(windows).features for _, windows in batches]
        total = count = None
        for (batch, _), features in zip(batches, per_batch):
            for (top, left), values in zip(batch, features.float()):
                if total is None:
                    total, count = values.new_zeros(values.shape[0], *grid), values.new_zeros(1, *grid)
                rows = slice(top // PATCH_SIZE, top // PATCH_SIZE + values.shape[1])
                cols = slice(left // PATCH_SIZE, left // PATCH_SIZE + values.shape[2])
                total[:, rows, cols] += values
                count[:, rows, cols] += 1
        return total / count

    def embed_masks(self, image, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """(cells (N,) int64, the labels present ascending; embeddings (N, C) float32) of labels (H, W)."""
        features = self.features(image)
        rows, cols = (PATCH_SIZE * side for side in features.shape[1:])
        padded = np.zeros((rows, cols), np.int64)
        padded[: labels.shape[0], : labels.shape[1]] = labels
        cells, coverage = label_coverage(torch.from_numpy(padded).to(self.device))
        if len(cells) == 0:
            return np.zeros(0, np.int64), features.new_zeros(0, features.shape[0])
        return cells.cpu().numpy(), pool_features(features[None], coverage[None])[0]

    @torch.no_grad()
    def embed_reference(self, reference_image, reference_mask: np.ndarray) -> torch.Tensor:
        """(C,) embedding of the reference cell (reference_mask (H, W) bool in reference_image)."""
        image = as_input_image(reference_image, self.device)
        mask = torch.as_tensor(np.asarray(reference_mask) != 0, device=self.device)
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"reference_mask has shape {tuple(mask.shape)}, expected {tuple(image.shape[1:])}")
        window, window_mask = reference_window(image, mask, self.window)
        return embed_reference(self.backbone(window[None]).features.float(), window_mask[None])[0]


def keep_similar(labels: np.ndarray, cells: np.ndarray, similarity: np.ndarray, threshold: float) -> np.ndarray:
    """labels (H, W) with only the cells (N,) whose similarity (N,) is >= threshold: int32, renumbered 1..M in
    raster order."""
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    kept = cells[np.asarray(similarity) >= threshold]
    lookup[kept] = kept
    return renumber(lookup[labels])


@dataclass(frozen=True)
class Candidates:
    """One query's generic masks: labels (H, W) int32, cells (N,) and their similarity (N,) to the reference."""

    labels: np.ndarray
    cells: np.ndarray
    similarity: np.ndarray


def choose_threshold(candidates: list[Candidates], truths: list[np.ndarray],
                     grid=THRESHOLD_GRID) -> tuple[float, dict[float, float]]:
    """(threshold, {grid value: mean AP@0.5}): the grid value whose kept masks score the highest mean AP at
    IoU > 0.5 over the queries (lowest value on ties); truths: each query's true labels of the target type."""
    if not candidates or len(candidates) != len(truths):
        raise ValueError(f"need one truth per query and at least one query, got {len(candidates)} and {len(truths)}")
    scores = {}
    for threshold in grid:
        predictions = [keep_similar(c.labels, c.cells, c.similarity, threshold) for c in candidates]
        scores[float(threshold)] = float(evaluate(truths, predictions, 0.5)[0].image_mean.ap)
    best = max(scores.values())
    return min(t for t, ap in scores.items() if ap == best), scores


class SimilarityFilter:
    """The method: `segment(image, reference_image, reference_mask)` -> (H, W) int32 (see the module docstring).

    source: generic masks, `source(image, scale) -> labels` with `scale_of` and a `name`; embedder: a
    MaskEmbedder; backbone_name: for the method's name. Per-image masks and embeddings are cached (queries come
    image by image).
    """

    def __init__(self, source, embedder: MaskEmbedder, threshold: float, backbone_name: str = "vits14"):
        self.source, self.embedder, self.threshold, self.backbone_name = source, embedder, threshold, backbone_name
        self.masks = ImageCache(self._masks)
        self.settings: dict = {}
        self.tuning = ""

    @property
    def name(self) -> str:
        return (f"filter ({self.source.name} masks + DINOv2 {self.backbone_name} similarity, "
                f"threshold {self.threshold:g}{self.tuning})")

    def _masks(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        labels = self.source(image, scale)
        return (labels, *self.embedder.embed_masks(image, labels))

    def candidates(self, image, reference_image, reference_mask) -> Candidates:
        """The query's generic masks (at the scale the reference sets) and their similarity to the reference."""
        labels, cells, embeddings = self.masks(image, self.source.scale_of(reference_mask))
        reference = self.embedder.embed_reference(reference_image, reference_mask)
        return Candidates(labels, cells, cosine_similarity(embeddings, reference).cpu().numpy())

    def segment(self, image: np.ndarray, reference_image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
        found = self.candidates(image, reference_image, reference_mask)
        return keep_similar(found.labels, found.cells, found.similarity, self.threshold)

    def tune(self, dataset, split: str = "val", max_queries: int = 0) -> dict[float, float]:
        """Sets the threshold to the best of THRESHOLD_GRID on the queries of `split` (the first max_queries;
        0: all); returns every grid value's mean AP@0.5."""
        return tune_on_split(self, self.candidates, dataset, split, max_queries)


def tune_on_split(method, candidates, dataset, split: str = "val", max_queries: int = 0) -> dict[float, float]:
    """Sets `method.threshold` to the best of THRESHOLD_GRID (`choose_threshold`) over the queries of `split`
    (the first max_queries; 0: all), and `method.tuning` to the words saying so in its name; returns every grid
    value's mean AP@0.5. candidates(image, reference_image, reference_mask) -> Candidates: the method's masks
    and their scores for one query (the filter's similarity, the instance decision's probability)."""
    from percs.evaluate.runner import true_labels_of

    queries = [q for q in dataset.queries if dataset.record(q.image).split == split]
    queries = queries[:max_queries] if max_queries else queries
    if not queries:
        raise ValueError(f"split {split!r} of dataset {dataset.name!r} has no queries to choose the threshold on")
    found, truths = [], []
    for query in queries:
        record, reference = dataset.record(query.image), dataset.record(query.reference_image)
        truths.append(true_labels_of(dataset, query, dataset.read_labels(record)))
        reference_mask = dataset.read_labels(reference) == query.reference_label
        found.append(candidates(dataset.read_image(record), dataset.read_image(reference), reference_mask))
    method.threshold, scores = choose_threshold(found, truths)
    method.tuning = f" on {split}" + (f", {len(queries)} queries" if max_queries else "")
    return scores


def build_filter(args: argparse.Namespace, dataset=None) -> SimilarityFilter:
    """The filter method on `args.device`; its threshold chosen on `dataset`'s val split unless given."""
    from percs.api import resolve_device
    from percs.baselines.generic import CellposeMasks, PercsGenericMasks, generic_overrides

    if bool(args.generic_checkpoint) == bool(args.cellpose_model):
        raise ValueError("--method filter needs exactly one of --generic-checkpoint (a generic percs model) "
                         "and --cellpose-model (a Cellpose-SAM model file)")
    if args.filter_threshold is None and dataset is None:
        raise ValueError("--filter-threshold is required without a dataset to choose it on")
    device = resolve_device(getattr(args, "device", "auto"))
    if args.generic_checkpoint:
        # a head-only generic model (`percs export-model`, the shipped one) takes its backbone from --backbone-weights
        source = PercsGenericMasks(args.generic_checkpoint, device, getattr(args, "backbone_weights", None),
                                   generic_overrides(args))
    else:
        source = CellposeMasks(args.cellpose_model, device)
    backbone = _backbone(args.filter_backbone, args.filter_backbone_weights).to(device)
    shared = isinstance(source, PercsGenericMasks) and source.backbone_name == args.filter_backbone \
        and same_weights(source.predictor.model.backbone, backbone)
    embedder = MaskEmbedder.sharing(source.predictor) if shared else MaskEmbedder(backbone)
    method = SimilarityFilter(source, embedder, args.filter_threshold or 0.0, args.filter_backbone)
    method.settings = {"masks": source.name, "generic_checkpoint": args.generic_checkpoint,
                       "cellpose_model": args.cellpose_model, "backbone": args.filter_backbone,
                       "predict": dataclasses.asdict(source.predictor.config) if args.generic_checkpoint else None,
                       "backbone_weights": args.filter_backbone_weights or "official",
                       "backbone_shared_with_generic_model": shared, "device": str(device)}
    if args.filter_threshold is None:
        scores = method.tune(dataset, "val", args.filter_val_queries)
        method.settings.update(val_queries=args.filter_val_queries or "all", val_mean_ap50_by_threshold=scores)
    method.settings["threshold"] = method.threshold
    return method


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    """Whether two modules have the same parameter and buffer names, shapes and values."""
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(
        one[k].shape == other[k].shape and torch.equal(one[k], other[k].to(one[k].device)) for k in one)


def _backbone(name: str, weights: str | None):
    """The DINOv2 backbone, with MethodUnavailable for a missing weights file or a failed download."""
    from percs.model.backbone_weights import load_backbone

    if weights and not Path(weights).is_file():
        raise MethodUnavailable(f"--filter-backbone-weights {weights} does not exist (or is not a file)")
    try:
        return load_backbone(name, weights or None)
    except RuntimeError as error:
        raise MethodUnavailable(f"--filter-backbone-weights: {error}") from None
