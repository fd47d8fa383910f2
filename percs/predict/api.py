"""The notebook-facing API: load a trained PerCS-DINO checkpoint once, then segment images with a reference cell.

    from percs.api import Segmenter
    segmenter = Segmenter.from_checkpoint("runs/mini/best.pt")   # checksum verified, weights restored, once
    reference = segmenter.reference(image, labels=truth, label=12)  # or segmenter.reference(image, cell_mask)
    result = segmenter.segment(other_image, reference)           # SegmentationResult of NumPy arrays
    result = segmenter.segment(image, references=[a, b], negatives=[c])   # instance-level models
    result = segmenter.refine(result, add=[(y, x)], remove=[(y2, x2)])   # re-scored, no backbone pass
    for result in segmenter.segment_many(images, reference): ...
    segmenter.segment_large("slide.ome.zarr", reference, "slide_labels.zarr")  # block by block, on dask

`load_model` gives the bare (model, config) for code that drives `percs.predict.Predictor` itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from percs.data.scale import shared_scale
from percs.flows import renumber
from percs.model.backbone import PATCH_SIZE
from percs.model.percs_dino import PerCSDino
from percs.predict.predictor import Predictor, PredictorConfig, as_input_image
from percs.train.provenance import UNKNOWN, TrainingData

# The smallest image side accepted: one backbone patch. Images smaller than a window are zero-padded to one
# (percs.predict), which is exact (the stitched fields are cut back to the image), but below one patch the
# image is less than a single token of what the backbone sees: such an image is refused, not padded.
MIN_IMAGE_SIDE = PATCH_SIZE


class ModelLoadError(ValueError):
    """A checkpoint that is not a trained percs model (wrong kind of file, or incompatible weights); names it."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" / None: CUDA when available, else the CPU; anything else as torch.device takes it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device}, but CUDA is not available on this machine")
    return device


def load_model(checkpoint: str | Path | None = None, device: str | torch.device | None = "auto",
               backbone_weights: str | Path | None = None):
    """(model, config): the PerCS-DINO model of a `percs train` checkpoint (last.pt / best.pt) or of a head-only
    model file (`percs export-model`; None: the model shipped with percs, `percs.predict.shipped`), in eval mode
    on `device`, and its resolved `percs.train.TrainConfig`. backbone_weights: a head-only file's DINOv2
    weights file (default: $PERCS_SHARED/weights, else the official download); ignored for whole checkpoints.

    The file's SHA-256 is checked (`percs.train.CheckpointError` when missing or corrupt); a file that is not a
    percs training checkpoint, or whose weights do not fit the model its config describes, raises
    ModelLoadError naming the file. A whole checkpoint holds the whole model: no backbone weight file is read.
    The model's `trained_on` attribute is the checkpoint's `percs.train.provenance.TrainingData` (UNKNOWN for
    checkpoints written before percs recorded it).
    """
    from percs.predict.shipped import HEAD_ONLY, default_model, load_head_backbone
    from percs.train.checkpoint import load_checkpoint
    from percs.train.config import config_from_dict
    from percs.train.setup import build_model

    path = default_model() if checkpoint is None else Path(checkpoint)
    device = resolve_device(device)  # a bad device is refused before the checkpoint is read
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ModelLoadError(f"checkpoint {path} is not a percs training checkpoint (no 'model' and 'config')")
    try:
        config = config_from_dict(state["config"])
    except ValueError as error:
        raise ModelLoadError(f"checkpoint {path} has an unreadable config: {error}") from None
    model_section = dataclasses.replace(config.model, backbone_weights="")
    if config.model.backbone_weights and config.model.backbone_depth:
        model_section = dataclasses.replace(model_section, backbone_embed_dim=0, backbone_num_heads=0)
    model: PerCSDino = build_model(model_section)
    head_only = state.get(HEAD_ONLY)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=head_only is None)
        if head_only is not None and (unexpected or any(not k.startswith("backbone.") for k in missing)):
            raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
    except RuntimeError as error:
        raise ModelLoadError(f"checkpoint {path}: its weights do not fit its config's model: {error}") from None
    if head_only is not None:
        try:
            load_head_backbone(model, head_only, backbone_weights, path)
        except (OSError, ValueError) as error:
            raise ModelLoadError(str(error)) from None
    try:
        model.trained_on = TrainingData.from_record(state.get("trained_on"))
    except ValueError as error:
        raise ModelLoadError(f"checkpoint {path} has an unreadable training-data record: {error}") from None
    model = model.to(resolve_device(device)).eval()
    if state.get("instance") is not None:
        model.instance = _instance_scorer(path, model, state["instance"], config.predict)
    return model, config


