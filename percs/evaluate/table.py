"""Markdown tables laid out like the paper's Table 1, from one or more metrics.json objects.

Rows are (method, IoU threshold), grouped by threshold as in the paper (every method at 0.3, then every
method at 0.5); a control run is its own row ("<method> [wrong-reference control]"), and so is a run on a
subset of the queries ("<method> [every 5th query]") and with extra references ("<method> [5 shots, 2
negatives]"). Columns are AP, P and R
of each (dataset, split), in the order the runs are given; a method without a run on a column shows "-".
Each figure is `value [low, high]`, its bootstrap interval over images. The first table holds the headline
figures (means over queries of per-query AP / P / R), the second the pooled ones (TP / FP / FN summed).
With paired=True a third table gives, for each run, its mean AP minus that of the first run given on the same
column, over the same queries, with a paired bootstrap interval (`paired_difference`).
"""

from __future__ import annotations

import numpy as np

from percs.evaluate.shots import ShotsConfig
from percs.evaluate.summary import BootstrapConfig, bootstrap_mean, image_index_of, resample_weights

FIGURE_NAMES = {"ap": "AP", "precision": "P", "recall": "R"}


def row_label(metrics: dict) -> str:
    """The row of a run: its method's name, with the control and the query subset when there are."""
    control, subset = metrics.get("control"), metrics.get("query_subset")
    label = metrics["method"] + (f" [{control['name']} control]" if control else "")
    shots = metrics.get("shots")
    if shots:
        label += f" [{ShotsConfig(**shots).label()}]"
    return label + (f" [every {ordinal(subset['every'])} query]" if subset else "")


def ordinal(k: int) -> str:
    """2nd, 3rd, 5th, 11th, 21st."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def column_label(metrics: dict) -> str:
    """The column group of a run: dataset name and split."""
    return f"{metrics['dataset']['name']} {metrics['split']}"


def query_key(query: dict) -> tuple:
    """What makes two runs' queries the same query: image, target type, reference cell (and extra references)."""
    return (query["image"], query["target_type"], query["reference_image"], query["reference_label"],
            str(query.get("extra_positives")), str(query.get("extra_negatives")))


def paired_difference(base: dict, other: dict, threshold: str, figure: str = "ap") -> tuple[float, float, float]:
    """(mean over queries of other's per-query figure minus base's, low, high) at IoU `threshold` ("0.5"): the
    two runs scored the same queries (ValueError naming the first that differs), and the interval resamples
    IMAGES, each draw the same for both runs (base's bootstrap settings), so that what the two share cancels."""
    keys = [query_key(q) for q in base["queries"]]
    other_by_key = {query_key(q): q for q in other["queries"]}
    if len(other_by_key) != len(other["queries"]) or len(set(keys)) != len(keys):
        raise ValueError("a run holds the same query twice: cannot pair its queries")
    missing = [k for k in keys if k not in other_by_key]
    if missing or len(keys) != len(other_by_key):
        first = missing[0] if missing else next(k for k in other_by_key if k not in set(keys))
        raise ValueError(f"{row_label(base)!r} and {row_label(other)!r} scored different queries (first: image "
                         f"{first[0]!r}, type {first[1]!r}, reference {first[2]!r} cell {first[3]}): cannot pair them")
    if threshold not in base["queries"][0]["iou"]:
        raise ValueError(f"no IoU threshold {threshold} in the runs (they hold {sorted(base['queries'][0]['iou'])})")
    differences = np.array([other_by_key[k]["iou"][threshold][figure] - q["iou"][threshold][figure]
                            for k, q in zip(keys, base["queries"])])
    index, n_images = image_index_of([k[0] for k in keys])
    bootstrap = BootstrapConfig(**{k: base["bootstrap"][k] for k in ("resamples", "level", "seed")})
    estimate = bootstrap_mean(differences, index, resample_weights(n_images, bootstrap), bootstrap.level)
    return estimate.value, estimate.low, estimate.high


def render_table(runs: list[dict], digits: int = 3, paired: bool = False) -> str:
    """Markdown of the headline and pooled tables (with a note per column group) of `runs`, and with paired the
    paired differences of mean AP from each column's first run (`paired_difference`).

    ValueError when two runs share a row and a column (say which) or disagree on the thresholds, or, with
    paired, when two runs of a column scored different queries."""
    rows, columns, cells = _layout(runs)
    thresholds = [f"{t:g}" for t in runs[0]["thresholds"]]
    level = f"{100 * runs[0]['bootstrap']['level']:g}%"
    parts = [f"Mean over queries of each query's AP, P and R (a match: IoU > t); [{level} bootstrap interval, "
             "images resampled].\n", _markdown(rows, columns, cells, thresholds, "mean", digits),
             "\nPooled over queries (TP, FP, FN summed), same intervals.\n",
             _markdown(rows, columns, cells, thresholds, "pooled", digits), ""]
    if paired:
        parts[-1:] = [f"\nPaired by image: mean AP minus that of the column's first run ({rows_of(columns, cells)}), "
                      f"same queries, each bootstrap draw of images shared by both runs.\n",
                      _paired_markdown(rows, columns, cells, thresholds, digits), ""]
    for column in columns:
        run = next(r for (_, c), r in cells.items() if c == column)
        parts.append(f"- {column}: {run['n_queries']} queries on {run['n_images']} images, dataset manifest "
                     f"sha256 {run['dataset']['manifest_sha256'][:12]}, {run['bootstrap']['resamples']} resamples")
    return "\n".join(parts) + "\n"


def _layout(runs: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    if not runs:
        raise ValueError("no runs to tabulate")
    rows, columns, cells = [], [], {}
    for run in runs:
        if run["thresholds"] != runs[0]["thresholds"]:
            raise ValueError(f"runs have different IoU thresholds: {runs[0]['thresholds']} and {run['thresholds']}")
        row, column = row_label(run), column_label(run)
        if (row, column) in cells:
            raise ValueError(f"two runs of {row!r} on {column!r}")
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        cells[row, column] = run
    return rows, columns, cells


def _markdown(rows, columns, cells, thresholds, kind: str, digits: int) -> str:
    header = ["Method", "IoU"] + [f"{c} {name}" for c in columns for name in FIGURE_NAMES.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in thresholds:
        for row in rows:
            values = []
            for column in columns:
                run = cells.get((row, column))
                figures = run["overall"]["iou"][t][kind] if run else None
                values += [_format(figures[name], digits) if run else "-" for name in FIGURE_NAMES]
            lines.append("| " + " | ".join([row, t] + values) + " |")
    return "\n".join(lines)


def _format(estimate: dict, digits: int) -> str:
    low, high = estimate["ci"]
    return f"{estimate['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def rows_of(columns: list[str], cells: dict) -> str:
    """'column: first run' for each column, the baseline of its paired differences."""
    return "; ".join(f"{column}: {_first_row(column, cells)}" for column in columns)


def _first_row(column: str, cells: dict) -> str:
    return next(row for (row, c) in cells if c == column)


def _paired_markdown(rows, columns, cells, thresholds, digits: int) -> str:
    header = ["Method", "IoU"] + [f"{c} AP minus the first run's" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in thresholds:
        for row in rows:
            values = []
            for column in columns:
                run, base = cells.get((row, column)), cells[_first_row(column, cells), column]
                if run is None or run is base:
                    values.append("-")
                    continue
                value, low, high = paired_difference(base, run, t)
                values.append(f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
            lines.append("| " + " | ".join([row, t] + values) + " |")
    return "\n".join(lines)
