"""The README's napari screenshot, from a real run of the plugin: the sample image, one clicked cell, Run.

    percs demo --out percs-demo      # the demo's model, trained on synthetic cells (3.4 min on 2 cores)
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/napari_screenshot.py percs-demo/run/best.pt \\
        docs/images/napari.png

Needs `pip install ".[napari]"` and a display (Xvfb above). Opens File > Open Sample > percs > Synthetic cells
and the widget as a user does, adds a point on the sample's most central cell of SAMPLE_TYPES[CLICKED_TYPE] (the
synthetic image's own type record), runs the widget, waits for its worker, and saves the whole window (256 colours).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CLICKED_TYPE = 0  # index in SAMPLE_TYPES of the type of the clicked cell


def central_cell(labels: np.ndarray, types: tuple[str, ...], cell_type: str) -> int:
    """The label of the cell of `cell_type` whose centroid is nearest the image's centre."""
    centre = (np.asarray(labels.shape) - 1) / 2
    cells = [cell for cell in range(1, len(types) + 1) if types[cell - 1] == cell_type]
    return min(cells, key=lambda cell: np.linalg.norm(np.argwhere(labels == cell).mean(0) - centre))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a percs checkpoint (best.pt)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--cell", type=int, default=None, help="label of the clicked cell (default: the most "
                                                                "central cell of the clicked type)")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from percs.data.synthetic import synthetic_image
    from percs.napari.sample_data import SAMPLE_SHAPE, SAMPLE_TYPES, synthetic_cells
    from percs.napari.widget import CELLS_LAYER

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)
    viewer.open_sample("percs", "synthetic_cells")
    _, widget = viewer.window.add_plugin_dock_widget("percs", "Segment cells of one type")
    truth = synthetic_image(SAMPLE_SHAPE, SAMPLE_TYPES, seed=1)
    assert np.array_equal(truth.labels, synthetic_cells()[1][0])
    cell = args.cell or central_cell(truth.labels, truth.instance_types, SAMPLE_TYPES[CLICKED_TYPE])
    y, x = np.argwhere(truth.labels == cell).mean(0)
    widget.checkpoint.value = args.checkpoint
    widget.click_cell().add([y, x])
    widget.labels.value = None
    widget.run()
    deadline = time.time() + 600
    while widget.running and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.layers.selection.active = viewer.layers[CELLS_LAYER]
    viewer.layers["percs reference point"].visible = False
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    QApplication.processEvents()
    found = viewer.layers[CELLS_LAYER].data
    types = np.asarray(truth.instance_types)
    hit = np.unique(truth.labels[(found > 0) & (truth.labels > 0)])
    print(f"clicked cell {cell} ({truth.instance_types[cell - 1]}); {widget.status.value}; found cells cover "
          f"true cells of types {dict(zip(*np.unique(types[hit - 1], return_counts=True)))}")
    picture = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    from PIL import Image

    small = Image.fromarray(picture[..., :3]).quantize(256, method=Image.Quantize.FASTOCTREE)  # keeps the magenta
    small.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
