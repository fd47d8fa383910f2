"""How well `percs train-scorer --objective types` classifiers read the type of one cell (research script).

A reference is one cell, and the type classifier reads its type from it as it reads any cell's. So the reading
can be measured on every true cell of a split, not only on its few reference cells (consep val has 93 queries
but 9 distinct reference nuclei, too few to rank classifiers). For each scorer file, every true cell of the
split's images is embedded as the instance decision embeds it (the scorer's layers, windows and context window),
in the four flips (`percs.model.instance.FLIP_VIEWS`), and read from its first view (one view) and from its
vectors averaged over the four (`--cell-flips`). Per scorer and reading: the share of cells whose most probable
type is theirs and the mean log-loss of their type, with 95% intervals from 1000 resamplings of images.

    python scripts/type_reading.py --data /tmp/percs-consep --split val --backbone-weights $W \\
        --scorer runs/consep-types.pt runs/consep-types-flips.pt --cache /tmp/cues/consep-val-flips.pt
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch


def interval(per_image: list[dict], key: str, draws: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(pooled value of key per cell, 2.5th and 97.5th percentiles over resamplings of images)."""
    values = np.array([i[key] for i in per_image], float)
    cells = np.array([i["cells"] for i in per_image], float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), (draws, len(values)))
    pooled = values[picks].sum(1) / cells[picks].sum(1)
    return float(values.sum() / cells.sum()), float(np.percentile(pooled, 2.5)), float(np.percentile(pooled, 97.5))


def main() -> None:
    from percs.data.format import load_dataset
    from percs.model.backbone_weights import load_backbone
    from percs.model.instance import FLIP_VIEWS
    from percs.train.scorer import ScorerTraining, collect_type_cells, load_scorer, type_reading

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a built benchmark (percs data build)")
    parser.add_argument("--split", default="val", help="whose true cells are read (default val)")
    parser.add_argument("--backbone-weights", required=True, help="the DINOv2 weights the scorers were fitted on")
    parser.add_argument("--scorer", nargs="+", required=True, help="scorer files of --objective types")
    parser.add_argument("--cache", help="a .pt file of the split's embedded cells: read when it exists, else written")
    args = parser.parse_args()

    scorers = [(path, *load_scorer(path)) for path in args.scorer]
    known = {f.name for f in fields(ScorerTraining)}
    embedding = ("layers", "embedding", "window_size", "context", "context_window")
    first = scorers[0][2]["settings"]
    for path, _, record in scorers:
        if record["settings"].get("objective") != "types":
            parser.error(f"--scorer {path} is not a type classifier (train-scorer --objective types)")
        if any(record["settings"].get(k) != first.get(k) for k in embedding):
            parser.error(f"--scorer {path} embeds cells otherwise than {scorers[0][0]} ({embedding})")
    settings = ScorerTraining(**{k: v for k, v in first.items() if k in known - {"layers", "cell_flips"}},
                              layers=tuple(first["layers"]), cell_flips=True)
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        images = torch.load(cache, weights_only=True)
    else:
        backbone = load_backbone(scorers[0][2]["backbone"], args.backbone_weights)
        images = collect_type_cells(load_dataset(args.data), backbone, settings, args.split)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(images, cache)
    views = len(FLIP_VIEWS)
    if any(image.get("views") != views for image in images):
        parser.error(f"--cache {cache} does not hold the four flips of each cell: give another file")
    print(f"{args.data} {args.split}: {sum(len(i['types']) // views for i in images)} true cells, {len(images)} images")
    print("| scorer | reading | cells right | log-loss |\n|---|---|---|---|")
    for path, scorer, record in scorers:
        for mean_views in (False, True):
            per_image = type_reading(scorer, record["classes"], images, mean_views)
            right, loss = interval(per_image, "right"), interval(per_image, "log_loss")
            print(f"| {path} | {'4 flips averaged' if mean_views else 'one view'} | "
                  f"{right[0]:.3f} [{right[1]:.3f}, {right[2]:.3f}] | {loss[0]:.3f} [{loss[1]:.3f}, {loss[2]:.3f}] |")


if __name__ == "__main__":
    main()
