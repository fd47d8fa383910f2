"""metrics.json of an evaluation: what ran on what, and its figures overall, by cell type and by origin.

Layout (figures as in `percs.evaluate.summary.summary_json`; thresholds as strings "0.3", "0.5"):

    {"format": "percs-eval", "version": 1,
     "method": honest name of the variant, "method_key": registry name, "method_settings": {...},
     "dataset": {"name", "path", "manifest_sha256"}, "split": "test",
     "control": null | {"name": "wrong-reference", "seed", "skipped_queries"},
     "query_subset": null | {"every": k, "split_queries": N} (every k-th of the split's N queries ran),
     "shots": null | {"shots": K, "negatives": M, "seed", "negatives_from"} (percs.evaluate.shots),
     "iou_rule": "gt", "thresholds": [0.3, 0.5],
     "bootstrap": {"unit": "image", "resamples", "level", "seed"},
     "n_queries", "n_images", "seconds",
     "overall": {"n_queries", "n_images", "iou": {"0.3": {"mean": {"ap": {"value", "ci"}, "precision", "recall"},
                                                          "pooled": {"ap", "precision", "recall", "tp", "fp", "fn"}}}},
     "by_type": {type: same as overall}, "by_origin": {"native" | "pasted": same as overall},
     "queries": [{"image", "target_type", "origin", "reference_image", "reference_label", "prediction",
                  "n_true", "n_pred", "iou": {"0.3": {"tp", "fp", "fn", "ap", "precision", "recall"}},
                  with shots: "extra_positives", "extra_negatives": [[image, label], ...]}]}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from percs.data.format import MANIFEST, Dataset
from percs.data.io import sha256
from percs.evaluate.summary import IOU_RULE, THRESHOLDS, group_by, summarize, summary_json

FORMAT = "percs-eval"
VERSION = 1


def build_metrics(method, method_key: str, dataset: Dataset, config, records, skipped: int, seconds: float,
                  split_queries: int) -> dict:
    """The metrics.json object of a finished run (records: `runner.QueryRecord`s, in run order; split_queries:
    the number of fixed queries of the split, of which every `config.every`-th ran)."""
    counts = [r.counts for r in records]
    bootstrap = config.bootstrap
    groups = {key: {name: summary_json(summarize(members, THRESHOLDS, bootstrap))
                    for name, members in group_by(counts, field).items()}
              for key, field in (("by_type", "target_type"), ("by_origin", "origin"))}
    overall = summary_json(summarize(counts, THRESHOLDS, bootstrap))
    control = None
    if config.control is not None:
        control = {"name": config.control, "seed": config.control_seed, "skipped_queries": skipped}
    return {
        "format": FORMAT, "version": VERSION,
        "method": method.name, "method_key": method_key,
        "method_settings": getattr(method, "settings", {}),
        "dataset": {"name": dataset.name, "path": str(dataset.root),
                    "manifest_sha256": sha256(Path(dataset.root) / MANIFEST)},
        "split": config.split, "control": control,
        "query_subset": {"every": config.every, "split_queries": split_queries} if config.every > 1 else None,
        "shots": dataclasses.asdict(config.shots) if config.shots.active else None,
        "iou_rule": IOU_RULE, "thresholds": list(THRESHOLDS),
        "bootstrap": {"unit": "image", **dataclasses.asdict(bootstrap)},
        "n_queries": overall["n_queries"], "n_images": overall["n_images"], "seconds": round(seconds, 3),
        "overall": overall, **groups,
        "queries": [query_json(r, THRESHOLDS) for r in records],
    }


def query_json(record, thresholds) -> dict:
    """One query's entry of metrics.json."""
    q, c = record.query, record.counts
    iou = {f"{t:g}": {"tp": c.tp[k], "fp": c.fp[k], "fn": c.fn[k], **c.scores(k)} for k, t in enumerate(thresholds)}
    entry = {"image": q.image, "target_type": q.target_type, "origin": q.origin,
             "reference_image": record.reference.image, "reference_label": record.reference.label,
             "prediction": record.prediction, "n_true": record.n_true, "n_pred": record.n_pred, "iou": iou}
    if record.extra is not None:
        entry["extra_positives"] = [[r.image, r.label] for r in record.extra.positives]
        entry["extra_negatives"] = [[r.image, r.label] for r in record.extra.negatives]
    return entry


def write_outputs(out: Path, metrics: dict, dataset: Dataset, records, images, worst: int) -> None:
    """OUT/metrics.json, OUT/table.md and, with worst > 0 (and percs.overlay), OUT/worst/."""
    from percs.evaluate.table import render_table
    from percs.evaluate.worst import write_worst

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "table.md").write_text(render_table([metrics]))
    if worst:
        write_worst(out, dataset, records, images, worst)


def read_metrics(path: Path | str) -> dict:
    """A metrics.json (or the folder holding one); ValueError naming the file when it is not a percs eval."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read metrics ({error})") from None
    if not isinstance(metrics, dict) or metrics.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} metrics.json")
    if metrics.get("version") != VERSION:
        raise ValueError(f"{path}: {FORMAT} version {metrics.get('version')!r}, this percs reads {VERSION}")
    return metrics
