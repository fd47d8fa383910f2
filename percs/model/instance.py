"""The instance-level same-type decision: every cell found, then each cell scored against the reference.

A class-agnostic model (`model.head.generic=true`) finds every cell with its flows; each found cell is then
compared with the reference cell by a small learned `CellScorer` from

- its DINOv2 features of several blocks (`LAYERS`), pooled under the cell with each 14 x 14 patch's covered
  fraction as `percs.model.reference` pools the reference: per block, the element-wise product and absolute
  difference of the cell's and the reference's L2-normalised vectors, so the scorer learns a metric on the
  vectors, not only their cosine;
- the cosine per block, raw and standardised over the candidate cells of the same image (the decision is made
  within one image: "more like the reference than this image's other cells");
- explicit descriptors (`DESCRIPTORS`: log area, mean and standard deviation of each normalised channel,
  eccentricity), as differences from the reference's and standardised within the image.

The scorer is trained on pairs drawn as training draws them (`percs.train.scorer`): every cell of a training
crop, pasted cells included, against the item's reference cell, labelled same type or not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from percs.model.backbone import PATCH_SIZE
from percs.model.precision import check_precision, inference_precision
from percs.model.reference import embed_reference, label_coverage, pool_features, reference_window

LAYERS = (4, 8, 12)
DESCRIPTORS = ("log_area", "mean_0", "mean_1", "mean_2", "std_0", "std_1", "std_2", "eccentricity")


def block_features(backbone, images: torch.Tensor, layers=LAYERS, tail: nn.ModuleList | None = None
                   ) -> list[torch.Tensor]:
    """Patch features after each block in `layers` (1-based), each through the backbone's final LayerNorm as
    DINOv2's `get_intermediate_layers(norm=True)`: images (B, 3, H, W) -> [(B, C, H/14, W/14)] per layer.
    tail: fine-tuned blocks that replace the backbone's last ones (`CellScorer.tail`)."""
    if not layers:
        raise ValueError("layers must name at least one block")
    return list(backbone(images, blocks=tuple(layers), tail=tail).blocks)


def cell_descriptors(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (N,) int64 ascending, descriptors (N, len(DESCRIPTORS)) float32) of the cells of labels (H, W)
    in a normalised image (3, H, W): log area, each channel's mean and (population) standard deviation over
    the cell, and the eccentricity of the cell's pixel coordinates (skimage's regionprops definition: the
    ellipse with the same second central moments). Sums in float64 through index_add (any device)."""
    if image.ndim != 3 or labels.shape != image.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and labels {tuple(labels.shape)} must be (C, H, W) and (H, W)")
    inside = labels > 0
    cells, index = torch.unique(labels[inside], return_inverse=True)
    n = len(cells)
    if n == 0:
        return cells.long(), image.new_zeros(0, len(DESCRIPTORS))
    device = image.device
    ys, xs = torch.meshgrid(torch.arange(labels.shape[0], device=device, dtype=torch.float64),
                            torch.arange(labels.shape[1], device=device, dtype=torch.float64), indexing="ij")
    columns = [torch.ones_like(ys), ys, xs, ys * ys, xs * xs, ys * xs]
    values = image.double()
    columns += [c for channel in values for c in (channel, channel * channel)]
    stacked = torch.stack([c[inside] for c in columns], 1)
    sums = torch.zeros(n, stacked.shape[1], dtype=torch.float64, device=device).index_add_(0, index, stacked)
    area = sums[:, 0]
    mean = sums / area[:, None]
    mu_yy = mean[:, 3] - mean[:, 1] ** 2
    mu_xx = mean[:, 4] - mean[:, 2] ** 2
    mu_xy = mean[:, 5] - mean[:, 1] * mean[:, 2]
    half_trace, root = (mu_yy + mu_xx) / 2, torch.sqrt(((mu_yy - mu_xx) / 2) ** 2 + mu_xy ** 2)
    major, minor = half_trace + root, (half_trace - root).clamp_min(0)
    eccentricity = torch.where(major > 0, torch.sqrt((1 - minor / major.clamp_min(1e-300)).clamp(0, 1)),
                               torch.zeros_like(major))
    channel_mean = mean[:, 6::2]
    channel_std = torch.sqrt((mean[:, 7::2] - channel_mean ** 2).clamp_min(0))
    descriptors = torch.cat((area.log()[:, None], channel_mean, channel_std, eccentricity[:, None]), 1)
    return cells.long(), descriptors.float()


def pool_cells(features: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (N,), pooled (N, L, C)) of labels (h * 14, w * 14) over per-layer features [(C, h, w)]."""
    cells, coverage = label_coverage(labels)
    if len(cells) == 0:
        return cells, features[0].new_zeros(0, len(features), features[0].shape[0])
    pooled = [pool_features(f[None].float(), coverage[None])[0] for f in features]
    return cells, torch.stack(pooled, 1)


