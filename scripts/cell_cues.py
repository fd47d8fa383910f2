"""Per-query AUC of same-type cues on a percs benchmark, and a learned pair scorer (research script).

For every fixed query of a split, every true cell of the query image is a candidate; the target type's cells
are positives. A cue scores each candidate against the reference cell; its per-query ROC AUC (over the
query's candidates, queries with both classes) says how well it ranks same-type cells above the others in
the one image where the decision is made. Cues: cosine of pooled DINOv2 features of several blocks,
-|log area ratio|, and a learned scorer over the feature vectors and descriptors, trained on reference/cell
pairs drawn from the train split as training draws them (crops, pasted cells, references from other images).

    python scripts/cell_cues.py --data /tmp/percs-mini --weights ../shared/weights/dinov2_vits14_pretrain.pth \
        --cache /tmp/cues --train-items 3000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import regionprops_table

from percs.data.dataset import SamplingConfig, TrainDataset
from percs.data.format import load_dataset
from percs.model.backbone import PATCH_SIZE, interpolate_pos_embed, patch_grid
from percs.model.backbone_weights import load_backbone
from percs.model.reference import embed_reference, label_coverage, pool_features, reference_window
from percs.predict import as_input_image, sliding_windows, window_batches

LAYERS = (4, 8, 12)
DESCRIPTORS = ("log_area", "mean0", "mean1", "mean2", "std0", "std1", "std2", "eccentricity", "solidity")


@torch.no_grad()
def block_features(backbone, images: torch.Tensor, layers=LAYERS) -> list[torch.Tensor]:
    """Patch features after each block in `layers` (1-based), each through the final LayerNorm as DINOv2's
    get_intermediate_layers(norm=True): images (B, 3, H, W) -> [(B, C, H/14, W/14)] per layer."""
    grid = patch_grid(images)
    batch = images.shape[0]
    tokens = torch.cat((backbone.cls_token.expand(batch, -1, -1), backbone.patch_embed(images)), dim=1)
    tokens = tokens + interpolate_pos_embed(backbone.pos_embed, grid, backbone.spec.interpolate_offset,
                                            backbone.spec.interpolate_antialias)
    out = []
    for depth, block in enumerate(backbone.blocks, start=1):
        tokens = block(tokens)
        if depth in layers:
            normed = backbone.norm(tokens)[:, 1:]
            out.append(normed.transpose(1, 2).reshape(batch, -1, *grid))
        if depth == max(layers):
            break
    return out


@torch.no_grad()
def image_features(backbone, image: torch.Tensor, window=224, stride=168, batch_size=8) -> list[torch.Tensor]:
    """Sliding-window block features of a normalised (3, H, W) image over its padded grid, overlaps averaged."""
    padded, corners = sliding_windows(image, window, stride)
    grid = (padded.shape[1] // PATCH_SIZE, padded.shape[2] // PATCH_SIZE)
    totals, count = None, torch.zeros(1, *grid)
    for batch, windows in window_batches(padded, corners, window, batch_size):
        per_layer = block_features(backbone, windows)
        if totals is None:
            totals = [torch.zeros(f.shape[1], *grid) for f in per_layer]
        for i, (top, left) in enumerate(batch):
            rows = slice(top // PATCH_SIZE, top // PATCH_SIZE + window // PATCH_SIZE)
            cols = slice(left // PATCH_SIZE, left // PATCH_SIZE + window // PATCH_SIZE)
            for total, f in zip(totals, per_layer):
                total[:, rows, cols] += f[i]
            count[:, rows, cols] += 1
    return [t / count for t in totals]


def cell_vectors(features: list[torch.Tensor], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cells (N,), pooled (L, N, C) float32) of labels (H, W) over features on the padded grid."""
    rows, cols = (PATCH_SIZE * s for s in features[0].shape[1:])
    padded = np.zeros((rows, cols), np.int64)
    padded[: labels.shape[0], : labels.shape[1]] = labels
    cells, coverage = label_coverage(torch.from_numpy(padded))
    pooled = [pool_features(f[None], coverage[None])[0] for f in features]
    return cells.numpy(), torch.stack(pooled).numpy()


