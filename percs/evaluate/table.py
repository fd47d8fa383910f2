"""Markdown tables laid out like the paper's Table 1, from one or more metrics.json objects.

Rows are (method, IoU threshold), grouped by threshold as in the paper (every method at 0.3, then every
method at 0.5); a control run is its own row ("<method> [wrong-reference control]"), and so is a run on a
subset of the queries ("<method> [every 5th query]") and with extra references ("<method> [5 shots, 2
negatives]"). Columns are AP, P and R
of each (dataset, split), in the order the runs are given; a method without a run on a column shows "-".
Each figure is `value [low, high]`, its bootstrap interval over images. The first table holds the headline
figures (means over queries of per-query AP / P / R), the second the pooled ones (TP / FP / FN summed).
"""

from __future__ import annotations

from percs.evaluate.shots import ShotsConfig

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


def render_table(runs: list[dict], digits: int = 3) -> str:
    """Markdown of the headline and pooled tables (with a note per column group) of `runs`.

    ValueError when two runs share a row and a column (say which) or disagree on the thresholds."""
    rows, columns, cells = _layout(runs)
    thresholds = [f"{t:g}" for t in runs[0]["thresholds"]]
    level = f"{100 * runs[0]['bootstrap']['level']:g}%"
    parts = [f"Mean over queries of each query's AP, P and R (a match: IoU > t); [{level} bootstrap interval, "
             "images resampled].\n", _markdown(rows, columns, cells, thresholds, "mean", digits),
             "\nPooled over queries (TP, FP, FN summed), same intervals.\n",
             _markdown(rows, columns, cells, thresholds, "pooled", digits), ""]
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
