"""The README's picture: one benchmark query, the reference cell in its own image, the cells a model found.

Runs a percs checkpoint through `percs.api.Segmenter` on one fixed query of a built benchmark and writes one
PNG: left, the reference image around the reference cell (magenta, enlarged); right, the query image with the
cells found (yellow), over a legend strip.

    python scripts/readme_figure.py --data /tmp/percs-mini --split test --query 3 \
        --checkpoint runs/instance.pt --out docs/images/example.png
"""

from __future__ import annotations

import argparse

import numpy as np

from percs.overlay import FOUND_LEGEND, add_legend, draw_overlay, save_png


def reference_panel(image: np.ndarray, mask: np.ndarray, height: int, side: int = 96) -> np.ndarray:
    """The side x side window of image around the reference mask, outlined, enlarged to `height` rows."""
    rows, cols = np.nonzero(mask)
    cy, cx = int(rows.mean()), int(cols.mean())
    top = int(np.clip(cy - side // 2, 0, max(0, image.shape[0] - side)))
    left = int(np.clip(cx - side // 2, 0, max(0, image.shape[1] - side)))
    window = (slice(top, top + side), slice(left, left + side))
    rgb = draw_overlay(image[window], np.zeros(mask[window].shape, np.int32), reference_mask=mask[window])
    scale = max(1, height // rgb.shape[0])
    return np.kron(rgb, np.ones((scale, scale, 1), np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--query", type=int, default=0, help="index among the split's queries")
    parser.add_argument("--checkpoint", required=True, help="a percs model file")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from percs.api import Segmenter
    from percs.data.format import load_dataset

    dataset = load_dataset(args.data)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, "cpu")
    query = [q for q in dataset.queries if dataset.record(q.image).split == args.split][args.query]
    record, reference = dataset.record(query.image), dataset.record(query.reference_image)
    image, reference_image = dataset.read_image(record), dataset.read_image(reference)
    reference_mask = dataset.read_labels(reference) == query.reference_label
    labels = segmenter.segment(image, segmenter.reference(reference_image, reference_mask)).labels
    found = draw_overlay(image, labels)
    left = reference_panel(reference_image, reference_mask, found.shape[0] // 2)
    gap = np.full((found.shape[0], 8, 3), 255, np.uint8)
    column = np.full((found.shape[0], left.shape[1], 3), 255, np.uint8)
    column[: left.shape[0]] = left
    picture = add_legend(np.concatenate((column, gap, found), 1), FOUND_LEGEND)
    save_png(args.out, picture)
    print(f"{args.out}: query {args.query} of {args.split} ({query.image}, target {query.target_type}), "
          f"{int(labels.max())} cells found")


if __name__ == "__main__":
    main()