def descriptors(image: np.ndarray, labels: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(N, len(DESCRIPTORS)) per-cell descriptors of normalised image (3, H, W) for `cells` of labels."""
    if len(cells) == 0:
        return np.zeros((0, len(DESCRIPTORS)), np.float32)
    props = regionprops_table(labels, intensity_image=np.moveaxis(image, 0, -1),
                              properties=("label", "area", "intensity_mean", "intensity_std", "eccentricity",
                                          "solidity"))
    index = {int(l): i for i, l in enumerate(props["label"])}
    order = [index[int(c)] for c in cells]
    columns = [np.log(props["area"])] + [props[f"intensity_mean-{c}"] for c in range(3)]
    columns += [props[f"intensity_std-{c}"] for c in range(3)] + [props["eccentricity"], props["solidity"]]
    return np.stack(columns, 1)[order].astype(np.float32)


@torch.no_grad()
def reference_vectors(backbone, image: torch.Tensor, mask: torch.Tensor, raw_labels=None):
    """(pooled (L, C), descriptors (D,)) of a reference cell: mask (H, W) bool in normalised image (3, H, W)."""
    window, window_mask = reference_window(image, mask)
    per_layer = block_features(backbone, window[None])
    pooled = torch.stack([embed_reference(f, window_mask[None].float())[0] for f in per_layer]).numpy()
    desc = descriptors(image.numpy(), mask.numpy().astype(np.int32), np.array([1]))[0]
    return pooled, desc


def split_queries(dataset, split: str, backbone, every: int = 1) -> list[dict]:
    """Per query: the reference's vectors, every true cell's vectors and descriptors, and its target flags."""
    queries = [q for q in dataset.queries if dataset.record(q.image).split == split][::every]
    per_image, out = {}, []
    for q in queries:
        if q.image not in per_image:
            record = dataset.record(q.image)
            labels = dataset.read_labels(record)
            image = as_input_image(dataset.read_image(record), torch.device("cpu"))
            cells, pooled = cell_vectors(image_features(backbone, image), labels)
            types = np.array([record.type_of(int(c)) for c in cells])
            per_image[q.image] = (cells, pooled, descriptors(image.numpy(), labels, cells), types)
        cells, pooled, desc, types = per_image[q.image]
        ref_record = dataset.record(q.reference_image)
        ref_image = as_input_image(dataset.read_image(ref_record), torch.device("cpu"))
        ref_mask = torch.from_numpy(dataset.read_labels(ref_record) == q.reference_label)
        ref_pooled, ref_desc = reference_vectors(backbone, ref_image, ref_mask)
        out.append(dict(pooled=pooled, desc=desc, target=(types == q.target_type), ref_pooled=ref_pooled,
                        ref_desc=ref_desc, origin=q.origin, target_type=q.target_type))
    return out


def train_pairs(dataset_path, backbone, items: int, seed: int = 0) -> list[dict]:
    """Pairs from training draws: each item's crop cells (pasted included) against its reference."""
    data = TrainDataset(dataset_path, "train", SamplingConfig(), seed=seed, length=items)
    out = []
    for index in range(items):
        item = data[index]
        instances = item.instances.numpy()
        per_layer = block_features(backbone, item.image[None])
        feats = [f[0] for f in per_layer]
        cells, coverage = label_coverage(item.instances)
        if len(cells) == 0:
            continue
        pooled = torch.stack([pool_features(f[None], coverage[None])[0] for f in feats]).numpy()
        desc = descriptors(item.image.numpy(), instances, cells.numpy())
        types = item.instance_types.numpy()[cells.numpy() - 1]
        ref_per_layer = block_features(backbone, item.reference_image[None])
        ref_mask = item.reference_mask[None]
        ref_pooled = torch.stack([embed_reference(f, ref_mask)[0] for f in ref_per_layer]).numpy()
        ref_desc = descriptors(item.reference_image.numpy(), item.reference_mask.numpy().astype(np.int32),
                               np.array([1]))[0]
        out.append(dict(pooled=pooled, desc=desc, target=(types == int(item.reference_type)), ref_pooled=ref_pooled,
                        ref_desc=ref_desc, origin="train", target_type=int(item.reference_type)))
    return out


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


class PairScorer(torch.nn.Module):
    """Same-type logit of (cell, reference) from their pooled vectors per layer and descriptor differences."""

    def __init__(self, layers: int, dim: int, n_desc: int, width: int = 64):
        super().__init__()
        self.per_layer = torch.nn.ModuleList(torch.nn.Linear(2 * dim, width) for _ in range(layers))
        self.head = torch.nn.Sequential(torch.nn.Linear(layers * width + 2 * n_desc + layers, 128), torch.nn.GELU(),
                                        torch.nn.Linear(128, 1))

    def forward(self, cell, ref, cell_desc, ref_desc):
        """cell (N, L, C), ref (N, L, C), descriptors (N, D) -> (N,) logits."""
        cell, ref = F.normalize(cell, dim=-1), F.normalize(ref, dim=-1)
        parts = [F.gelu(lin(torch.cat([cell[:, i] * ref[:, i], (cell[:, i] - ref[:, i]).abs()], -1)))
                 for i, lin in enumerate(self.per_layer)]
        diff = cell_desc - ref_desc
        cos = (cell * ref).sum(-1)
        return self.head(torch.cat(parts + [diff, diff.abs(), cos], -1))[:, 0]


def flatten(queries: list[dict]):
    cell = np.concatenate([np.moveaxis(q["pooled"], 0, 1) for q in queries])
    ref = np.concatenate([np.repeat(q["ref_pooled"][None], len(q["target"]), 0) for q in queries])
    cd = np.concatenate([q["desc"] for q in queries])
    rd = np.concatenate([np.repeat(q["ref_desc"][None], len(q["target"]), 0) for q in queries])
    y = np.concatenate([q["target"] for q in queries]).astype(np.float32)
    return [torch.from_numpy(np.ascontiguousarray(a)).float() for a in (cell, ref, cd, rd, y)]


def train_scorer(pairs: list[dict], epochs=30, lr=1e-3, seed=0) -> PairScorer:
    torch.manual_seed(seed)
    cell, ref, cd, rd, y = flatten(pairs)
    scorer = PairScorer(cell.shape[1], cell.shape[2], cd.shape[1])
    optim = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-2)
    weight = (1 - y.mean()) / y.mean()
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 512):
            idx = order[start : start + 512]
            logits = scorer(cell[idx], ref[idx], cd[idx], rd[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=weight)
            optim.zero_grad()
            loss.backward()
            optim.step()
    return scorer.eval()


def cue_aucs(queries: list[dict], scorer: PairScorer | None) -> dict[str, list[float]]:
    result = {f"cos_layer{l}": [] for l in LAYERS} | {"neg_abs_log_area": [], "scorer": []}
    for q in queries:
        for i, l in enumerate(LAYERS):
            result[f"cos_layer{l}"].append(auc(cosine(q["pooled"][i], q["ref_pooled"][i]), q["target"]))
        result["neg_abs_log_area"].append(auc(-np.abs(q["desc"][:, 0] - q["ref_desc"][0]), q["target"]))
        if scorer is not None:
            cell, ref, cd, rd, _ = flatten([q])
            with torch.no_grad():
                result["scorer"].append(auc(scorer(cell, ref, cd, rd).numpy(), q["target"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="built benchmark folder")
    parser.add_argument("--weights", required=True, help="DINOv2 ViT-S/14 weights (.pth)")
    parser.add_argument("--cache", required=True, help="folder for cached vectors (.pt)")
    parser.add_argument("--train-items", type=int, default=2000, help="training draws for the scorer")
    parser.add_argument("--splits", default="val,test,novel", help="evaluation splits")
    parser.add_argument("--every", type=int, default=1, help="every K-th query of each split")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("vits14", args.weights).eval()
    dataset = load_dataset(args.data)

    def cached(name, make):
        path = cache / f"{name}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        start = time.time()
        value = make()
        torch.save(value, path)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
        return value

    pairs = cached(f"train{args.train_items}", lambda: train_pairs(args.data, backbone, args.train_items))
    scorer = train_scorer(pairs)
    report = {}
    for split in args.splits.split(","):
        queries = cached(f"{split}_every{args.every}", lambda: split_queries(dataset, split, backbone, args.every))
        aucs = cue_aucs(queries, scorer)
        report[split] = {k: float(np.nanmean(v)) for k, v in aucs.items()}
        pasted = [i for i, q in enumerate(queries) if q["origin"] == "pasted"]
        report[split]["scorer_pasted"] = float(np.nanmean([aucs["scorer"][i] for i in pasted])) if pasted else None
        report[split]["queries"] = len(queries)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
