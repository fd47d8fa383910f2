"""Sliding-window inference of a PerCS-DINO model and post-processing into instance masks.

The image is zero-padded at the bottom and right to a multiple of 14 and to at least one window (256 -> 266,
100 -> 224); windows of `window` pixels are placed every `stride` pixels along each axis, the last one flush
with the padded border; the model runs on batches of windows; the three output channels (flows and same-type
logit) are averaged where windows overlap; the padding is cut off; `percs.flows.flows_to_masks` turns flows
and logit (as `cellprob`, threshold 0) into labels. Everything stays on the model's device. The network runs
at `PredictorConfig.precision` (`percs.model.precision`); what the predictor returns is float32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from percs.data.scale import check_reference_diameter, reference_scale, resize, scaled_shape
from percs.flows import flows_to_masks
from percs.model.backbone import PATCH_SIZE
from percs.model.precision import check_precision, inference_precision
from percs.model.reference import reference_window


def check_flow_threshold(value: float, name: str = "predict.flow_threshold") -> float:
    """value when it is a finite number >= 0 (0: no flow check), else ValueError naming `name`."""
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r} (0: no flow check)")
    return value


# flips -> the views the network sees, as the (3, H, W) image's axes each one reverses (1: y, 2: x)
FLIP_VIEWS = {1: ((),), 2: ((), (1, 2)), 4: ((), (1, 2), (1,), (2,))}


@dataclass(frozen=True)
class PredictorConfig:
    """Sliding windows (the paper's 224 / 168), reference window, batching, `flows_to_masks` settings, the
    network's arithmetic (`percs.model.precision`: "auto" is bfloat16 on CPUs that compute it natively), and
    `flips`: the network's output averaged over the image and its flips (`FLIP_VIEWS`: 1 the image alone, as the
    paper; 2 adds it flipped on both axes; 4 on each axis too), each view costing one more network pass.
    reference_diameter: 0 (the paper) runs every image at its own scale; D > 0 resizes the query and the reference
    so that the reference cell is D pixels across (`percs.data.scale`, the rule training uses), labels back at the
    input's size."""

    window: int = 224
    stride: int = 168
    batch_size: int = 8
    reference_window: int = 224
    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    niter: int = 200
    min_size: int = 15
    precision: str = "auto"
    flips: int = 1
    reference_diameter: float = 0.0

    def __post_init__(self) -> None:
        check_precision(self.precision, "predict.precision")
        check_reference_diameter(self.reference_diameter)
        for key in ("window", "reference_window"):
            value = getattr(self, key)
            if value <= 0 or value % PATCH_SIZE:
                raise ValueError(f"predict.{key} must be a positive multiple of {PATCH_SIZE}, got {value!r}")
        if not 0 < self.stride <= self.window:
            raise ValueError(f"predict.stride must be in 1..window ({self.window}), got {self.stride!r}")
        if self.batch_size <= 0:
            raise ValueError(f"predict.batch_size must be positive, got {self.batch_size!r}")
        if self.flips not in FLIP_VIEWS:
            raise ValueError(f"predict.flips must be one of {sorted(FLIP_VIEWS)}, got {self.flips!r}")
        check_flow_threshold(self.flow_threshold)


@dataclass
class Prediction:
    """The result for one (H, W) image, as tensors on the model's device.

    labels: (H, W) int32 instances of the reference's type, 0 background, 1..N in raster order.
    flows: (2, H, W) float32 dy, dx in FLOW_SCALE x unit-flow units (all cells).
    probability: (H, W) float32 sigmoid of the same-type logit.
    cell_probability: (N,) float32, entry l - 1 the mean probability over the pixels of label l.
    """

    labels: torch.Tensor
    flows: torch.Tensor
    probability: torch.Tensor
    cell_probability: torch.Tensor


