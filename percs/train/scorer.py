"""Training the instance-level `CellScorer` (`percs.model.instance`) on a benchmark's train split.

Pairs are drawn as `percs train` draws its items (`percs.data.dataset.TrainDataset`: random crops, flips,
cells of other types pasted on the fly, a reference cell of a type drawn per cell from another image): every
true cell of a crop is a candidate, labelled 1 when its type is the reference's. The frozen DINOv2 backbone's
block features are pooled under each cell and under the reference once (`collect_pairs`, the slow part,
about 0.2 s per draw on a 2-core CPU); the scorer is then fitted on those vectors for a few epochs, the
positive class weighted by the negatives' share, each batch a set of whole crops so that the within-image
standardisation sees its candidate set.

`percs train-scorer` writes a scorer file: the scorer's weights and shape, its layers, the backbone's name,
and what it was trained on, with the file's SHA-256 checked on load (`load_scorer`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from percs.model.instance import (DESCRIPTORS, LAYERS, CellScorer, InstanceScorer, TypeScorer, cell_descriptors,
                                  cell_windows, check_context_window, check_expand, flip_views, flipped,
                                  tail_vectors, window_vectors)
from percs.model.precision import inference_precision

SCORER_KIND = "percs-cell-scorer"
EMBEDDINGS = ("window", "patch")
OBJECTIVES = ("pairs", "types")


@dataclass(frozen=True)
class ScorerTraining:
    """items: training draws whose cells become pairs; epochs, lr, weight_decay, batch_crops: the fit (Adam
    with decoupled weight decay); width, hidden, dropout: the scorer's shape; layers: DINOv2 blocks read;
    reference_sampling: see `collect_pairs`; embedding: how a cell becomes vectors, "window" (each cell alone
    at one scale, `percs.model.instance.cell_vectors`) or "patch" (the image's features pooled under it);
    window_size, context: the window embedding's window in pixels and its side over the cell's diameter;
    rank_weight: the weight of `within_image_ranking_loss` added to the binary cross-entropy (0: the
    cross-entropy alone, as before; docs/type_decision.md measures it); tune_blocks: how many of the backbone's
    last blocks are fine-tuned with the scorer (0: the frozen features, as the paper); the pairs then keep every
    window's tokens before those blocks, so that the fit runs only the tuned blocks (window embedding only);
    tune_lr: their learning rate (no weight decay: they start from the pretrained weights); context_window: 0 (the
    default) or the side, over the cell's diameter, of a second, wider window each cell is also embedded in
    (`InstanceScorer` context_window; window embedding only). objective: "pairs" (the default) fits a CellScorer
    on pairs of training draws; "types" fits a TypeScorer, a type classifier on every true cell of the train
    split's images (`fit_type_scorer`, L-BFGS with L2 weight type_l2), for benchmarks whose evaluation types
    are the training types (items, epochs, lr, width, hidden, dropout, rank_weight then do not apply).
    cell_flips (objective "types" only): False (the default) embeds each train cell as it is; True embeds it in
    the four flips (`percs.model.instance.FLIP_VIEWS`), each view one training sample, and the decision then
    averages every cell's and the reference's vectors over the four views (`InstanceScorer` cell_flips)."""

    items: int = 3000
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_crops: int = 16
    width: int = 64
    hidden: int = 128
    dropout: float = 0.2
    layers: tuple[int, ...] = LAYERS
    reference_sampling: str = "type"
    embedding: str = "window"
    window_size: int = 56
    context: float = 2.0
    seed: int = 0
    rank_weight: float = 0.0
    tune_blocks: int = 0
    tune_lr: float = 1e-4
    context_window: float = 0.0
    objective: str = "pairs"
    type_l2: float = 0.02
    cell_flips: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "types" and self.tune_blocks:
            raise ValueError("objective 'types' reads the frozen backbone: tune_blocks must be 0")
        if not isinstance(self.cell_flips, bool):
            raise ValueError(f"cell_flips must be True or False, got {self.cell_flips!r}")
        if self.cell_flips and self.objective != "types":
            raise ValueError(f"cell_flips applies to objective 'types' (a type classifier), got {self.objective!r}")
        if not 0 <= self.type_l2 < math.inf:
            raise ValueError(f"type_l2 must be a finite number >= 0, got {self.type_l2!r}")
        for key in ("items", "epochs", "batch_crops", "width", "hidden"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.rank_weight < math.inf:
            raise ValueError(f"rank_weight must be a finite number >= 0, got {self.rank_weight!r}")
        if not isinstance(self.tune_blocks, int) or self.tune_blocks < 0:
            raise ValueError(f"tune_blocks must be an integer >= 0, got {self.tune_blocks!r}")
        if self.tune_blocks and self.embedding != "window":
            raise ValueError(f"tune_blocks needs the window embedding, got embedding {self.embedding!r}")
        if not 0 < self.tune_lr < math.inf:
            raise ValueError(f"tune_lr must be a finite number > 0, got {self.tune_lr!r}")
        check_context_window(self.context_window, self.embedding)

    def tune_start(self, depth: int) -> int:
        """The block after which the tuned ones start (depth - tune_blocks), for a backbone of `depth` blocks."""
        if self.tune_blocks > depth:
            raise ValueError(f"tune_blocks is {self.tune_blocks}, the backbone has {depth} blocks")
        return depth - self.tune_blocks


@torch.no_grad()
def crop_pairs(embedder: InstanceScorer, item, keep_tokens: int | None = None) -> dict | None:
    """One training draw's candidates, embedded as `embedder` (an InstanceScorer, its scorer unused) embeds
    them at inference: pooled block vectors (N, L, C) float16, descriptors (N, D), the reference's (L, C) and
    (D,), and targets (N,) bool; None for a crop without cells. keep_tokens=k (window embedding): also the
    tokens a fine-tuned tail is trained from (`embed_candidates`, `embed_reference_cell`)."""
    cells, vectors, descriptors, extra = embed_candidates(embedder, item.image, item.instances, keep_tokens)
    if len(cells) == 0:
        return None
    reference, reference_descriptors, reference_extra = embed_reference_cell(
        embedder, item.reference_image, item.reference_mask.bool(), keep_tokens)
    types = item.instance_types[cells - 1]
    return dict(cells=vectors.half(), descriptors=descriptors, reference=reference.half(),
                reference_descriptors=reference_descriptors, target=types == item.reference_type, **extra,
                **reference_extra)


@torch.no_grad()
def embed_candidates(embedder: InstanceScorer, image: torch.Tensor, labels: torch.Tensor,
                     keep_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """`embedder.cells(image, labels)` and a dict: empty, or with keep_tokens=k (window embedding) every cell
    window's tokens after block k and its patch coverage ("tokens" (N, T, C), "coverage" (N, s, s), float16)."""
    if keep_tokens is None:
        return (*embedder.cells(image, labels), {})
    labels = labels.to(torch.int64)
    cells, vectors, tokens, coverage = _window_tokens(embedder, image, labels, keep_tokens)
    return cells, vectors, cell_descriptors(image, labels)[1], dict(tokens=tokens, coverage=coverage)


@torch.no_grad()
def embed_reference_cell(embedder: InstanceScorer, image: torch.Tensor, mask: torch.Tensor,
                         keep_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """`embedder.reference(image, mask)` and a dict: empty, or with keep_tokens=k (window embedding) the
    reference window's "reference_tokens" (T, C), "reference_coverage" (s, s) and "token_start" k."""
    if keep_tokens is None:
        return (*embedder.reference(image, mask), {})
    labels = mask.to(torch.int64)
    _, vectors, tokens, coverage = _window_tokens(embedder, image, labels, keep_tokens)
    extra = dict(reference_tokens=tokens[0], reference_coverage=coverage[0], token_start=keep_tokens)
    return vectors[0], cell_descriptors(image, labels)[1][0], extra


def _window_tokens(embedder: InstanceScorer, image: torch.Tensor, labels: torch.Tensor, keep_tokens: int):
    """(cells, vectors, tokens, coverage) of every cell of labels, window-embedded as `embedder` embeds them."""
    if embedder.embedding != "window":
        raise ValueError("keeping tokens for a fine-tuned tail needs the window embedding")
    with inference_precision(embedder.precision, image.device):
        cells, windows, masks = cell_windows(image, labels, embedder.window_size, embedder.context)
        vectors, tokens, coverage = window_vectors(embedder.backbone, windows, masks, embedder.layers,
                                                   keep_tokens=keep_tokens)
        vectors = embedder.with_surroundings(vectors, image, labels)
    return cells, vectors, tokens, coverage


def collect_pairs(dataset_path, backbone, items: int, seed: int = 0, layers=LAYERS, progress: bool = True,
                  reference_sampling: str = "type", embedding: str = "window", size: int = 56,
                  context: float = 2.0, keep_tokens: int | None = None, context_window: float = 0.0) -> list[dict]:
    """`crop_pairs` of `items` TrainDataset draws of the train split (seeded). reference_sampling: how each
    draw's reference type is chosen (`SamplingConfig.reference_sampling`): "type" (default) uniformly among the
    crop's types, as a benchmark asks one query per type present in a mixed image; "cell" as `percs train`
    draws, which makes the crop's own (most numerous) type the reference's most of the time. keep_tokens: see
    `crop_pairs` (for `ScorerTraining.tune_blocks`); context_window: `InstanceScorer`'s."""
    from tqdm import tqdm

    from percs.data.dataset import SamplingConfig, TrainDataset

    data = TrainDataset(dataset_path, "train", SamplingConfig(reference_sampling=reference_sampling), seed=seed,
                        length=items)
    embedder = InstanceScorer(backbone.eval(), None, layers, embedding, window_size=size, context=context,
                              context_window=context_window)
    pairs = []
    for index in tqdm(range(items), desc="scorer pairs", unit="crop", disable=not progress):
        pair = crop_pairs(embedder, data[index], keep_tokens)
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        raise ValueError(f"no training draw of {dataset_path} had a cell")
    return pairs


def batch_of(pairs: list[dict]) -> tuple[torch.Tensor, ...]:
    """Concatenated (cells, references, descriptors, reference descriptors, groups, targets) of crops."""
    sizes = [len(p["target"]) for p in pairs]
    cells = torch.cat([p["cells"] for p in pairs]).float()
    references = torch.cat([p["reference"].float()[None].expand(n, -1, -1) for p, n in zip(pairs, sizes)])
    descriptors = torch.cat([p["descriptors"] for p in pairs])
    reference_descriptors = torch.cat([p["reference_descriptors"][None].expand(n, -1) for p, n in zip(pairs, sizes)])
    groups = torch.repeat_interleave(torch.arange(len(pairs)), torch.tensor(sizes))
    targets = torch.cat([p["target"] for p in pairs]).float()
    return cells, references, descriptors, reference_descriptors, groups, targets


def within_image_ranking_loss(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over the groups (crops) that hold both classes of the mean of softplus(z_n - z_p) over their
    (same-type p, other-type n) cell pairs: logits, targets (N,), groups (N,) int64. 0 without such a group.

    The instance decision is made within one image (and by a margin from the image's best cell, `decide`):
    this asks each crop's same-type cells to score above its other cells, whatever the crop's overall level,
    which the per-cell cross-entropy does not."""
    positive, negative = targets > 0.5, targets < 0.5
    pairs = (groups[:, None] == groups[None, :]) & positive[:, None] & negative[None, :]   # [p, n]
    if not pairs.any():
        return logits.new_zeros(())
    losses = F.softplus(logits[None, :] - logits[:, None])                                   # [p, n]: z_n - z_p
    n_groups = int(groups.max()) + 1
    count = logits.new_zeros(n_groups).index_add_(0, groups, pairs.sum(1).to(logits.dtype))
    total = logits.new_zeros(n_groups).index_add_(0, groups, (losses * pairs).sum(1))
    held = count > 0
    return (total[held] / count[held]).mean()


def fit_scorer(pairs: list[dict], settings: ScorerTraining = ScorerTraining(), progress: bool = True,
               backbone=None) -> CellScorer:
    """A CellScorer fitted on `collect_pairs` output (binary cross-entropy, positives weighted by the
    negative/positive ratio, plus rank_weight x `within_image_ranking_loss`), returned in eval mode. With
    settings.tune_blocks, copies of `backbone`'s last blocks (the frozen backbone the pairs were embedded with)
    are trained with it from the pairs' kept tokens and become its `tail`."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    layers, dim = pairs[0]["cells"].shape[1:]
    tail, start = None, None
    if settings.tune_blocks:
        if backbone is None:
            raise ValueError("tune_blocks needs the backbone the pairs were embedded with")
        start = settings.tune_start(len(backbone.blocks))
        if any(p.get("token_start") != start for p in pairs):
            raise ValueError(f"the pairs do not hold the tokens after block {start} that tune_blocks="
                             f"{settings.tune_blocks} trains from (collect them again, without the old cache)")
        tail = torch.nn.ModuleList(copy.deepcopy(backbone.blocks[start:])).float()
        for parameter in tail.parameters():
            parameter.requires_grad_(True)
    tuned = [i for i, layer in enumerate(settings.layers) if start is not None and layer > start]
    if tail is not None and not tuned:
        raise ValueError(f"tune_blocks={settings.tune_blocks} tunes blocks after {start}, which no layer of "
                         f"{settings.layers} reads")
    expected = len(settings.layers) * (2 if settings.context_window else 1)
    if layers != expected:
        raise ValueError(f"the pairs hold {layers} vectors per cell, settings ask for {expected} (layers "
                         f"{settings.layers}, context_window {settings.context_window:g}): collect them again, "
                         "without the old cache")
    scorer = CellScorer(layers, dim, len(DESCRIPTORS), settings.width, settings.hidden, settings.dropout, tail)
    head = [p for name, p in scorer.named_parameters() if not name.startswith("tail.")]
    groups = [dict(params=head)]
    if tail is not None:
        groups.append(dict(params=list(tail.parameters()), lr=settings.tune_lr, weight_decay=0.0))
    optimiser = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    positives = sum(int(p["target"].sum()) for p in pairs)
    total = sum(len(p["target"]) for p in pairs)
    if positives in (0, total):
        raise ValueError(f"the training pairs are all of one class ({positives} same-type of {total})")
    weight = torch.tensor((total - positives) / positives)
    steps = settings.epochs * math.ceil(len(pairs) / settings.batch_crops)
    bar = tqdm(total=steps, desc="scorer fit", unit="step", disable=not progress)
    scorer.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start_index in range(0, len(order), settings.batch_crops):
            batch = [pairs[i] for i in order[start_index : start_index + settings.batch_crops]]
            cells, references, descriptors, reference_descriptors, groups_of, targets = batch_of(batch)
            if tail is not None:
                cells, references = tuned_vectors(backbone, tail, batch, cells, references, start, settings.layers)
            logits = scorer(cells, references, descriptors, reference_descriptors, groups_of)
            loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
            if settings.rank_weight:
                loss = loss + settings.rank_weight * within_image_ranking_loss(logits, targets, groups_of)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return scorer.eval()


@torch.no_grad()
def collect_type_cells(dataset, backbone, settings: ScorerTraining = ScorerTraining(), split: str = "train",
                       progress: bool = True) -> list[dict]:
    """Per image of a loaded dataset's `split` that has cells: every true cell embedded as the instance decision
    embeds found cells (`InstanceScorer.cells` on the whole normalised image at its own scale), "cells" (V * N, L,
    C) float16, "descriptors" (V * N, D), "types" [V * N] (type names) and "views" V: with settings.cell_flips the
    image's V = 4 flips one after the other (`FLIP_VIEWS`), else V = 1."""
    from tqdm import tqdm

    from percs.predict import as_input_image

    records = dataset.in_split(split)
    if not records:
        raise ValueError(f"dataset {dataset.name!r} has no image in split {split!r}")
    embedder = InstanceScorer(backbone.eval(), None, settings.layers, settings.embedding,
                              window_size=settings.window_size, context=settings.context,
                              context_window=settings.context_window)
    out = []
    for record in tqdm(records, desc=f"{split} cells", unit="image", disable=not progress):
        labels = torch.from_numpy(dataset.read_labels(record).astype("int64"))
        image = as_input_image(dataset.read_image(record), torch.device("cpu"))
        views = [embedder.cells(flipped(image, dims), flipped(labels, dims))
                 for dims in flip_views(settings.cell_flips)]
        cells = views[0][0]
        if len(cells):
            out.append(dict(cells=torch.cat([v for _, v, _ in views]).half(),
                            descriptors=torch.cat([d for _, _, d in views]),
                            types=[record.type_of(int(c)) for c in cells] * len(views), views=len(views)))
    if not out:
        raise ValueError(f"no image of dataset {dataset.name!r}'s {split} split has a cell")
    return out


def fit_linear_classifier(features: torch.Tensor, targets: torch.Tensor, classes: int, l2: float, seed: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    """(mean, scale, linear) of a multinomial logistic regression on features (N, F) standardised by mean and
    scale (the population standard deviation + 1e-6), targets (N,) in 0..classes-1: L-BFGS (300 iterations,
    strong Wolfe) on the mean cross-entropy + l2 x the squared weights, from a Linear initialised under `seed`."""
    mean, scale = features.mean(0), features.std(0, correction=0) + 1e-6
    inputs = (features - mean) / scale
    torch.manual_seed(seed)
    linear = torch.nn.Linear(features.shape[1], classes)
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(linear(inputs), targets) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return mean, scale, linear


def fit_type_scorer(images: list[dict], settings: ScorerTraining = ScorerTraining()) -> tuple[TypeScorer, list[str]]:
    """(TypeScorer in eval mode, its class names) fitted on `collect_type_cells` output (`fit_linear_classifier`,
    L2 weight type_l2)."""
    vectors = torch.cat([image["cells"] for image in images]).float()
    descriptors = torch.cat([image["descriptors"] for image in images]).float()
    names = [t for image in images for t in image["types"]]
    classes = sorted(set(names))
    if len(classes) < 2:
        raise ValueError(f"objective 'types' needs at least two cell types in the train split, got {classes}")
    scorer = TypeScorer(vectors.shape[1], vectors.shape[2], descriptors.shape[1], len(classes))
    mean, scale, linear = fit_linear_classifier(scorer.features(vectors, descriptors),
                                                torch.tensor([classes.index(t) for t in names]), len(classes),
                                                settings.type_l2, settings.seed)
    scorer.mean.copy_(mean)
    scorer.scale.copy_(scale)
    scorer.linear.load_state_dict(linear.state_dict())
    return scorer.eval(), classes


@torch.no_grad()
def type_reading(scorer: TypeScorer, classes: list[str], images: list[dict], mean_views: bool) -> list[dict]:
    """How well a type classifier names the type of one true cell, which is what it does to a reference: per
    image of `collect_type_cells` output (V views each), each cell's posterior from its first view, or from its
    vectors averaged over the V views (mean_views, as `InstanceScorer` cell_flips averages them). Returns per
    image {"cells": n, "right": cells whose most probable type is theirs, "log_loss": the sum over its cells of
    -log p(their type)}; a type the classifier does not know is a ValueError."""
    out = []
    for image in images:
        views = image.get("views", 1)
        n = len(image["types"]) // views
        vectors = image["cells"].float().reshape(views, n, *image["cells"].shape[1:])
        vectors = vectors.mean(0) if mean_views else vectors[0]
        unknown = sorted(set(image["types"][:n]) - set(classes))
        if unknown:
            raise ValueError(f"the classifier knows the types {classes}, not {unknown}")
        truth = torch.tensor([classes.index(t) for t in image["types"][:n]])
        log_p = torch.log_softmax(scorer.type_logits(vectors, image["descriptors"][:n]), -1)
        out.append({"cells": n, "right": int((log_p.argmax(1) == truth).sum()),
                    "log_loss": float(-log_p.gather(1, truth[:, None]).sum())})
    return out


def tuned_vectors(backbone, tail, crops: list[dict], cells: torch.Tensor, references: torch.Tensor, start: int,
                  layers) -> tuple[torch.Tensor, torch.Tensor]:
    """cells and references (N, L, C) of crops (`crop_pairs` with their kept tokens; N their cells in order)
    with the slices of the layers after block `start` recomputed through `tail` (`tail_vectors`); each crop's
    reference is embedded once and repeated over its cells."""
    tuned = [i for i, layer in enumerate(layers) if layer > start]
    sizes = torch.tensor([len(p["target"]) for p in crops])
    tokens = torch.cat([p["tokens"] for p in crops] + [torch.stack([p["reference_tokens"] for p in crops])])
    coverage = torch.cat([p["coverage"] for p in crops] + [torch.stack([p["reference_coverage"] for p in crops])])
    vectors = tail_vectors(backbone, tail, tokens, coverage, start, layers)          # (N + B, K, C)
    n = int(sizes.sum())
    cells, references = cells.clone(), references.clone()
    cells[:, tuned] = vectors[:n]
    references[:, tuned] = torch.repeat_interleave(vectors[n:], sizes, 0)
    return cells, references


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """SHA-256 of a backbone's parameters and buffers (names, shapes, float32 values, in state-dict order): the
    same frozen DINOv2 whether it was read from a weights file or from a percs checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_scorer(path: str | Path, scorer: CellScorer | TypeScorer, settings: ScorerTraining, backbone: str,
                trained_on: dict, seconds: float, fingerprint: str | None = None,
                classes: list[str] | None = None) -> str:
    """Writes a scorer file (see the module docstring); returns its SHA-256. fingerprint: the backbone's
    `backbone_fingerprint`, checked against the generic model's when the scorer is used. classes: a TypeScorer's
    type names (settings.objective "types"), in the order of its outputs."""
    if isinstance(scorer, TypeScorer) != (settings.objective == "types"):
        raise ValueError(f"a {type(scorer).__name__} does not match objective {settings.objective!r}")
    if isinstance(scorer, TypeScorer) and (classes is None or len(classes) != scorer.classes):
        raise ValueError(f"classes must name the TypeScorer's {scorer.classes} types, got {classes!r}")
    state = {"kind": SCORER_KIND, "scorer": scorer.state_dict(), "layers": list(settings.layers),
             "dim": scorer.dim, "descriptors": list(DESCRIPTORS), "settings": asdict(settings),
             "backbone": backbone, "backbone_fingerprint": fingerprint, "trained_on": trained_on,
             "train_seconds": seconds}
    if classes is not None:
        state["classes"] = list(classes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def load_scorer(path: str | Path, device: str | torch.device = "cpu") -> tuple[CellScorer, dict]:
    """(scorer in eval mode on device, the file's record) of a `save_scorer` file; its SHA-256 is checked
    against the `.sha256` file beside it when that exists. A file that is not a scorer file is a ValueError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"scorer file {path} does not exist (or is not a file)")
    payload = path.read_bytes()
    digest_file = path.with_name(path.name + ".sha256")
    if digest_file.is_file():
        expected = digest_file.read_text().split()[0]
        if hashlib.sha256(payload).hexdigest() != expected:
            raise ValueError(f"scorer file {path} does not match its SHA-256 in {digest_file} (corrupt or changed)")
    try:
        record = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a scorer file"
        raise ValueError(f"scorer file {path} could not be read: {error}") from None
    if not isinstance(record, dict) or record.get("kind") != SCORER_KIND:
        raise ValueError(f"{path} is not a percs scorer file (written by percs train-scorer)")
    return scorer_from_record(record).to(device), record


def train_scorer(dataset_path, backbone_weights, out, settings: ScorerTraining = ScorerTraining(),
                 backbone_name: str = "vits14", cache: str | Path | None = None) -> str:
    """Collects pairs from `dataset_path`'s train split, fits a scorer and writes it to `out` (returns the
    SHA-256). cache: a .pt file of the collected pairs, read when it exists and written otherwise."""
    from percs.data.format import load_dataset
    from percs.model.backbone_weights import load_backbone

    start = time.time()
    dataset = load_dataset(dataset_path)
    cache = Path(cache) if cache else None
    backbone = load_backbone(backbone_name, backbone_weights)
    if settings.objective == "types":
        if cache is not None and cache.is_file():
            images = torch.load(cache, weights_only=True)
            if not isinstance(images, list) or not images or any("types" not in image for image in images):
                raise ValueError(f"cache {cache} does not hold typed cells (written for --objective pairs?): "
                                 "give another --cache file")
            views = len(flip_views(settings.cell_flips))
            if any(image.get("views", 1) != views for image in images):
                raise ValueError(f"cache {cache} holds cells embedded in another number of flips than --cell-flips "
                                 f"{'on' if settings.cell_flips else 'off'} asks ({views}): give another --cache file")
        else:
            images = collect_type_cells(dataset, backbone, settings)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(images, cache)
        scorer, classes = fit_type_scorer(images, settings)
        names = [t for image in images for t in image["types"]]
        views = images[0].get("views", 1)
        trained_on = {"dataset": dataset.name, "path": str(Path(dataset_path).resolve()), "split": "train",
                      "images": len(images), "cells": len(names) // views, "views": views,
                      "types": {c: names.count(c) // views for c in classes},
                      "backbone_weights": str(backbone_weights or "official")}
        return save_scorer(out, scorer, settings, backbone_name, trained_on, time.time() - start,
                           backbone_fingerprint(backbone), classes)
    if cache is not None and cache.is_file():
        pairs = torch.load(cache, weights_only=True)
    else:
        keep = settings.tune_start(len(backbone.blocks)) if settings.tune_blocks else None
        pairs = collect_pairs(dataset_path, backbone, settings.items, settings.seed, settings.layers,
                              reference_sampling=settings.reference_sampling, embedding=settings.embedding,
                              size=settings.window_size, context=settings.context, keep_tokens=keep,
                              context_window=settings.context_window)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(pairs, cache)
    scorer = fit_scorer(pairs, settings, backbone=backbone)
    positives = sum(int(p["target"].sum()) for p in pairs)
    trained_on = {"dataset": dataset.name, "path": str(Path(dataset_path).resolve()), "split": "train",
                  "crops": len(pairs), "cells": sum(len(p["target"]) for p in pairs), "same_type": positives,
                  "backbone_weights": str(backbone_weights or "official")}
    return save_scorer(out, scorer, settings, backbone_name, trained_on, time.time() - start,
                       backbone_fingerprint(backbone))


def instance_record(scorer_path: str | Path, threshold: float, expand: float = 0.0) -> dict:
    """The `instance` section a checkpoint carries for the instance-level decision: the scorer file's record
    (weights, shape, layers, embedding, what it was trained on), the probability threshold and the weight of the
    image's best match (`InstanceScorer.expand`; 0: the reference alone)."""
    _, record = load_scorer(scorer_path)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold!r}")
    return dict(record, threshold=float(threshold), expand=check_expand(expand))


def attach_scorer(generic_checkpoint: str | Path, scorer_path: str | Path, threshold: float, out: str | Path,
                  backbone_weights: str | Path | None = None, predict: dict | None = None,
                  expand: float = 0.0) -> None:
    """Writes `out`: the generic percs checkpoint with the scorer attached (`instance_record`), one file that
    `percs predict`, `percs eval --method percs` and `Segmenter.from_checkpoint` load as a model that finds
    every cell and keeps those the scorer gives a probability >= threshold (with the image's best match weighted
    expand, `InstanceScorer.decide`); predict: settings of the model's
    predict section that replace the generic checkpoint's (flow_threshold, flips, ...). The scorer must have been
    trained on the checkpoint's frozen backbone (fingerprints compared); the checkpoint must be generic. A head-only
    model file (`percs export-model`, the shipped model) may take the place of the checkpoint, its backbone
    from backbone_weights (as `load_model`); its scorer then replaces any attached one and is stored in float16
    like the rest of its head."""
    from percs.predict.api import load_model
    from percs.predict.shipped import HEAD_ONLY, half_state
    from percs.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_model(generic_checkpoint, "cpu", backbone_weights)
    if not model.generic:
        raise ValueError(f"{generic_checkpoint} is not a generic model (model.head.generic=false): the instance "
                         "decision scores the cells a generic model finds")
    record = instance_record(scorer_path, threshold, expand)
    expected = record.get("backbone_fingerprint")
    if expected is not None and expected != backbone_fingerprint(model.backbone):
        raise ValueError(f"scorer {scorer_path} was trained on other backbone weights than {generic_checkpoint}'s")
    state = load_checkpoint(generic_checkpoint)
    if HEAD_ONLY in state:
        record["scorer"] = half_state(record["scorer"])
    state["instance"] = record
    if predict:
        replace(config.predict, **predict)  # PredictorConfig raises on an unknown key or a bad value
        state["config"] = dict(state["config"], predict=dict(state["config"]["predict"], **predict))
    save_checkpoint(state, out)


def scorer_from_record(record: dict) -> CellScorer:
    """The CellScorer of an `instance_record` (or scorer file record), in eval mode on the CPU, with its
    fine-tuned backbone blocks (`ScorerTraining.tune_blocks`) when it has them."""
    from percs.model.backbone import Block, backbone_spec

    settings = record["settings"]
    windows = 2 if settings.get("context_window", 0.0) else 1
    if settings.get("objective", "pairs") == "types":
        scorer = TypeScorer(windows * len(record["layers"]), record["dim"], len(record["descriptors"]),
                            len(record["classes"]))
        try:
            scorer.load_state_dict(record["scorer"])
        except RuntimeError as error:
            raise ValueError(f"the type scorer's weights do not fit its recorded shape ({len(record['classes'])} "
                             f"types, context_window {settings.get('context_window', 0.0):g}): {error}") from None
        return scorer.float().eval()
    tail = None
    if settings.get("tune_blocks", 0):
        spec = backbone_spec(record["backbone"])
        tail = torch.nn.ModuleList(Block(spec) for _ in range(settings["tune_blocks"]))
    scorer = CellScorer(windows * len(record["layers"]), record["dim"], len(record["descriptors"]),
                        settings["width"], settings["hidden"], settings["dropout"], tail)
    try:
        scorer.load_state_dict(record["scorer"])
    except RuntimeError as error:
        raise ValueError(f"the scorer's weights do not fit its recorded shape (backbone {record['backbone']!r}, "
                         f"tune_blocks {settings.get('tune_blocks', 0)}, context_window "
                         f"{settings.get('context_window', 0.0):g}): {error}") from None
    return scorer.eval()
