"""Per-query AUC of same-type cues on a percs benchmark, and of the learned cell scorer (research script).

For every fixed query of a split, every true cell of the query image is a candidate; the target type's cells
are positives. A cue scores each candidate against the reference cell; its per-query ROC AUC (over the
query's candidates, queries with both classes) says how well it ranks same-type cells above the others in
the one image where the decision is made. Cues: cosine of pooled DINOv2 features of each block in --layers,
-|log area ratio|, and the `percs train-scorer` scorer given with --scorer (`percs.model.instance`).

--class-probe asks where a type decision from one reference is lost: a linear probe (multinomial logistic
regression on every block's pooled vectors and the descriptors, standardised) learns the cell types of the first
split's true cells, and each later split whose target types it knows reports the per-query AUC of the probe's
probability of the *true* target type (how well the features rank the type within an image when the type is
known) and of the probe's type posterior of each cell dotted with the reference cell's (the type read from the
one reference), with the reference's type accuracy (`probe_reference_accuracy`). --probe-split SPLIT fits it on
every true cell of SPLIT's images instead (train too, which has no queries).

--probe-decision GENERIC_CHECKPOINT takes the probe end to end: every cell the generic model finds in each query
image (at the scale the reference sets, as `percs eval` segments it), embedded as the evaluated cells are, is kept
when its probability of the reference's type (its type posterior dotted with the reference's) is at least a
threshold chosen on the first evaluated split (`percs.baselines.filter.choose_threshold`, -1 = every cell). Per
split: mean AP@0.5 at that threshold with a 95% interval (1000 resamplings of queries), of every found cell, of
the split's own best threshold, and the masks' class-agnostic AP@0.5; and the same decision on the true cells
(`probe_decision_true_cells`: perfect masks, what the decision alone can reach).

    python scripts/cell_cues.py --data /tmp/percs-mini --weights ../shared/weights/dinov2_vits14_pretrain.pth \
        --cache /tmp/cues --scorer /tmp/scorer.pt
    python scripts/cell_cues.py --data /tmp/percs-consep --weights $W --cache /tmp/cues --embedding window \
        --context-window 6 --splits val,test --class-probe --probe-split train --probe-decision runs/generic/last.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from percs.data.format import load_dataset
from percs.model.backbone_weights import load_backbone
from percs.model.instance import LAYERS, InstanceScorer
from percs.predict import as_input_image


@torch.no_grad()
def split_queries(dataset, split: str, backbone, layers, every: int = 1, embedding: str = "patch", size: int = 56,
                  context: float = 2.0, keep_tokens: int | None = None, context_window: float = 0.0) -> list[dict]:
    """Per query: every true cell's pooled vectors and descriptors, the reference's, and the target flags, each
    embedded as the instance-level decision embeds them (`InstanceScorer.cells` / `reference`); keep_tokens=k
    (window embedding): also the windows' tokens after block k, for a scorer with a fine-tuned tail."""
    from tqdm import tqdm

    from percs.evaluate.runner import split_queries as queries_of
    from percs.train.scorer import embed_reference_cell

    embedder = InstanceScorer(backbone, None, layers, embedding, window_size=size, context=context,
                              context_window=context_window)
    per_image, out = {}, []
    for q in tqdm(queries_of(dataset, split)[::every], desc=split, unit="query"):
        if q.image not in per_image:
            per_image[q.image] = image_cells(dataset, dataset.record(q.image), embedder, keep_tokens)
        vectors, descriptors, types, tokens = per_image[q.image]
        ref_record = dataset.record(q.reference_image)
        ref_image = as_input_image(dataset.read_image(ref_record), torch.device("cpu"))
        ref_mask = torch.from_numpy(dataset.read_labels(ref_record) == q.reference_label)
        ref_vectors, ref_descriptors, ref_tokens = embed_reference_cell(embedder, ref_image, ref_mask, keep_tokens)
        out.append(dict(cells=vectors, descriptors=descriptors, target=torch.from_numpy(types == q.target_type),
                        image=q.image, types=types, reference=ref_vectors, reference_descriptors=ref_descriptors,
                        origin=q.origin, target_type=q.target_type, **tokens, **ref_tokens))
    return out