def padded_size(size: int, window: int) -> int:
    """An image side padded to a multiple of 14 and to at least one window: 256 -> 266, 100 -> 224 (window 224)."""
    return max(window, math.ceil(size / PATCH_SIZE) * PATCH_SIZE)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one padded side `size` >= window: 0, stride, ... and a last one ending at `size`."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def sliding_windows(image: torch.Tensor, window: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(padded, corners): a (C, H, W) image zero-padded at the bottom and right to `padded_size` on both sides,
    and the (top, left) corners of its windows in raster order (`window_starts` along each axis)."""
    height, width = image.shape[1:]
    padded = F.pad(image, (0, padded_size(width, window) - width, 0, padded_size(height, window) - height))
    corners = [(top, left) for top in window_starts(padded.shape[1], window, stride)
               for left in window_starts(padded.shape[2], window, stride)]
    return padded, corners


def window_batches(padded: torch.Tensor, corners: list[tuple[int, int]], window: int, batch_size: int):
    """Yields (corners of the batch, windows (B, C, window, window)) for consecutive runs of batch_size corners."""
    for first in range(0, len(corners), batch_size):
        batch = corners[first : first + batch_size]
        yield batch, torch.stack([padded[:, top : top + window, left : left + window] for top, left in batch])


def as_input_image(image, device: torch.device) -> torch.Tensor:
    """(3, H, W) float32 on `device`. Tensors are taken as already normalised (3, H, W); NumPy arrays as raw
    (H, W) or (H, W, C) images, normalised by `percs.data.normalize.normalize_image`."""
    if isinstance(image, np.ndarray):
        from percs.data.normalize import normalize_image

        image = torch.from_numpy(normalize_image(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor or NumPy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected a normalised (3, H, W) tensor")
    if not image.dtype.is_floating_point:
        raise ValueError(f"image has dtype {image.dtype}, expected a float (normalised) tensor")
    image = image.to(device=device, dtype=torch.float32)
    if not torch.isfinite(image).all():
        raise ValueError("image has NaN or infinite values")
    return image


class Predictor:
    """Runs a model (PerCS-DINO, or anything with its `embed_reference` / `forward` / `generic` interface).

    Typical use: `embedding = predictor.embed_reference(ref_image, ref_mask)` once per reference, then
    `predictor.predict(image, embedding)` for each query image. The model is put in eval mode while it runs
    and given back in the mode it had (so validation can run in the middle of training).
    """

    def __init__(self, model: torch.nn.Module, config: PredictorConfig = PredictorConfig()):
        self.model = model
        self.config = config
        self._features_of: dict[tuple[int, ...], tuple] = {}  # view -> (padded, features, version): window_features

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters, where every step of the prediction runs."""
        return next(self.model.parameters()).device

    def scale_of(self, reference_mask) -> float:
        """The factor query and reference images are resized by for this reference cell (`reference_scale` of
        predict.reference_diameter; 1.0 when it is 0): pass it to `fields` / `predict`."""
        return reference_scale(reference_mask, self.config.reference_diameter)

    def embed_reference(self, reference_image, reference_mask) -> torch.Tensor:
        """(C,) embedding of a reference cell: reference_image as `as_input_image` takes it (any size), and
        reference_mask (H, W) bool or {0, 1}, the cell. The backbone sees the `reference_window` around it, in
        the image resized by `scale_of(reference_mask)`."""
        image = as_input_image(reference_image, self.device)
        mask = torch.as_tensor(reference_mask, device=self.device)
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"reference_mask has shape {tuple(mask.shape)}, expected {tuple(image.shape[1:])}")
        scale = self.scale_of(mask)
        if scale != 1:
            shape = scaled_shape(tuple(image.shape[1:]), scale)
            image, mask = resize(image, shape), resize(mask[None].float(), shape, "nearest")[0]
            if not mask.any():
                raise ValueError("reference_mask vanishes when resized by predict.reference_diameter")
        window, window_mask = reference_window(image, mask != 0, self.config.reference_window)
        with self._inference():
            return self.model.embed_reference(window[None], window_mask[None])[0].float()

    def fields(self, image, reference_embedding: torch.Tensor | None = None, scale: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stitched model output for one image: (flows (2, H, W), same-type logits (H, W)), float32.

        image: as `as_input_image` takes it. reference_embedding: (C,) from `embed_reference`; None (and
        ignored) for a generic model. scale: the network runs on the image resized by it (`scale_of` the
        reference mask), its output resized back to (H, W).
        """
        image = as_input_image(image, self.device)
        embedding = self._check_embedding(reference_embedding)
        if scale == 1:
            return self._averaged_fields(image, embedding)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        flows, logits = self._averaged_fields(resize(image, scaled_shape(tuple(image.shape[1:]), scale)), embedding)
        fields = resize(torch.cat((flows, logits[None])), tuple(image.shape[1:]))
        return fields[:2].contiguous(), fields[2].contiguous()

    def _averaged_fields(self, image: torch.Tensor, embedding: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """`fields` of a (3, H, W) input image at its size: the mean of the views of `flips`."""
        views = FLIP_VIEWS[self.config.flips]
        flows, logits = self._view_fields(image, embedding, ())
        for axes in views[1:]:  # each view's output flipped back; a reversed axis negates its flow component
            view_flows, view_logits = self._view_fields(image.flip(axes), embedding, axes)
            sign = torch.ones(2, 1, 1, device=flows.device)
            sign[[axis - 1 for axis in axes]] = -1.0
            flows = flows + view_flows.flip(axes) * sign
            logits = logits + view_logits.flip(tuple(axis - 1 for axis in axes))
        if len(views) > 1:
            flows, logits = flows / len(views), logits / len(views)
        return flows, logits

    def _view_fields(self, image: torch.Tensor, embedding: torch.Tensor | None, view: tuple[int, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image.shape[1:]
        window = self.config.window
        padded, corners = sliding_windows(image, window, self.config.stride)
        with self._inference():
            features = self.window_features(padded, corners, view)
            total = padded.new_zeros(3, *padded.shape[1:])
            count = padded.new_zeros(1, *padded.shape[1:])
            for index, (batch, windows) in enumerate(window_batches(padded, corners, window, self.config.batch_size)):
                expanded = None if embedding is None else embedding[None].expand(len(batch), -1)
                if features is None:
                    output = self.model(windows, expanded)
                else:
                    output = self.model.decode_features(features[index], expanded, windows)
                stacked = torch.cat((output.flows, output.same_type_logits[:, None]), dim=1).float()
                for (top, left), values in zip(batch, stacked):
                    total[:, top : top + window, left : left + window] += values
                    count[:, top : top + window, left : left + window] += 1
        fields = (total / count)[:, :height, :width]
        return fields[:2].contiguous(), fields[2].contiguous()

    def predict(self, image, reference_embedding: torch.Tensor | None = None, scale: float = 1.0) -> Prediction:
        """Instance masks of the reference's type in one image (see `fields` for the arguments)."""
        flows, logits = self.fields(image, reference_embedding, scale)
        config = self.config
        labels = flows_to_masks(
            flows,
            logits,
            cellprob_threshold=config.cellprob_threshold,
            flow_threshold=config.flow_threshold,
            niter=config.niter,
            min_size=config.min_size,
        ).to(flows.device)
        probability = torch.sigmoid(logits)
        return Prediction(labels, flows, probability, cell_mean(labels, probability))

    def window_features(self, padded: torch.Tensor, corners: list[tuple[int, int]], view: tuple[int, ...] = ()
                        ) -> list[torch.Tensor] | None:
        """The backbone features of every window batch of `padded` (from `sliding_windows` with this predictor's
        window and stride; batches as `window_batches` makes them), reused while the same image comes back.

        Several queries of one image (one per cell type, or one per reference) differ only in the reference
        embedding, which enters after the backbone; the backbone's features of the last image are kept and
        reused when the next image is equal to it (torch.equal, far cheaper than the backbone) and the backbone's
        parameters have not changed in place since (their version counters, which optimiser steps advance); one
        image is kept per `view` (the flips of `PredictorConfig.flips`).
        None for models without a separate backbone (then `model(windows, embedding)` runs whole)."""
        if not (hasattr(self.model, "backbone") and hasattr(self.model, "decode_features")):
            return None
        version = tuple(p._version for p in self.model.backbone.parameters())
        cached = self._features_of.get(view)
        if cached is not None and cached[2] == version and cached[0].shape == padded.shape \
                and torch.equal(cached[0], padded):
            return cached[1]
        batches = window_batches(padded, corners, self.config.window, self.config.batch_size)
        features = [self.model.backbone(windows).features for _, windows in batches]
        self._features_of[view] = (padded, features, version)
        return features

    def forget_features(self) -> None:
        """Drops the kept backbone features (`window_features`): the next image runs the backbone again, even
        when it equals the last (a timing of a whole prediction, or memory to give back)."""
        self._features_of = {}

    def _check_embedding(self, reference_embedding: torch.Tensor | None) -> torch.Tensor | None:
        if getattr(self.model, "generic", False):
            return None
        if reference_embedding is None:
            raise ValueError("reference_embedding is None, but the model is not generic")
        if not isinstance(reference_embedding, torch.Tensor) or reference_embedding.ndim != 1:
            raise ValueError("reference_embedding must be a (C,) tensor from embed_reference")
        return reference_embedding.to(self.device)

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.model.training
        self.model.eval()
        try:
            # not inference_mode: its tensors could not be reused in training code
            with torch.no_grad(), inference_precision(self.config.precision, self.device):
                yield
        finally:
            self.model.train(was_training)


def cell_mean(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Mean of values (H, W) over each label of labels (H, W) 1..N: (N,) float32 (0 for an absent label)."""
    flat = labels.flatten().long()
    n_cells = int(flat.max()) if flat.numel() else 0
    sums = torch.zeros(n_cells + 1, dtype=torch.float64, device=values.device)
    sums.index_add_(0, flat, values.flatten().double())
    counts = torch.bincount(flat, minlength=n_cells + 1).clamp_min(1)
    return (sums / counts)[1:].float()
