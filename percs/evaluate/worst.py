"""Pictures of the worst queries of an evaluation (lowest AP@0.5, ties by run order): OUT/worst/.

Each `RR-qNNNN.png` (rank RR, query NNNN of metrics.json) shows the query image with the prediction matched
against the true cells of the target type at IoU > 0.5 (true positives, false positives, missed cells) and, when
the reference is in the same image, the reference cell (`percs.overlay.draw_matches`); a reference from another
image is a second panel on the right; a legend strip runs under both. `index.md` lists them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from percs.data.format import Dataset
from percs.data.io import read_label_file
from percs.evaluate.summary import IOU_RULE, THRESHOLDS
from percs.overlay import add_legend, draw_matches, draw_overlay, match_legend, save_png

GAP = 8  # white pixels between panels


def worst_indices(records, count: int, threshold: float = 0.5) -> list[int]:
    """Indices of the `count` records of lowest AP at `threshold` (ties: earlier first)."""
    k = THRESHOLDS.index(threshold)
    ap = [r.counts.scores(k)["ap"] for r in records]
    return sorted(range(len(records)), key=lambda i: (ap[i], i))[:count]


def query_picture(dataset: Dataset, record, images, predicted: np.ndarray) -> np.ndarray:
    """(H', W', 3) uint8: the query overlay, the reference panel when the reference is another image, and
    the legend under them."""
    from percs.evaluate.runner import true_labels_of

    query, reference = record.query, record.reference
    image, labels = images(query.image)
    reference_image, reference_labels = images(reference.image)
    reference_mask = reference_labels == reference.label
    same = reference.image == query.image
    panels = [draw_matches(image, predicted, true_labels_of(dataset, query, labels),
                           reference_mask=reference_mask if same else None, threshold=0.5, iou_rule=IOU_RULE)]
    if not same:
        panels.append(draw_overlay(reference_image, np.zeros(reference_mask.shape, np.int32),
                                   reference_mask=reference_mask))
    return add_legend(side_by_side(panels), match_legend(0.5, IOU_RULE))


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 panels placed left to right on white, GAP pixels apart, top-aligned."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    left = 0
    for panel in panels:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + GAP
    return canvas


def write_worst(out: Path, dataset: Dataset, records, images, count: int) -> None:
    """OUT/worst/RR-qNNNN.png for the `count` worst queries and OUT/worst/index.md describing them."""
    folder = out / "worst"
    folder.mkdir(exist_ok=True)
    lines = ["Worst queries by AP@0.5. Green: true positives (predicted cells matched at IoU > 0.5); orange-red: "
             "false positives; blue: missed true cells of the target type; magenta: the reference cell (right "
             "panel when it is in another image).", ""]
    k = THRESHOLDS.index(0.5)
    for rank, index in enumerate(worst_indices(records, count), start=1):
        record = records[index]
        predicted = read_label_file(out / record.prediction)
        name = f"{rank:02d}-q{index:04d}.png"
        save_png(folder / name, query_picture(dataset, record, images, predicted))
        query = record.query
        lines.append(f"- {name}: {query.image}, {query.target_type} ({query.origin}), AP@0.5 "
                     f"{record.counts.scores(k)['ap']:.3f}, {record.n_true} true / {record.n_pred} predicted, "
                     f"reference {record.reference.image} #{record.reference.label}")
    (folder / "index.md").write_text("\n".join(lines) + "\n")