def image_cells(dataset, record, embedder: InstanceScorer, keep_tokens: int | None = None):
    """(vectors, descriptors, types, tokens) of every true cell of one image (`embed_candidates`)."""
    from percs.train.scorer import embed_candidates

    labels = torch.from_numpy(dataset.read_labels(record).astype(np.int64))
    image = as_input_image(dataset.read_image(record), torch.device("cpu"))
    cells, vectors, descriptors, tokens = embed_candidates(embedder, image, labels, keep_tokens)
    return vectors, descriptors, np.array([record.type_of(int(c)) for c in cells]), tokens


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney); NaN without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@torch.no_grad()
def cue_aucs(queries: list[dict], layers, scorer=None, backbone=None) -> dict[str, list[float]]:
    """Per-query AUCs of each cue (and of the scorer; one with a fine-tuned tail re-embeds the tuned blocks from
    the kept tokens through `backbone`)."""
    from percs.train.scorer import tuned_vectors

    result = {f"cos_layer{l}": [] for l in layers} | {"neg_abs_log_area": []}
    if scorer is not None:
        result["scorer"] = []
    for q in queries:
        target = q["target"].numpy()
        u = torch.nn.functional.normalize(q["cells"].float(), dim=-1)
        v = torch.nn.functional.normalize(q["reference"].float(), dim=-1)
        for i, l in enumerate(layers):
            result[f"cos_layer{l}"].append(auc((u[:, i] * v[i]).sum(-1).numpy(), target))
        log_area = q["descriptors"][:, 0].numpy()
        result["neg_abs_log_area"].append(auc(-np.abs(log_area - float(q["reference_descriptors"][0])), target))
        if scorer is not None:
            cells = q["cells"].float()
            reference = q["reference"].float()[None].expand_as(cells)
            if scorer.tail is not None:
                start = len(backbone.blocks) - len(scorer.tail)
                if q.get("token_start") != start:
                    raise SystemExit(f"the cached vectors hold no tokens after block {start}: "
                                     f"use --keep-tokens {start}")
                cells, reference = tuned_vectors(backbone, scorer.tail, [q], cells, reference, start, layers)
            logits = scorer(cells, reference, q["descriptors"], q["reference_descriptors"])
            result["scorer"].append(auc(logits.numpy(), target))
    return result


class ClassProbe:
    """Multinomial logistic regression (L-BFGS, L2 weight `l2`) on standardised features: the types of cells
    (`percs.train.scorer.fit_linear_classifier`, the fit of `percs train-scorer --objective types`)."""

    def __init__(self, features: np.ndarray, types: np.ndarray, l2: float = 0.02):
        from percs.train.scorer import fit_linear_classifier

        self.classes = sorted(set(types.tolist()))
        y = torch.tensor([self.classes.index(t) for t in types])
        mean, scale, self.linear = fit_linear_classifier(torch.from_numpy(features), y, len(self.classes), l2)
        self.mean, self.scale = mean.numpy(), scale.numpy()

    def _standard(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale).astype(np.float32)

    @torch.no_grad()
    def posteriors(self, features: np.ndarray) -> np.ndarray:
        return torch.softmax(self.linear(torch.from_numpy(self._standard(features))), 1).numpy()


def probe_features(vectors: torch.Tensor, descriptors: torch.Tensor) -> np.ndarray:
    """(N, L * C + D): every block's pooled vector and the descriptors of N cells ((L, C) and (D,) for one)."""
    vectors, descriptors = vectors.float(), descriptors.float()
    if vectors.dim() == 2:
        vectors, descriptors = vectors[None], descriptors[None]
    return torch.cat([vectors.flatten(1), descriptors], 1).numpy()


def train_probe(queries: list[dict]) -> ClassProbe:
    """The probe fitted on every true cell of the queries' images (each image once)."""
    images = {}
    for q in queries:
        images.setdefault(q["image"], q)
    return fit_probe(list(images.values()))


