"""The percs napari plugin: click one cell, see every cell of its type (extra `percs[napari]`).

napari finds it through the npe2 manifest `napari.yaml` (entry point `napari.manifest` in pyproject.toml):

- `percs.napari.widget.SegmentWidget`: the dock widget (Plugins > Segment cells of one type).
- `percs.napari.sample_data.synthetic_cells`: File > Open Sample > percs > Synthetic cells.

The widget's logic lives in modules that import neither Qt nor napari, so it is tested without a display:
`percs.napari.reference` (the reference cell from a click, a painted mask or a labels layer) and
`percs.napari.run` (checking the user's choices, the run's steps with progress, results as layer data).
"""
