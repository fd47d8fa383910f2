"""Record what an instance-level model decides on, then score decision rules on the records without rerunning.

    python scripts/decision_rules.py record OUT.json -- eval --method percs --data D --split val [...]
    python scripts/decision_rules.py rules VAL.json TEST.json [NOVEL.json ...]
    python scripts/decision_rules.py bounds TEST.json [...]

`record` runs `percs eval` (the arguments after `--`) and writes, for every query: the image, target type and
origin, the number of true target cells, and for every cell the generic model found, its best logit against the
references, its logit against the image's best match (the found cell with the largest logit, as
`InstanceScorer.expand` takes it) and whether it matches a target cell (IoU > 0.5, the benchmark's rule). Found
masks are disjoint, so a kept set's AP@0.5 is TP / (kept + true - TP): `rules` reproduces `percs eval`'s AP@0.5 of
the model's own decision exactly, and scores the threshold and margin rules of
`percs.model.instance.InstanceScorer.decide`, their union ("either"), the margin with a probability floor and the
threshold on the logits with the image's best match averaged in ("expand A": (1 - A) x logit + A x the logit
against the best match, `InstanceScorer.decide`), each swept on the first file (val) and applied to the others.
`bounds` gives what no rule on these logits can beat: each query's best threshold chosen on the query itself (the
oracle threshold: the best top-k cut of its cells by logit) and the found cells kept by the true type (the
decision's ceiling with these masks). docs/type_decision.md reports what it found.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def record(out: str, eval_argv: list[str]) -> int:
    import percs.evaluate.runner as runner
    import percs.predict.references as references
    from percs.cli import main

    last: dict = {}
    queries: list[dict] = []
    decide, score_query = references.decide, runner.score_query

    def recording_decide(instance, candidates, positives, negatives, min_cell_probability=None):
        vectors, descriptors = candidates.vectors, candidates.descriptors
        logits = instance.logits(vectors, descriptors, positives).max(1).values
        eligible = instance.logits(vectors, descriptors, negatives).max(1).values <= logits if negatives else None
        match = instance.best_match(vectors, descriptors, logits, eligible)
        match = logits if match is None else match
        last.update(labels=candidates.labels.cpu().numpy(), cells=candidates.cells.cpu().numpy(),
                    logits=logits.float().cpu().numpy(), match=match.float().cpu().numpy())
        return decide(instance, candidates, positives, negatives, min_cell_probability)

    def recording_score(dataset, query, reference, prediction, labels, predicted, extra=None):
        truth, found = runner.without_clicked(runner.true_labels_of(dataset, query, labels), last["labels"], labels,
                                              runner.clicked_in_query(query, extra))
        queries.append(dict(image=query.image, type=query.target_type, origin=query.origin,
                            n_true=int(np.unique(truth[truth > 0]).size), logits=last["logits"].tolist(),
                            match=last["match"].tolist(),
                            matched=matched_cells(found, last["cells"], truth).tolist(),
                            ignored=(~np.isin(last["cells"], found)).tolist()))
        return score_query(dataset, query, reference, prediction, labels, predicted, extra)

    references.decide, runner.score_query = recording_decide, recording_score
    try:
        status = main(eval_argv)
    finally:
        references.decide, runner.score_query = decide, score_query
    if status == 0:
        with open(out, "w") as file:
            json.dump(queries, file)
        print(f"wrote {out}: {len(queries)} queries")
    return status


def matched_cells(found: np.ndarray, cells: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) bool: found cell `cells[i]` overlaps a true cell at IoU > 0.5 (each found cell matches at most one)."""
    from percs.evaluate.runner import matched_predictions

    return np.isin(cells, matched_predictions(truth, found))


def mean_ap(queries: list[dict], keep) -> float:
    """Mean AP@0.5 over queries of the cells `keep(logits)` selects (bool array); cells a query marks "ignored"
    (matching a positive clicked in the query image, `percs.evaluate.runner.without_clicked`) are not scored."""
    values = []
    for query in queries:
        logits, matched = np.asarray(query["logits"]), np.asarray(query["matched"], bool)
        kept = keep(logits) if len(logits) else np.zeros(0, bool)
        if "ignored" in query:
            kept = kept & ~np.asarray(query["ignored"], bool)
        tp = int(matched[kept].sum())
        denominator = int(kept.sum()) + query["n_true"] - tp
        values.append(tp / denominator if denominator else 1.0)
    return float(np.mean(values))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p))) if 0 < p < 1 else (np.inf if p >= 1 else -np.inf)