def fit_probe(images: list[dict]) -> ClassProbe:
    """The probe fitted on the cells of images [{"cells": (N, L, C), "descriptors": (N, D), "types": (N,)}]."""
    if any("types" not in image for image in images):
        raise SystemExit("--class-probe needs cell types in the cached vectors: delete the cache written by an "
                         "older version of this script")
    return ClassProbe(np.concatenate([probe_features(image["cells"], image["descriptors"]) for image in images]),
                      np.concatenate([image["types"] for image in images]))


def split_cells(dataset, split: str, backbone, layers, embedding: str = "patch", size: int = 56,
                context: float = 2.0, context_window: float = 0.0) -> list[dict]:
    """Per image of split (queries or not) with cells: every true cell's vectors, descriptors and types, embedded
    as `split_queries` embeds them (`percs.train.scorer.collect_type_cells`)."""
    from percs.train.scorer import ScorerTraining, collect_type_cells

    settings = ScorerTraining(layers=tuple(layers), embedding=embedding, window_size=size, context=context,
                              context_window=context_window)
    try:
        return collect_type_cells(dataset, backbone, settings, split)
    except ValueError as error:
        raise SystemExit(f"--probe-split: {error}") from None


def same_type_probability(probe: ClassProbe, vectors, descriptors, reference, reference_descriptors) -> np.ndarray:
    """(N,) each cell's probability of having the reference cell's type: its type posterior dotted with the
    reference's (the two read independently)."""
    if len(vectors) == 0:
        return np.zeros(0, np.float32)
    cells = probe.posteriors(probe_features(vectors, descriptors))
    return cells @ probe.posteriors(probe_features(reference, reference_descriptors))[0]


@torch.no_grad()
def found_queries(dataset, split: str, checkpoint: str, weights: str, layers, embedding: str, size: int,
                  context: float, context_window: float, every: int = 1) -> list[dict]:
    """Per query: the labels of every cell `checkpoint` (a generic percs model) finds in the query image at the
    reference's scale, their vectors and descriptors, the reference's, the true labels of the target type and
    the image's true labels."""
    from tqdm import tqdm

    from percs.baselines.generic import PercsGenericMasks
    from percs.evaluate.instance_method import InstanceDecision
    from percs.evaluate.runner import split_queries as queries_of
    from percs.evaluate.runner import true_labels_of

    source = PercsGenericMasks(checkpoint, "cpu", weights)
    method = InstanceDecision(source, None, 0.5, layers, embedding, size, context, context_window)
    out = []
    for q in tqdm(queries_of(dataset, split)[::every], desc=f"{split} found cells", unit="query"):
        record, reference = dataset.record(q.image), dataset.record(q.reference_image)
        labels = dataset.read_labels(record)
        mask = dataset.read_labels(reference) == q.reference_label
        found, cells, vectors, descriptors = method.cells(dataset.read_image(record), source.scale_of(mask))
        ref_image = as_input_image(dataset.read_image(reference), torch.device("cpu"))
        ref_vectors, ref_descriptors = method.instance.reference(ref_image, torch.from_numpy(mask))
        out.append(dict(image=q.image, target_type=q.target_type, labels=found, cells=cells,
                        vectors=vectors.half(), descriptors=descriptors, reference=ref_vectors.half(),
                        reference_descriptors=ref_descriptors, truth=true_labels_of(dataset, q, labels),
                        image_labels=labels))
    return out


def true_cell_queries(dataset, queries: list[dict]) -> list[dict]:
    """`split_queries` output as `found_queries` gives it, each true cell found exactly (labels 1..N)."""
    out, read = [], {}
    for q in queries:
        if q["image"] not in read:                      # an image holds several queries: read its labels once
            read[q["image"]] = dataset.read_labels(dataset.record(q["image"]))
        labels = read[q["image"]]
        cells = np.unique(labels[labels > 0])
        if not np.array_equal(cells, np.arange(1, len(q["cells"]) + 1)):
            raise SystemExit(f"{q['image']}: labels are not 1..N with one cached vector per cell")
        truth = np.where(np.isin(labels, cells[q["target"].numpy()]), labels, 0)
        out.append(dict(image=q["image"], labels=labels, cells=cells, vectors=q["cells"],
                        descriptors=q["descriptors"], reference=q["reference"],
                        reference_descriptors=q["reference_descriptors"], truth=truth, image_labels=labels))
    return out