def reference_vectors(backbone, image: torch.Tensor, mask: torch.Tensor, layers=LAYERS,
                      window: int = 224) -> torch.Tensor:
    """Pooled (L, C) of a reference cell, mask (H, W) bool in a normalised image (3, H, W): its block features
    in the window centred on it (`reference_window`, as the reference embedding)."""
    crop, crop_mask = reference_window(image, mask, window)
    per_layer = block_features(backbone, crop[None], layers)
    return torch.stack([embed_reference(f.float(), crop_mask[None])[0] for f in per_layer])


def group_standardise(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """values (N, K) minus their group's mean, over the group's standard deviation (+ 1e-3): groups (N,)."""
    count = torch.bincount(groups, minlength=n_groups).clamp_min(1).to(values.dtype)[:, None]
    mean = torch.zeros(n_groups, values.shape[1], dtype=values.dtype, device=values.device)
    mean = mean.index_add_(0, groups, values) / count
    centred = values - mean[groups]
    var = torch.zeros_like(mean).index_add_(0, groups, centred * centred) / count
    positive = var > 0                  # sqrt's gradient at 0 is infinite: a group of one cell would give NaN
    std = torch.where(positive, var, torch.ones_like(var)).sqrt() * positive
    return centred / (std + 1e-3)[groups]


class CellScorer(nn.Module):
    """Same-type logit of each candidate cell against its reference (see the module docstring).

    layers, dim: the pooled vectors' blocks and width; n_descriptors: len(DESCRIPTORS); width: per-block
    projection of [u * v, |u - v|]; hidden: the head's hidden width; tail: None (the backbone frozen, the
    paper's features) or fine-tuned copies of the backbone's last blocks, trained with the scorer
    (`percs.train.scorer`, `tune_blocks`), through which every cell and reference is embedded.
    """

    def __init__(self, layers: int, dim: int, n_descriptors: int = len(DESCRIPTORS), width: int = 64,
                 hidden: int = 128, dropout: float = 0.2, tail: nn.ModuleList | None = None):
        super().__init__()
        self.layers, self.dim, self.n_descriptors = layers, dim, n_descriptors
        self.tail = tail
        self.per_layer = nn.ModuleList(nn.Linear(2 * dim, width) for _ in range(layers))
        inputs = layers * width + 2 * layers + 3 * n_descriptors
        self.head = nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, cells: torch.Tensor, references: torch.Tensor, cell_descriptors: torch.Tensor,
                reference_descriptors: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """cells (N, L, C) pooled vectors; references (N, L, C) or (L, C), each cell's reference; descriptors
        (N, D) and (N, D) or (D,); groups (N,) int64, the image (candidate set) of each cell, for the
        within-image standardisation (None: all cells one image). Returns (N,) logits."""
        if cells.ndim != 3 or cells.shape[1:] != (self.layers, self.dim):
            raise ValueError(f"cells has shape {tuple(cells.shape)}, expected (N, {self.layers}, {self.dim})")
        references = references.expand_as(cells)
        reference_descriptors = reference_descriptors.expand_as(cell_descriptors)
        if groups is None:
            groups = torch.zeros(len(cells), dtype=torch.int64, device=cells.device)
        n_groups = int(groups.max()) + 1 if len(groups) else 1
        u, v = F.normalize(cells.float(), dim=-1), F.normalize(references.float(), dim=-1)
        parts = [F.gelu(project(torch.cat((u[:, i] * v[:, i], (u[:, i] - v[:, i]).abs()), -1)))
                 for i, project in enumerate(self.per_layer)]
        cosine = (u * v).sum(-1)
        difference = cell_descriptors.float() - reference_descriptors.float()
        context = group_standardise(torch.cat((cosine, cell_descriptors.float()), 1), groups, n_groups)
        return self.head(torch.cat(parts + [cosine, difference, difference.abs(), context], -1))[:, 0]


class TypeScorer(nn.Module):
    """Same-type logit of each candidate cell against its reference from a type classifier: a linear layer on
    the standardised features (every block's pooled vector and the descriptors) gives each cell's posterior over
    the K cell types of the training split, and the probability that a cell has the reference's type is the dot
    product of the two posteriors, q = p_cell . p_ref, read independently. The logit is log q - log(1 - q).

    A drop-in for CellScorer (the same forward) for benchmarks whose evaluation types are the training types (the
    PanNuke protocol, consep): the reference then picks one of the types the classifier knows. It is fitted on
    every true cell of the train split (`percs.train.scorer.fit_type_scorer`), not on pairs. On consep it ranks a
    found cell against the reference better than the pair scorer (per-query AUC 0.752 against 0.666;
    docs/type_decision.md). tail is always None (frozen backbone)."""

    tail = None

    def __init__(self, layers: int, dim: int, n_descriptors: int = len(DESCRIPTORS), classes: int = 2):
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be at least 2, got {classes!r}")
        self.layers, self.dim, self.n_descriptors, self.classes = layers, dim, n_descriptors, classes
        inputs = layers * dim + n_descriptors
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("scale", torch.ones(inputs))
        self.linear = nn.Linear(inputs, classes)

    def features(self, vectors: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """(N, L * C + D) unstandardised inputs of cells (N, L, C) with descriptors (N, D)."""
        if vectors.ndim != 3 or vectors.shape[1:] != (self.layers, self.dim):
            raise ValueError(f"vectors has shape {tuple(vectors.shape)}, expected (N, {self.layers}, {self.dim})")
        return torch.cat((vectors.float().flatten(1), descriptors.float()), 1)

    def type_logits(self, vectors: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """(N, K) type logits of cells (N, L, C) with descriptors (N, D)."""
        return self.linear((self.features(vectors, descriptors) - self.mean) / self.scale)

    def forward(self, cells: torch.Tensor, references: torch.Tensor, cell_descriptors: torch.Tensor,
                reference_descriptors: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """As CellScorer.forward (groups unused: each cell is read alone). Returns (N,) logits."""
        if references.ndim == 2:
            references, reference_descriptors = references[None], reference_descriptors[None]
        reference_types = torch.softmax(self.type_logits(references, reference_descriptors), -1)
        return self.same_type_logits(cells, cell_descriptors, reference_types)

    def same_type_logits(self, cells: torch.Tensor, cell_descriptors: torch.Tensor,
                         reference_types: torch.Tensor) -> torch.Tensor:
        """(N,) logits of p_cell . reference_types, a type distribution (K,) or one per cell (N, K)."""
        cell_types = torch.softmax(self.type_logits(cells, cell_descriptors), -1)
        same = (cell_types * reference_types).sum(-1).clamp(1e-6, 1 - 1e-6)
        return torch.log(same) - torch.log1p(-same)

    def pooled_logits(self, cells: torch.Tensor, cell_descriptors: torch.Tensor, references: list) -> torch.Tensor:
        """(N,) logits against several references of one type [(vectors (L, C), descriptors (D,))]: their type
        posteriors averaged into one reading of the type, each cell's posterior dotted with it. More positives
        then sharpen the type rather than widen it (a nearest-reference rule keeps a cell like any of them)."""
        vectors = torch.stack([r[0] for r in references])
        descriptors = torch.stack([r[1] for r in references])
        reference_types = torch.softmax(self.type_logits(vectors, descriptors), -1).mean(0)
        return self.same_type_logits(cells, cell_descriptors, reference_types)


def scorer_label(scorer: nn.Module | None) -> str:
    """How a method name calls its scorer: "learned cell scorer" (CellScorer) or "type classifier" (TypeScorer)."""
    return "type classifier" if isinstance(scorer, TypeScorer) else "learned cell scorer"


def image_block_features(backbone, image: torch.Tensor, layers=LAYERS, window: int = 224, stride: int = 168,
                         batch_size: int = 8) -> list[torch.Tensor]:
    """Block features of a normalised (3, H, W) image over its padded grid [(C, Hp/14, Wp/14)] per layer: the
    predictor's sliding windows (`percs.predict.sliding_windows`), averaged where windows overlap."""
    from percs.predict import sliding_windows, window_batches

    padded, corners = sliding_windows(image, window, stride)
    grid = (padded.shape[1] // PATCH_SIZE, padded.shape[2] // PATCH_SIZE)
    totals, count = None, image.new_zeros(1, *grid)
    side = window // PATCH_SIZE
    for batch, windows in window_batches(padded, corners, window, batch_size):
        per_layer = block_features(backbone, windows, layers)
        if totals is None:
            totals = [image.new_zeros(f.shape[1], *grid) for f in per_layer]
        for i, (top, left) in enumerate(batch):
            rows = slice(top // PATCH_SIZE, top // PATCH_SIZE + side)
            cols = slice(left // PATCH_SIZE, left // PATCH_SIZE + side)
            for total, f in zip(totals, per_layer):
                total[:, rows, cols] += f[i].float()
            count[:, rows, cols] += 1
    return [t / count for t in totals]


def pad_to_grid(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """labels (H, W) zero-padded at the bottom and right to (14 * grid[0], 14 * grid[1])."""
    rows, cols = (PATCH_SIZE * side for side in grid)
    return F.pad(labels, (0, cols - labels.shape[1], 0, rows - labels.shape[0]))


def cell_windows(image: torch.Tensor, labels: torch.Tensor, size: int = 56, context: float = 2.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every cell of labels (H, W) seen alone at one scale: (cells (N,) ascending, windows (N, 3, size, size),
    masks (N, size, size) float32).

    Window k is the square of side `context` x the cell's equivalent diameter (2 sqrt(area / pi)), centred on
    the cell's centroid, resampled bilinearly to size x size pixels from the normalised image (3, H, W) (zeros
    outside the image, the normalised mean); masks[k] is 1 where the nearest source pixel belongs to the cell.
    So every cell, small or large, covers about (size / context) pixels across, a few backbone tokens, and its
    pooled features no longer mix in the neighbours that share its 14-pixel patches.
    """
    if size <= 0 or size % PATCH_SIZE:
        raise ValueError(f"size must be a positive multiple of {PATCH_SIZE}, got {size}")
    if context < 1:
        raise ValueError(f"context must be >= 1 (the window holds the cell), got {context}")
    cells, descriptors_of = _centroids(labels)
    n = len(cells)
    if n == 0:
        return cells, image.new_zeros(0, 3, size, size), image.new_zeros(0, size, size)
    centre, area = descriptors_of
    side = context * 2 * torch.sqrt(area / torch.pi)                    # (N,) window side in pixels
    steps = (torch.arange(size, device=image.device, dtype=torch.float32) + 0.5) / size - 0.5  # (S,)
    ys = centre[:, 0, None] + side[:, None] * steps[None]                # (N, S) source pixel coordinates
    xs = centre[:, 1, None] + side[:, None] * steps[None]
    height, width = labels.shape
    grid_y = ((2 * ys + 1) / height - 1)[:, :, None].expand(n, size, size)
    grid_x = ((2 * xs + 1) / width - 1)[:, None, :].expand(n, size, size)
    grid = torch.stack((grid_x, grid_y), -1).reshape(1, n * size, size, 2)
    windows = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    windows = windows.reshape(3, n, size, size).transpose(0, 1)
    sampled = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False).reshape(n, size, size)
    masks = (sampled == cells[:, None, None].float()).float()
    return cells, windows, masks


def _centroids(labels: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(cells (N,), (centroids (N, 2) float32 (y, x), areas (N,) float32)) of a label image."""
    inside = labels > 0
    cells, index = torch.unique(labels[inside], return_inverse=True)
    ys, xs = torch.nonzero(inside, as_tuple=True)
    n = len(cells)
    sums = torch.zeros(n, 3, dtype=torch.float64, device=labels.device)
    sums.index_add_(0, index, torch.stack((torch.ones_like(ys), ys, xs), 1).double())
    area = sums[:, 0]
    return cells.long(), ((sums[:, 1:] / area[:, None]).float(), area.float())


def window_vectors(backbone, windows: torch.Tensor, masks: torch.Tensor, layers=LAYERS, batch_size: int = 256,
                   tail: nn.ModuleList | None = None, keep_tokens: int | None = None):
    """(N, L, C) features of each block in `layers` pooled under masks (N, S, S) (each patch weighed by the
    fraction it covers) from windows (N, 3, S, S), in batches of batch_size windows; tail: fine-tuned last
    blocks (`block_features`). With keep_tokens=k, returns (vectors, tokens (N, T, C) float16: every token
    after block k, coverage (N, S/14, S/14) float16), from which `tail_vectors` recomputes the later blocks."""
    out, tokens, coverages = [], [], []
    for start in range(0, len(windows), batch_size):
        chunk, chunk_masks = windows[start : start + batch_size], masks[start : start + batch_size]
        output = backbone(chunk, blocks=tuple(layers), tail=tail, keep_tokens=keep_tokens)
        coverage = F.avg_pool2d(chunk_masks[:, None], PATCH_SIZE, PATCH_SIZE)      # (B, 1, s, s)
        empty = coverage.flatten(1).sum(1) == 0
        coverage[empty] = 1.0                                                       # a cell lost to sampling
        out.append(torch.stack([pool_features(f.float(), coverage)[:, 0] for f in output.blocks], 1))
        if keep_tokens is not None:
            tokens.append(output.tokens.half())
            coverages.append(coverage[:, 0].half())
    if not out:
        vectors = windows.new_zeros(0, len(layers), backbone.spec.embed_dim)
        if keep_tokens is None:
            return vectors
        side = windows.shape[-1] // PATCH_SIZE
        count = 1 + backbone.spec.num_register_tokens + side * side
        return vectors, windows.new_zeros(0, count, backbone.spec.embed_dim).half(), \
            windows.new_zeros(0, side, side).half()
    if keep_tokens is None:
        return torch.cat(out)
    return torch.cat(out), torch.cat(tokens), torch.cat(coverages)


def tail_vectors(backbone, tail: nn.ModuleList | None, tokens: torch.Tensor, coverage: torch.Tensor, start: int,
                 layers) -> torch.Tensor:
    """(N, K, C) pooled features of the blocks of `layers` after block `start`, recomputed from the raw tokens
    kept after it (`window_vectors(keep_tokens=start)`: tokens (N, T, C), coverage (N, s, s)) through blocks
    start + 1 .. depth, the last ones replaced by `tail`: what `window_vectors` gives with that tail, with
    gradients into the tail."""
    later = tuple(layer for layer in layers if layer > start)
    side = coverage.shape[-2:]
    kept, _, _ = backbone.run_blocks(tokens.float(), tuple(side), later, start=start, tail=tail)
    return torch.stack([pool_features(f, coverage[:, None].float())[:, 0] for f in kept], 1)


def cell_vectors(backbone, image: torch.Tensor, labels: torch.Tensor, layers=LAYERS, size: int = 56,
                 context: float = 2.0, tail: nn.ModuleList | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (N,), vectors (N, L, C)): every cell of labels (H, W) in normalised image (3, H, W), embedded
    alone at one scale (`cell_windows`, `window_vectors`); tail: fine-tuned last blocks (`CellScorer.tail`)."""
    cells, windows, masks = cell_windows(image, labels, size, context)
    return cells, window_vectors(backbone, windows, masks, layers, tail=tail)


FLIP_VIEWS = ((), (-1,), (-2,), (-2, -1))
"""The views `InstanceScorer` flips average over: as it is, mirrored in x, in y, and both (a 180-degree turn)."""


def flip_views(cell_flips: bool) -> tuple[tuple[int, ...], ...]:
    """The flips a cell is embedded in: FLIP_VIEWS with cell_flips, else only the image as it is."""
    return FLIP_VIEWS if cell_flips else ((),)


def flipped(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """tensor flipped along dims (one of FLIP_VIEWS), as it is for ()."""
    return tensor.flip(dims).contiguous() if dims else tensor


def check_context_window(context_window: float, embedding: str = "window") -> None:
    """ValueError unless context_window is 0 (none) or a finite side >= 1 with the window embedding."""
    if not (context_window == 0 or 1 <= context_window < math.inf):
        raise ValueError(f"context_window must be 0 (none) or a finite number >= 1, got {context_window!r}")
    if context_window and embedding != "window":
        raise ValueError(f"context_window needs the window embedding, got embedding {embedding!r}")


def check_expand(expand: float) -> float:
    """expand as a float; ValueError unless it is a number in [0, 1] (`InstanceScorer.expand`)."""
    if not 0.0 <= expand <= 1.0:
        raise ValueError(f"expand must be a number in [0, 1], got {expand!r}")
    return float(expand)


class InstanceScorer:
    """The instance-level decision on a backbone: a reference cell's vectors, every found cell's vectors, and
    each cell's same-type probability from a CellScorer (see the module docstring).

    backbone: the frozen DINOv2 the scorer was trained on; scorer: None for an embedder only (`reference` and
    `cells`, as the scorer's training pairs are embedded); layers, embedding ("window": each cell alone at one
    scale, `cell_vectors`; "patch": the image's sliding-window features pooled under it); threshold: the
    probability from which a cell is kept; window, stride, batch_size: the "patch" embedding's sliding windows;
    window_size, context: the "window" embedding's windows (`cell_windows`); precision: the backbone passes'
    arithmetic (`percs.model.precision`; the predictor's, so that reference and cells are embedded alike).
    margin: None (the default) keeps a cell by its own probability (`threshold`); a number >= 0 keeps instead
    the cells whose best logit is within `margin` of the image's best cell's (`decide`). context_window: 0 (the
    default) embeds each cell in its one window; a side >= 1 (over the cell's diameter) also embeds it in a
    second, wider window of the same pixels through the frozen backbone (its neighbourhood: tissue, neighbours,
    background), whose pooled vectors follow the first window's on the layer axis: vectors (N, 2L, C).
    expand: A in [0, 1], the weight of the image's best match as a second reference (`decide`); 0 (the
    default) decides on the references alone. cell_flips: False (the default) embeds the image as it is; True embeds
    it, its cells and the reference in the four FLIP_VIEWS and averages each cell's vectors over them (four times
    the backbone passes; the descriptors, which flips leave alone, are the unflipped view's). A type classifier
    fitted on the four views of every train cell (`percs train-scorer --objective types --cell-flips`) reads a cell's
    type better from the average: on consep val's 1,525 found cells, 80.3% right and log-loss 0.493 against
    79.9% and 0.514 from one view (docs/type_decision.md).
    """

    def __init__(self, backbone, scorer: CellScorer | None, layers=LAYERS, embedding: str = "window",
                 threshold: float = 0.5, window: int = 224, stride: int = 168, batch_size: int = 8,
                 window_size: int = 56, context: float = 2.0, precision: str = "float32",
                 context_window: float = 0.0, expand: float = 0.0, cell_flips: bool = False):
        if embedding not in ("window", "patch"):
            raise ValueError(f"embedding must be 'window' or 'patch', got {embedding!r}")
        check_context_window(context_window, embedding)
        self.context_window = float(context_window)
        if not isinstance(cell_flips, bool):
            raise ValueError(f"cell_flips must be True or False, got {cell_flips!r}")
        self.cell_flips = cell_flips
        self.precision = check_precision(precision)
        self._margin: float | None = None
        self.expand = expand
        self.window_size, self.context = window_size, context
        self.backbone, self.scorer, self.layers, self.embedding = backbone, scorer, tuple(layers), embedding
        self.threshold, self.window, self.stride, self.batch_size = float(threshold), window, stride, batch_size
        if self.tail is not None and embedding != "window":
            raise ValueError("a scorer with fine-tuned backbone blocks (tail) embeds cells by window: "
                             f"embedding must be 'window', got {embedding!r}")

    @property
    def tail(self) -> nn.ModuleList | None:
        """The scorer's fine-tuned last blocks, through which cells and references are embedded (or None)."""
        return getattr(self.scorer, "tail", None)

    @property
    def margin(self) -> float | None:
        return self._margin

    @margin.setter
    def margin(self, value: float | None) -> None:
        if value is not None and not (value >= 0 and value != float("inf")):
            raise ValueError(f"margin must be None or a finite number >= 0, got {value!r}")
        self._margin = None if value is None else float(value)

    @property
    def expand(self) -> float:
        return self._expand

    @expand.setter
    def expand(self, value: float) -> None:
        self._expand = check_expand(value)

    @property
    def views(self) -> tuple[tuple[int, ...], ...]:
        """The flips a cell is embedded in (`flip_views`)."""
        return flip_views(self.cell_flips)

    @torch.no_grad()
    def reference(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (L, C), descriptors (D,)) of the reference cell, mask (H, W) bool in image (3, H, W); with
        `cell_flips`, its vectors averaged over the four views."""
        views = [self._reference(flipped(image, dims), flipped(mask, dims)) for dims in self.views]
        return torch.stack(views).mean(0), cell_descriptors(image, mask.to(torch.int64))[1][0]

    def _reference(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with inference_precision(self.precision, image.device):
            if self.embedding == "window":
                labels = mask.to(torch.int64)
                vectors = cell_vectors(self.backbone, image, labels, self.layers, self.window_size, self.context,
                                       self.tail)[1]
                return self.with_surroundings(vectors, image, labels)[0]
            return reference_vectors(self.backbone, image, mask, self.layers, self.window)

    @torch.no_grad()
    def cells(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cells (N,) ascending, vectors (N, L, C), descriptors (N, D)) of labels (H, W) in image (3, H, W);
        with `cell_flips`, the vectors averaged over the four views (flips keep the label of every cell)."""
        labels = labels.to(torch.int64)
        cells, vectors = self._cells(image, labels)
        for dims in self.views[1:]:
            vectors = vectors + self._cells(flipped(image, dims), flipped(labels, dims))[1]
        return cells, vectors / len(self.views), cell_descriptors(image, labels)[1]

    def _cells(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with inference_precision(self.precision, image.device):
            if self.embedding == "window":
                cells, vectors = cell_vectors(self.backbone, image, labels, self.layers, self.window_size,
                                              self.context, self.tail)
                return cells, self.with_surroundings(vectors, image, labels)
            features = image_block_features(self.backbone, image, self.layers, self.window, self.stride,
                                            self.batch_size)
            return pool_cells(features, pad_to_grid(labels, features[0].shape[1:]))

    def with_surroundings(self, vectors: torch.Tensor, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """vectors (N, L, C) of the cells of labels (ascending) followed on the layer axis by their context
        window's (frozen backbone): (N, 2L, C); vectors unchanged without a context window."""
        if not self.context_window:
            return vectors
        wide = cell_vectors(self.backbone, image, labels, self.layers, self.window_size, self.context_window)[1]
        return torch.cat((vectors, wide.to(vectors.dtype)), 1)

    @torch.no_grad()
    def probabilities(self, vectors: torch.Tensor, descriptors: torch.Tensor,
                      reference: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(N,) same-type probabilities of the cells (`cells`) against a reference (`reference`)."""
        if len(vectors) == 0:
            return vectors.new_zeros(0)
        return torch.sigmoid(self.scorer(vectors, reference[0], descriptors, reference[1]))

    @torch.no_grad()
    def logits(self, vectors: torch.Tensor, descriptors: torch.Tensor, references: list) -> torch.Tensor:
        """(N, K) same-type logits of the cells against each of K references [(vectors, descriptors)]."""
        if not references:
            raise ValueError("references is empty: give at least one reference cell")
        if len(vectors) == 0:
            return vectors.new_zeros(0, len(references))
        return torch.stack([self.scorer(vectors, r[0], descriptors, r[1]) for r in references], 1)

    @torch.no_grad()
    def decide(self, vectors: torch.Tensor, descriptors: torch.Tensor, positives: list, negatives: list = ()
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability (N,), keep (N,) bool) of the cells against K >= 1 positive and M >= 0 negative
        references [(vectors, descriptors)], a nearest-reference rule on the learned metric:

        - probability = sigmoid of the best (largest) logit over the positives: a cell needs to resemble one
          of them, not their average (a type's cells vary, and the positives span that variation);
        - keep = probability >= threshold, and, with negatives, the cell's best positive logit at least its
          best negative one: a cell more like a cell the user rejected than like every positive is dropped
          (its probability set to 0).

        With a `margin`, keep is instead "best positive logit >= the image's largest one - margin": the cells
        nearest to the references in this image, however the scorer's probabilities are calibrated for it (on
        percs-mini, margin 0.5 chosen on val: test AP@0.5 0.184 -> 0.234; docs/type_decision.md). It always
        keeps at least one cell, and block by block (`percs.predict.blockwise`) it keeps one in every block.

        With `expand` A > 0, the image's best match (the found cell with the largest logit over the positives)
        becomes a second reference, averaged in: each cell's logit is (1 - A) x its best positive logit + A x its
        logit against that cell (never one a negative rejects), and the threshold or the margin applies to it. A
        cell of the reference's type in this image resembles the image's clearest one more than a cell from
        another image, whose staining and scale differ (on percs-mini, A = 0.5 with its threshold chosen on val:
        test AP@0.5 0.272 -> 0.319; docs/type_decision.md). Block by block (`percs.predict.blockwise`) the best
        match is each block's.

        With a TypeScorer, several positives are one reading of their type instead: their type posteriors are
        averaged (`TypeScorer.pooled_logits`) and each cell's logit is against that.

        One positive, no negative and expand 0 is exactly `probabilities` (the single-reference decision)."""
        if isinstance(self.scorer, TypeScorer) and len(positives) > 1 and len(vectors):
            positive = self.scorer.pooled_logits(vectors, descriptors, positives)
        else:
            positive = self.logits(vectors, descriptors, positives).max(1).values
        rejected = self.logits(vectors, descriptors, negatives).max(1).values > positive if negatives else None
        score = self.expanded(vectors, descriptors, positive, None if rejected is None else ~rejected)
        probability = torch.sigmoid(score)
        if self.margin is None or len(score) == 0:
            keep = probability >= self.threshold
        else:
            keep = score >= score.max() - self.margin
        if rejected is not None:
            probability, keep = probability.masked_fill(rejected, 0.0), keep & ~rejected
        return probability, keep

    @torch.no_grad()
    def expanded(self, vectors: torch.Tensor, descriptors: torch.Tensor, positive: torch.Tensor,
                 eligible: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) the cells' logits with the image's best match averaged in as a second reference (`decide`):
        (1 - expand) x positive + expand x `best_match`; positive unchanged when expand is 0 or no cell is
        eligible."""
        match = self.best_match(vectors, descriptors, positive, eligible) if self.expand else None
        return positive if match is None else (1.0 - self.expand) * positive + self.expand * match

    @torch.no_grad()
    def best_match(self, vectors: torch.Tensor, descriptors: torch.Tensor, positive: torch.Tensor,
                   eligible: torch.Tensor | None = None) -> torch.Tensor | None:
        """(N,) each cell's logit against the image's best match: the cell with the largest `positive` among the
        eligible ones ((N,) bool; None: all; `decide` leaves out the cells a negative reference rejects); None
        when no cell is eligible."""
        candidates = positive if eligible is None else positive.masked_fill(~eligible, float("-inf"))
        if not bool(torch.isfinite(candidates).any()):
            return None
        best = int(candidates.argmax())
        return self.scorer(vectors, vectors[best], descriptors, descriptors[best])
