"""Several reference cells, positive and negative, and cheap refinement, for a model with an instance-level
decision (`percs.model.instance`).

    result = segmenter.segment(image, references=[a, b, c], negatives=[d])
    better = segmenter.refine(result, add=[(120, 40)], remove=[(30, 200)])   # clicks, (y, x) pixels

Every cell the generic model finds in the image is embedded once (`CellCandidates`) and kept with the
result, so `refine` scores the same cells again against the grown reference sets: no second pass of the model
or of the backbone over the image. A click on a found cell reuses that cell's vectors; a mask that covers no
found cell is embedded alone (one small window through the backbone, as any reference is).
The decision itself is `InstanceScorer.decide`: the best match among the positives, vetoed where a negative
matches better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from percs.flows import renumber


@dataclass(frozen=True)
class CellCandidates:
    """Every cell the generic model found in one image, embedded; what `Segmenter.refine` scores again.

    image: (3, H, W) normalised image tensor; labels: (H, W) int64 tensor of every found cell; flows: (2, H, W);
    cells: (N,) ascending ids of labels; vectors: (N, L, C); descriptors: (N, D); positives, negatives: the
    reference cells [(vectors (L, C), descriptors (D,))] the result was decided with.
    """

    image: torch.Tensor
    labels: torch.Tensor
    flows: torch.Tensor
    cells: torch.Tensor
    vectors: torch.Tensor
    descriptors: torch.Tensor
    positives: tuple = ()
    negatives: tuple = ()


def find_candidates(predictor, instance, image, scale: float = 1.0) -> CellCandidates:
    """The generic prediction of image (as `Predictor.predict` takes it; at `scale`, the references' scale) and
    its cells embedded by `instance`."""
    from percs.predict.predictor import as_input_image

    prediction = predictor.predict(image, None, scale)
    tensor = as_input_image(image, predictor.device)
    labels = prediction.labels.to(torch.int64)
    cells, vectors, descriptors = instance.cells(tensor, labels)
    return CellCandidates(tensor, labels, prediction.flows, cells, vectors, descriptors)


def decide(instance, candidates: CellCandidates, positives: list, negatives: list,
           min_cell_probability: float | None = None):
    """The SegmentationResult of candidates kept by `instance.decide` against the references (and with
    probability >= min_cell_probability); `probability` paints each found cell with its probability."""
    from percs.predict.api import SegmentationResult

    labels, painted, cell_probability = _kept(instance, candidates.labels, candidates.cells, candidates.vectors,
                                              candidates.descriptors, positives, negatives, min_cell_probability)
    return SegmentationResult(
        labels=labels, probability=painted, cell_probability=cell_probability,
        flows=candidates.flows.cpu().numpy().astype(np.float32, copy=False),
        candidates=replace(candidates, positives=tuple(positives), negatives=tuple(negatives)),
    )


def _kept(instance, found: torch.Tensor, cells: torch.Tensor, vectors: torch.Tensor, descriptors: torch.Tensor,
          positives: list, negatives: list, min_cell_probability: float | None):
    """(labels (H, W) int32 canonical, probability (H, W) float32, cell probability (N_kept,) float32): the cells
    of found (H, W) int64 kept by `instance.decide`, every found cell painted with its probability."""
    probability, keep = instance.decide(vectors, descriptors, positives, negatives)
    if min_cell_probability is not None:
        keep = keep & (probability >= min_cell_probability)
    size = int(found.max()) + 1 if found.numel() else 1
    lookup = torch.zeros(size, device=probability.device)
    lookup[cells] = probability
    kept = torch.zeros(size, dtype=torch.bool, device=probability.device)
    kept[cells] = keep
    labels = torch.where(kept[found], found, 0).cpu().numpy().astype(np.int32)
    return (renumber(labels).astype(np.int32, copy=False), lookup[found].cpu().numpy().astype(np.float32, copy=False),
            probability[keep].cpu().numpy().astype(np.float32, copy=False))


def clicked_reference(instance, candidates: CellCandidates, item, name: str):
    """(vectors (L, C), descriptors (D,)) of one reference given to `refine` as `name` ("add" / "remove"):

    - a `Reference` from `Segmenter.reference` (any image): its vectors;
    - a (y, x) pixel of the result's image: the found cell under it (ValueError on background);
    - an (H, W) bool mask of the result's image: the found cell covering at least half of it, else the mask
      embedded alone.
    """
    from percs.predict.api import Reference

    if isinstance(item, Reference):
        if item.vectors is None:
            raise ValueError(f"{name}: the reference was made by a model without an instance scorer")
        return item.vectors
    height, width = candidates.labels.shape
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(v, (int, np.integer)) for v in item):
        y, x = int(item[0]), int(item[1])
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"{name}: point ({y}, {x}) is outside the image ({height} x {width})")
        label = int(candidates.labels[y, x])
        if label == 0:
            raise ValueError(f"{name}: point ({y}, {x}) is on background: no cell was found there")
        return _cell_vectors(candidates, label)
    mask = np.asarray(item)
    if mask.shape != (height, width) or mask.dtype != bool:
        raise ValueError(f"{name}: expected a Reference, a (y, x) point or an ({height}, {width}) bool mask of the "
                         f"result's image, got {type(item).__name__} {getattr(mask, 'shape', '')}")
    if not mask.any():
        raise ValueError(f"{name}: the mask is empty")
    mask_tensor = torch.from_numpy(mask).to(candidates.labels.device)
    under = candidates.labels[mask_tensor]
    counts = torch.bincount(under, minlength=1)
    counts[0] = 0
    if counts.numel() > 1 and 2 * int(counts.max()) >= int(mask.sum()):
        return _cell_vectors(candidates, int(counts.argmax()))
    return instance.reference(candidates.image, mask_tensor)


def _cell_vectors(candidates: CellCandidates, label: int):
    index = int(torch.searchsorted(candidates.cells, torch.tensor(label, device=candidates.cells.device)))
    return candidates.vectors[index], candidates.descriptors[index]


def decided_labels(instance, image: torch.Tensor, labels: torch.Tensor, positives: list, negatives: list,
                   min_cell_probability: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) int32 canonical, probability (H, W) float32): the cells of labels (H, W) in the normalised
    image (3, H, W) kept by `instance.decide`, each painted with its probability; for a block of a large image
    (`percs.predict.blockwise`), where the found cells are not kept for refining."""
    found = labels.to(torch.int64)
    cells, vectors, descriptors = instance.cells(image, found)
    kept, painted, _ = _kept(instance, found, cells, vectors, descriptors, positives, negatives, min_cell_probability)
    return kept, painted