def mean_interval(values: np.ndarray, draws: int = 1000, seed: int = 0) -> list[float]:
    """[mean, 2.5th, 97.5th percentile] of the mean over `draws` resamplings of values."""
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(draws)]
    return [round(float(values.mean()), 4), round(float(np.percentile(means, 2.5)), 4),
            round(float(np.percentile(means, 97.5)), 4)]


def probe_decision(probe: ClassProbe, splits: dict[str, list[dict]]) -> dict:
    """The probe's decision on `found_queries` of each split, its threshold chosen on the first split (see the
    module docstring)."""
    from percs.baselines.filter import Candidates, choose_threshold, keep_similar
    from percs.metrics import evaluate

    def ap(query: dict, probability: np.ndarray, threshold: float) -> float:
        kept = keep_similar(query["labels"], query["cells"], probability, threshold)
        return float(evaluate([query["truth"]], [kept], 0.5)[0].image_mean.ap)

    report, threshold = {}, None
    for split, queries in splits.items():
        probabilities = [same_type_probability(probe, q["vectors"], q["descriptors"], q["reference"],
                                               q["reference_descriptors"]) for q in queries]
        candidates = [Candidates(q["labels"], q["cells"], p) for q, p in zip(queries, probabilities)]
        best, scores = choose_threshold(candidates, [q["truth"] for q in queries])
        threshold = best if threshold is None else threshold
        images = {q["image"]: q for q in queries}
        masks = evaluate([q["image_labels"] for q in images.values()], [q["labels"] for q in images.values()], 0.5)
        report[split] = dict(
            threshold=threshold,
            ap50=mean_interval(np.array([ap(q, p, threshold) for q, p in zip(queries, probabilities)])),
            every_cell=mean_interval(np.array([ap(q, p, -1.0) for q, p in zip(queries, probabilities)])),
            own_best=[best, round(scores[best], 4)], class_agnostic_ap50=round(float(masks[0].image_mean.ap), 4),
            queries=len(queries))
    return report


