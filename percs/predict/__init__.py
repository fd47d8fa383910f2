"""Prediction: from a trained model and a reference cell to label images, for images in memory, image files
and images larger than memory.

- `percs.predict.predictor`: `Predictor` (sliding windows, stitched fields, flows -> masks), `PredictorConfig`,
  `Prediction`, and the window helpers;
- `percs.predict.api`: `Segmenter` (`percs.api` is the same module), `load_model`, `Reference`,
  `SegmentationResult`, the input checks;
- `percs.predict.files`: image files in, labels / overlays / cell tables out (`percs.predict_files` is the same
  module);
- `percs.predict.cli`: the `percs predict` parser (`percs.predict_cli` is the same module);
- `percs.predict.blockwise`: images larger than memory, block by block on dask (`segment_blockwise`,
  `BlockwiseConfig`, `ReferenceRegion`), with `blocks` (grid, exact stitching), `source` (lazy Zarr / TIFF
  reading), `image_stats` (whole-image normalisation from histograms), `dask_runner` and `large_images` (the
  command line's large images); docs/large_images.md.

The names of `percs.predict.predictor` and the blockwise entry points are importable from `percs.predict`
itself, lazily, so that building the `percs predict` parser (in `percs.predict.cli`) imports no torch.
"""

import importlib

_EXPORTS = {
    "percs.predict.predictor": ("Prediction", "Predictor", "PredictorConfig", "as_input_image", "cell_mean",
                                "padded_size", "sliding_windows", "window_batches", "window_starts"),
    "percs.predict.blockwise": ("BlockwiseConfig", "BlockwiseResult", "ReferenceRegion", "segment_blockwise"),
    "percs.predict.source": ("ImageSource", "open_image"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'percs.predict' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


__all__ = sorted(_MODULE_OF)