def _instance_scorer(path: Path, model, record: dict, predict: PredictorConfig):
    """The `InstanceScorer` of a checkpoint's `instance` section (`percs.train.scorer.attach_scorer`)."""
    from percs.model.instance import InstanceScorer
    from percs.train.scorer import scorer_from_record

    try:
        scorer = scorer_from_record(record).to(next(model.parameters()).device)
        settings = record["settings"]
        return InstanceScorer(model.backbone, scorer, record["layers"], settings.get("embedding", "patch"),
                              record["threshold"], predict.reference_window, predict.stride, predict.batch_size,
                              settings.get("window_size", 56), settings.get("context", 2.0), predict.precision,
                              settings.get("context_window", 0.0), record.get("expand", 0.0),
                              settings.get("cell_flips", False))
    except (KeyError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"checkpoint {path} has an unreadable instance scorer: {error}") from None


@dataclass(frozen=True)
class Reference:
    """A reference cell, ready for `Segmenter.segment`.

    embedding: (C,) float32 on the model's device; None for a generic model, which ignores the reference.
    mask: (H, W) bool, the reference cell in its image (for drawing it).
    vectors: for a model with an instance-level decision, the reference's (block vectors (L, C), descriptors
    (D,)) its scorer compares every found cell with; None otherwise.
    scale: the factor query images are resized by for this reference (`Predictor.scale_of`: 1.0 unless the
    model's predict.reference_diameter is set).
    """

    embedding: torch.Tensor | None
    mask: np.ndarray
    vectors: tuple[torch.Tensor, torch.Tensor] | None = None
    scale: float = 1.0


@dataclass
class SegmentationResult:
    """One image's segmentation as NumPy arrays on the host.

    labels: (H, W) int32 cells of the reference's type, 0 background, 1..N in raster order of their first pixel.
    probability: (H, W) float32 same-type probability (sigmoid of the model's logit).
    cell_probability: (N,) float32, entry l - 1 the mean of `probability` over the pixels of label l.
    flows: (2, H, W) float32 dy, dx in FLOW_SCALE x unit-flow units, for every cell whatever its type.
    candidates: for a model with an instance-level decision, every found cell embedded and the references
    used (`percs.predict.references.CellCandidates`), what `Segmenter.refine` re-scores; None otherwise.
    """

    labels: np.ndarray
    probability: np.ndarray
    cell_probability: np.ndarray
    flows: np.ndarray
    candidates: object = field(default=None, repr=False, compare=False)