RULES = {
    "threshold": [((t,), lambda x, t=t: x >= _logit(t))
                  for t in np.round(np.arange(0.3, 0.96, 0.02), 2).tolist()],
    "margin": [((d,), lambda x, d=d: x >= x.max() - d) for d in (0.25, 0.5, 0.75, 1.0, 1.25)],
    "either": [((t, d), lambda x, t=t, d=d: (x >= _logit(t)) | (x >= x.max() - d))
               for t in (0.7, 0.75, 0.8, 0.85, 0.9) for d in (0.25, 0.5, 0.75, 1.0)],
    "margin with a floor": [((d, f), lambda x, d=d, f=f: (x >= x.max() - d) & (x >= _logit(f)))
                            for d in (0.25, 0.5, 0.75, 1.0) for f in (0.1, 0.2, 0.3, 0.4, 0.5)],
}


EXPAND = (0.25, 0.5, 0.75, 1.0)


def expanded(queries: list[dict], weight: float) -> list[dict]:
    """The queries with each cell's logit replaced by (1 - weight) x it + weight x its logit against the image's
    best match (the record's "match"), as `InstanceScorer.decide` decides with `expand` = weight."""
    return [dict(query, logits=((1 - weight) * np.asarray(query["logits"], float)
                                + weight * np.asarray(query["match"], float)).tolist()) for query in queries]


def rules(paths: list[str]) -> int:
    splits = []
    for path in paths:
        with open(path) as file:
            splits.append(json.load(file))
    print("rule (parameters chosen on " + paths[0] + ")", *paths, sep=" | ")
    for name, grid in RULES.items():
        parameters, keep = max(grid, key=lambda item: mean_ap(splits[0], item[1]))
        print(f"{name} {parameters}", *(f"{mean_ap(queries, keep):.3f}" for queries in splits), sep=" | ")
    if all("match" in query for queries in splits for query in queries):
        for weight in EXPAND:
            weighted = [expanded(queries, weight) for queries in splits]
            parameters, keep = max(RULES["threshold"], key=lambda item: mean_ap(weighted[0], item[1]))
            print(f"expand {weight:g}, threshold {parameters}",
                  *(f"{mean_ap(queries, keep):.3f}" for queries in weighted), sep=" | ")
    return 0


def oracle_ap(query: dict) -> float:
    """The query's best AP@0.5 over every threshold on its own logits (keeping its k best cells, k = 0..N)."""
    logits, matched = np.asarray(query["logits"]), np.asarray(query["matched"], bool)
    if "ignored" in query:
        scored = ~np.asarray(query["ignored"], bool)
        logits, matched = logits[scored], matched[scored]
    order = np.argsort(-logits, kind="stable")
    tp = np.concatenate(([0], np.cumsum(matched[order])))
    kept = np.arange(len(logits) + 1)
    denominator = kept + query["n_true"] - tp
    ap = np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)
    if len(logits):                         # tied logits cannot be cut apart: only cuts between distinct values
        sorted_logits = logits[order]
        ap = ap[np.concatenate(([True], sorted_logits[:-1] != sorted_logits[1:], [True]))]
    return float(ap.max())


def bounds(paths: list[str]) -> int:
    print("records | oracle threshold per query | true type kept (ceiling) | every found cell "
          "| oracle threshold per query, expand 0.5")
    for path in paths:
        with open(path) as file:
            queries = json.load(file)
        oracle = float(np.mean([oracle_ap(query) for query in queries]))
        ceiling = float(np.mean([mean_ap([query], lambda x, q=query: np.asarray(q["matched"], bool))
                                 for query in queries]))
        every = mean_ap(queries, lambda x: np.ones(len(x), bool))
        line = f"{path} | {oracle:.3f} | {ceiling:.3f} | {every:.3f}"
        if all("match" in query for query in queries):
            line += f" | {np.mean([oracle_ap(query) for query in expanded(queries, 0.5)]):.3f}"
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:
        if len(argv) < 4 or argv[2] != "--":
            print("usage: decision_rules.py record OUT.json -- eval ...", file=sys.stderr)
            return 2
        return record(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("rules", "bounds"))
    parser.add_argument("records", nargs="+", help="record files; the first chooses each rule's parameters")
    args = parser.parse_args(argv)
    return rules(args.records) if args.command == "rules" else bounds(args.records)


if __name__ == "__main__":
    sys.exit(main())