def probe_aucs(probe: ClassProbe, queries: list[dict]) -> dict[str, list[float]]:
    """Per-query AUCs of the probe with the true target type and with the reference's posterior, and whether the
    reference's most probable type is the target type; queries of types the probe never saw are skipped."""
    result = {"probe_true_class": [], "probe_reference_class": [], "probe_reference_accuracy": []}
    for q in queries:
        if q["target_type"] not in probe.classes:
            continue
        cells = probe.posteriors(probe_features(q["cells"], q["descriptors"]))
        reference = probe.posteriors(probe_features(q["reference"], q["reference_descriptors"]))[0]
        target = q["target"].numpy()
        result["probe_true_class"].append(auc(cells[:, probe.classes.index(q["target_type"])], target))
        result["probe_reference_class"].append(auc(cells @ reference, target))
        result["probe_reference_accuracy"].append(float(probe.classes[int(reference.argmax())] == q["target_type"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="built benchmark folder")
    parser.add_argument("--weights", required=True, help="DINOv2 ViT-S/14 weights (.pth)")
    parser.add_argument("--cache", required=True, help="folder for cached vectors (.pt)")
    parser.add_argument("--scorer", help="a `percs train-scorer` file to score too")
    parser.add_argument("--layers", default=",".join(map(str, LAYERS)), help="DINOv2 blocks (default 4,8,12)")
    parser.add_argument("--splits", default="val,test,novel", help="evaluation splits")
    parser.add_argument("--every", type=int, default=1, help="every K-th query of each split")
    parser.add_argument("--embedding", choices=("patch", "window"), default="patch",
                        help="cells pooled from the image's features (patch) or each alone at one scale (window)")
    parser.add_argument("--window-size", type=int, default=56, help="window embedding: pixels of each window")
    parser.add_argument("--context", type=float, default=2.0, help="window embedding: window side / cell diameter")
    parser.add_argument("--keep-tokens", type=int, metavar="K",
                        help="window embedding: keep the tokens after block K too (for --scorer with K = 12 - its "
                             "tuned blocks, `percs train-scorer --tune-blocks`)")
    parser.add_argument("--context-window", type=float, default=0.0,
                        help="window embedding: also a second window this many diameters wide (0: none)")
    parser.add_argument("--class-probe", action="store_true",
                        help="fit a linear type probe on the first split's cells and report it on the others")
    parser.add_argument("--probe-split", help="--class-probe: fit the probe on every true cell of this split's images "
                                              "instead (train too), and report it on every split of --splits")
    parser.add_argument("--probe-decision", metavar="GENERIC_CHECKPOINT",
                        help="--class-probe: the probe's decision end to end on this generic model's masks")
    args = parser.parse_args()
    if (args.probe_split or args.probe_decision) and not args.class_probe:
        parser.error("--probe-split and --probe-decision need --class-probe")
    layers = tuple(int(l) for l in args.layers.split(","))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("vits14", args.weights).eval()
    dataset = load_dataset(args.data)
    scorer = None
    if args.scorer:
        from percs.train.scorer import load_scorer

        scorer, record = load_scorer(args.scorer)
        if tuple(record["layers"]) != layers:
            parser.error(f"--scorer reads blocks {record['layers']}, --layers is {args.layers}")
    suffix = "" if args.embedding == "patch" else f"_{args.embedding}"
    if args.embedding == "window" and (args.window_size, args.context) != (56, 2.0):
        suffix += f"{args.window_size}x{args.context:g}"
    if args.context_window:
        suffix += f"_wide{args.context_window:g}"
    embedding = (args.embedding, args.window_size, args.context)

    def cached(name: str, compute):
        path = cache / f"{dataset.name}_{name}_layers{'-'.join(map(str, layers))}{suffix}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        start = time.time()
        value = compute()
        torch.save(value, path)
        print(f"{name}: vectors in {time.time() - start:.0f} s", flush=True)
        return value

    report, probe, found, true_cells = {}, None, {}, {}
    if args.probe_decision:
        key = hashlib.sha256(str(Path(args.probe_decision).resolve()).encode()).hexdigest()[:8]
    if args.probe_split:
        probe = fit_probe(cached(f"{args.probe_split}_cells", lambda: split_cells(
            dataset, args.probe_split, backbone, layers, *embedding, args.context_window)))
    for index, split in enumerate(args.splits.split(",")):
        tokens = "" if args.keep_tokens is None else f"_tokens{args.keep_tokens}"
        queries = cached(f"{split}_every{args.every}{tokens}", lambda: split_queries(
            dataset, split, backbone, layers, args.every, *embedding, args.keep_tokens, args.context_window))
        if args.probe_decision:
            found[split] = cached(f"{split}_every{args.every}_found{key}", lambda: found_queries(
                dataset, split, args.probe_decision, args.weights, layers, *embedding, args.context_window,
                args.every))
            true_cells[split] = true_cell_queries(dataset, queries)
        aucs = cue_aucs(queries, layers, scorer, backbone)
        if args.class_probe and probe is None:
            probe = train_probe(queries)
        elif probe is not None:
            aucs |= {k: v for k, v in probe_aucs(probe, queries).items() if v}
        report[split] = {k: round(float(np.nanmean(v)), 4) for k, v in aucs.items()}
        if scorer is not None:
            pasted = [i for i, q in enumerate(queries) if q["origin"] == "pasted"]
            report[split]["scorer_pasted"] = round(float(np.nanmean([aucs["scorer"][i] for i in pasted])), 4) \
                if pasted else None
        report[split]["queries"] = len(queries)
    if found:
        report["probe_decision"] = probe_decision(probe, found)
        report["probe_decision_true_cells"] = probe_decision(probe, true_cells)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
