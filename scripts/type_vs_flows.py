"""Which half of a PerCS-DINO checkpoint limits it: the same-type decision or the flows.

For each fixed query of a split, the checkpoint predicts flows and the same-type map as `percs eval` does;
then the masks are rebuilt from the same predicted flows with the *true* same-type mask as cellprob (+5 on the
target type's cells, -5 elsewhere). Printed, as means over queries: AP@0.5 as predicted, AP@0.5 with the true
type (the flows' ceiling), and the pixel IoU of the predicted same-type map (probability > 0.5) with the truth.

    python scripts/type_vs_flows.py CHECKPOINT BENCHMARK [--split val] [--every 1] [--device cpu]
"""

from __future__ import annotations

import argparse

import numpy as np

from percs.api import Segmenter
from percs.data.format import load_dataset
from percs.evaluate.runner import split_queries, true_labels_of
from percs.flows import flows_to_masks
from percs.metrics import evaluate


def ap50(truth: np.ndarray, predicted: np.ndarray) -> float:
    stats = evaluate(truth, predicted, (0.5,), iou_rule="gt")[0]
    total = stats.tp + stats.fp + stats.fn
    return float(stats.tp / total) if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("benchmark")
    parser.add_argument("--split", default="val")
    parser.add_argument("--every", type=int, default=1, help="every K-th fixed query")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")
    dataset = load_dataset(args.benchmark)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device)
    predicted, true_type, pixel_iou = [], [], []
    for query in split_queries(dataset, args.split)[:: args.every]:
        record, reference = dataset.record(query.image), dataset.record(query.reference_image)
        labels = dataset.read_labels(record)
        cell = segmenter.reference(dataset.read_image(reference), labels=dataset.read_labels(reference),
                                   label=query.reference_label)
        result = segmenter.segment(dataset.read_image(record), cell)
        truth = true_labels_of(dataset, query, labels)
        cellprob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
        predicted.append(ap50(truth, result.labels))
        true_type.append(ap50(truth, flows_to_masks(result.flows, cellprob)))
        same, target = result.probability > 0.5, truth > 0
        pixel_iou.append((same & target).sum() / max(1, (same | target).sum()))
    print(f"{len(predicted)} queries of {args.split}: AP@0.5 predicted {np.mean(predicted):.3f}, "
          f"with the true type {np.mean(true_type):.3f}; same-type map pixel IoU {np.mean(pixel_iou):.3f}")


if __name__ == "__main__":
    main()