def image_shape(image, name: str = "image") -> tuple[int, int]:
    """(H, W) of an image as the predictor takes it: a NumPy (H, W) / (H, W, C) array or a (3, H, W) tensor,
    at least MIN_IMAGE_SIDE pixels tall and wide. ValueError naming the argument `name` otherwise."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        shape = tuple(image.shape[1:])
    elif isinstance(image, np.ndarray) and image.ndim in (2, 3):
        shape = image.shape[:2]
    else:
        raise ValueError(f"{name} has shape {tuple(getattr(image, 'shape', ()))}, expected a NumPy "
                         "(H, W) or (H, W, C) array or a normalised (3, H, W) tensor")
    check_image_size(shape, name)
    return shape


def check_image_size(shape: tuple[int, int], name: str = "image") -> None:
    """ValueError naming `name` when an (H, W) image is less than MIN_IMAGE_SIDE pixels tall or wide."""
    if min(shape) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {shape[0]} x {shape[1]} pixels (height x width), expected at least "
                         f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} (one backbone patch; smaller than a window is "
                         "zero-padded to one)")


def reference_cell_mask(shape: tuple[int, int], reference_mask=None, labels=None, label: int | None = None):
    """(H, W) bool mask of the reference cell, from a binary `reference_mask` or from `labels` == `label`.

    shape: the reference image's (H, W). Exactly one of reference_mask (bool or {0, 1}) and labels (integer
    label image, with `label`, a label id in it) must be given. ValueError naming the argument otherwise.
    """
    if (reference_mask is None) == (labels is None):
        raise ValueError("give either reference_mask or labels (with label), not " +
                         ("both" if labels is not None else "neither"))
    if labels is None and label is not None:
        raise ValueError("label is given without labels; a label id picks a cell of a label image")
    name, array = ("reference_mask", reference_mask) if labels is None else ("labels", labels)
    array = np.asarray(array.cpu() if isinstance(array, torch.Tensor) else array)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}, expected the reference image's {tuple(shape)}")
    if array.dtype.kind not in "biu":
        raise ValueError(f"{name} has dtype {array.dtype}, expected integers or bool")
    if labels is None:
        if array.dtype != bool and array.size and not np.isin(array, (0, 1)).all():
            values = np.unique(array)
            raise ValueError(f"reference_mask is not binary: it has {len(values)} values {values[:4].tolist()}..., "
                             "expected bool or {0, 1} (for a label image pass labels= and label=)")
        mask = array.astype(bool)
    else:
        if label is None:
            raise ValueError("label is missing: which cell of labels is the reference?")
        mask = array == label
        if label == 0 or not mask.any():
            raise ValueError(f"label {label} is not a cell of labels")
    if not mask.any():
        raise ValueError("reference_mask is empty")
    return mask


def check_min_cell_probability(min_cell_probability: float | None) -> None:
    """ValueError unless min_cell_probability is None or a number in [0, 1]."""
    if min_cell_probability is not None and not 0.0 <= float(min_cell_probability) <= 1.0:
        raise ValueError(f"min_cell_probability must be in [0, 1], got {min_cell_probability!r}")


class Segmenter:
    """A model and its predictor settings, for segmenting many images with one reference cell.

    model: a PerCS-DINO model (or anything with the `percs.predict.Predictor` model interface). predict: the
    predictor settings (default `PredictorConfig()`). min_cell_probability: the optional second filter in
    [0, 1]: cells whose mean same-type probability is below it are dropped and the rest renumbered 1..N.
    The model's instance scorer, where it has one, is set to the predictor's `precision`.
    """

    def __init__(self, model: torch.nn.Module, predict: PredictorConfig | None = None,
                 min_cell_probability: float | None = None):
        if predict is not None and not isinstance(predict, PredictorConfig):
            raise TypeError(f"predict must be a PredictorConfig, got {type(predict).__name__}")
        check_min_cell_probability(min_cell_probability)
        self.predictor = Predictor(model, predict or PredictorConfig())
        self.min_cell_probability = None if min_cell_probability is None else float(min_cell_probability)
        if self.instance is not None:  # the model's scorer embeds reference and cells at the predictor's arithmetic
            self.instance.precision = self.predictor.config.precision

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, device: str | torch.device | None = "auto",
                        predict: PredictorConfig | Mapping | None = None,
                        min_cell_probability: float | None = None,
                        backbone_weights: str | Path | None = None) -> "Segmenter":
        """Loads a `percs train` checkpoint or head-only model once (`load_model`: checksum verified; None: the
        model shipped with percs, its backbone from backbone_weights as `load_model` says). predict: a PredictorConfig,
        or a dict of overrides of the checkpoint's own `predict` section (the settings its validation used),
        or None for that section as it is. The arguments are checked before the checkpoint is read."""
        if isinstance(predict, Mapping):
            unknown = sorted(set(predict) - {f.name for f in dataclasses.fields(PredictorConfig)})
            if unknown:
                raise ValueError(f"predict has unknown keys {unknown}")
        elif predict is not None and not isinstance(predict, PredictorConfig):
            raise TypeError(f"predict must be a PredictorConfig or a dict, got {type(predict).__name__}")
        check_min_cell_probability(min_cell_probability)
        model, config = load_model(checkpoint, device, backbone_weights)
        if isinstance(predict, Mapping):
            predict = dataclasses.replace(config.predict, **predict)
        return cls(model, config.predict if predict is None else predict, min_cell_probability)

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    @property
    def trained_on(self) -> TrainingData:
        """What the model was trained on (dataset, its train split's cell types, synthetic or not); UNKNOWN for
        a model without the record (an old checkpoint, or a model not loaded from a checkpoint)."""
        record = getattr(self.model, "trained_on", UNKNOWN)
        return record if isinstance(record, TrainingData) else UNKNOWN

    @property
    def instance(self):
        """The model's instance-level decision (`percs.model.instance.InstanceScorer`: every cell found by a
        generic model, each scored against the reference), or None for a model that decides pixel by pixel."""
        return getattr(self.model, "instance", None)

    @property
    def generic(self) -> bool:
        """Whether the model is generic (segments every cell and ignores the reference)."""
        return bool(getattr(self.model, "generic", False)) and self.instance is None

    def reference(self, reference_image, reference_mask=None, *, labels=None, label: int | None = None) -> Reference:
        """The reference cell of reference_image ((H, W) / (H, W, C) array, or normalised (3, H, W) tensor),
        given as a binary (H, W) reference_mask, or as an (H, W) label image `labels` and a label id `label`."""
        mask = reference_cell_mask(image_shape(reference_image, "reference_image"), reference_mask, labels, label)
        scale = self.predictor.scale_of(mask)
        if self.instance is not None:
            image = as_input_image(reference_image, self.predictor.device)
            vectors = self.instance.reference(image, torch.from_numpy(mask).to(image.device))
            return Reference(None, mask, vectors, scale)
        if self.generic:
            return Reference(None, mask, scale=scale)
        return Reference(self.predictor.embed_reference(reference_image, mask), mask, scale=scale)

    def segment(self, image, reference: Reference | None = None, *, references=None, negatives=None
                ) -> SegmentationResult:
        """Cells of the reference's type in image ((H, W) / (H, W, C) array, or normalised (3, H, W) tensor).
        reference: from `reference`; may be None for a generic model. references, negatives: instead of
        reference, K >= 1 positive and M >= 0 negative References (cells of other types), for a model with an
        instance-level decision (`percs.model.instance.InstanceScorer.decide`)."""
        positives = self._positives(reference, references)
        negatives = self._checked_references(negatives, "negatives", allow_empty=True)
        if positives is None and not self.generic:
            raise ValueError("reference is None, but the model is not generic: make one with segmenter.reference")
        image_shape(image, "image")
        if self.instance is not None:
            from percs.predict.references import decide, find_candidates

            self._check_vectors(positives + negatives)
            candidates = find_candidates(self.predictor, self.instance, image,
                                         shared_scale(r.scale for r in positives))
            return decide(self.instance, candidates, [r.vectors for r in positives], [r.vectors for r in negatives],
                          self.min_cell_probability)
        if len(positives or ()) > 1 or negatives:
            raise ValueError("several references or negatives need a model with an instance-level decision "
                             "(`percs train-scorer --model-out`); this model decides pixel by pixel from one reference")
        reference = positives[0] if positives else None
        prediction = self.predictor.predict(image, None if reference is None else reference.embedding,
                                            shared_scale(r.scale for r in positives or ()))
        result = SegmentationResult(
            labels=prediction.labels.cpu().numpy().astype(np.int32, copy=False),
            probability=prediction.probability.cpu().numpy().astype(np.float32, copy=False),
            cell_probability=prediction.cell_probability.cpu().numpy().astype(np.float32, copy=False),
            flows=prediction.flows.cpu().numpy().astype(np.float32, copy=False),
        )
        if self.min_cell_probability is None:
            return result
        return drop_unlikely_cells(result, self.min_cell_probability)

    def refine(self, result: SegmentationResult, add=(), remove=()) -> SegmentationResult:
        """The result decided again with more positive (`add`) and negative (`remove`) references, from the
        cells and vectors kept with it: no model or backbone pass over the image. Each item is a Reference, a
        (y, x) pixel of the result's image (the found cell under it) or an (H, W) bool mask of a cell in it
        (`percs.predict.references.clicked_reference`). Needs a model with an instance-level decision."""
        from percs.predict.references import clicked_reference, decide

        if not isinstance(result, SegmentationResult):
            raise TypeError(f"result must be a SegmentationResult, got {type(result).__name__}")
        candidates = result.candidates
        if candidates is None or self.instance is None:
            raise ValueError("refine needs a result of a model with an instance-level decision (its found cells "
                             "are kept with the result); this result or model has none")
        added = [clicked_reference(self.instance, candidates, item, "add") for item in add]
        removed = [clicked_reference(self.instance, candidates, item, "remove") for item in remove]
        return decide(self.instance, candidates, list(candidates.positives) + added,
                      list(candidates.negatives) + removed, self.min_cell_probability)

    def _positives(self, reference, references) -> list[Reference] | None:
        if reference is not None and references is not None:
            raise ValueError("give reference or references, not both")
        if references is not None:
            return self._checked_references(references, "references", allow_empty=False)
        if reference is not None and not isinstance(reference, Reference):
            raise TypeError(f"reference must be a Reference from Segmenter.reference, got {type(reference).__name__}")
        return None if reference is None else [reference]

    @staticmethod
    def _checked_references(references, name: str, allow_empty: bool) -> list[Reference]:
        references = list(references or ())
        if not references and not allow_empty:
            raise ValueError(f"{name} is empty: give at least one Reference")
        for i, reference in enumerate(references):
            if not isinstance(reference, Reference):
                raise TypeError(f"{name}[{i}] must be a Reference from Segmenter.reference, "
                                f"got {type(reference).__name__}")
        return references

    @staticmethod
    def _check_vectors(references: list[Reference]) -> None:
        if any(r.vectors is None for r in references):
            raise ValueError("reference was made by a model without an instance scorer: make it with this segmenter")

    def segment_many(self, images: Iterable, reference: Reference | None = None, *, references=None,
                     negatives=None) -> Iterator[SegmentationResult]:
        """`segment` for each image in turn, lazily (images may be a generator reading files)."""
        for image in images:
            yield self.segment(image, reference, references=references, negatives=negatives)

    def segment_large(self, image, reference, labels_path: str | Path, config=None, *, references=(),
                      negatives=()):
        """An image far larger than memory, segmented block by block on dask into the Zarr array labels_path
        (`percs.predict.blockwise.segment_blockwise`). image: a Zarr / OME-Zarr store or TIFF path, an
        ImageSource or an array; reference: from `reference`, or a `percs.predict.blockwise.ReferenceRegion`
        (a cell inside the large image); config: a BlockwiseConfig (block size, overlap, dask scheduler);
        references, negatives: more positive and negative References (instance-level models).
        Returns the BlockwiseResult (labels path, cell table, counts)."""
        from percs.predict.blockwise import BlockwiseConfig, segment_blockwise

        return segment_blockwise(self, image, reference, labels_path, config or BlockwiseConfig(),
                                 positives=tuple(references), negatives=tuple(negatives))


def drop_unlikely_cells(result: SegmentationResult, min_cell_probability: float) -> SegmentationResult:
    """The second filter: cells whose mean same-type probability is below min_cell_probability removed, the
    rest renumbered 1..N in raster order (their order is unchanged, so cell_probability keeps its entries)."""
    keep = result.cell_probability >= min_cell_probability
    lookup = np.concatenate(([False], keep))
    labels = renumber(np.where(lookup[result.labels], result.labels, 0).astype(np.int32))
    return dataclasses.replace(result, labels=labels.astype(np.int32, copy=False),
                               cell_probability=result.cell_probability[keep])
