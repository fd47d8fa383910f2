"""File > Open Sample > percs > Synthetic cells: an image of two cell types, to try the widget with nothing else
but the demo's model (`percs demo --out DIR` writes DIR/run/best.pt, trained on the same kind of cells)."""

from __future__ import annotations

from percs.data.synthetic import synthetic_image

SAMPLE_SHAPE = (256, 256)
SAMPLE_TYPES = ("ring", "blob")


def synthetic_cells(seed: int = 1) -> list[tuple]:
    """napari layer data: the image ((256, 256, 3) uint8 bright-field: ring cells, with a dark rim, and evenly
    dark blob cells, from `percs.data.synthetic`) and its true cells (a labels layer, hidden: pick a cell in
    it, or compare)."""
    sample = synthetic_image(SAMPLE_SHAPE, SAMPLE_TYPES, seed=seed)
    return [
        (sample.image, {"name": "synthetic cells"}, "image"),
        (sample.labels, {"name": "synthetic cells: true cells", "visible": False, "opacity": 0.4}, "labels"),
    ]
