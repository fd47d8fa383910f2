"""Datasets for personalized cell segmentation: the on-disk format, importers, normalisation, synthetic data.

- `percs.data.format`: `Dataset`, `ImageRecord`, `Query`, `DatasetWriter`, `load_dataset` (docs/dataset_format.md);
- `percs.data.importers` / `percs.data.pannuke`: cellpose, folder, typemap and PanNuke layouts to that format
  (options and the skip report in `percs.data.importing`, stacks and channels in `percs.data.stacks`);
- `percs.data.normalize`: `normalize_image`, the one image normalisation of the model's input;
- `percs.data.synthetic`: synthetic images of five cell types, written in the same format;
- `percs.data.build` (with split, mixing, paste, queries, stats): benchmarks with type splits, fixed mixed-type
  images and fixed queries (`percs data build` / `percs data stats`), and train-only sources; `percs.data.compare`
  checks that two builds evaluate the same way;
- `percs.data.dataset`: `TrainDataset`, the torch training Dataset (crops, dynamic pasting, references).
"""

import importlib

_EXPORTS = {
    "percs.data.format": ("CellType", "Dataset", "DatasetError", "DatasetWriter", "ImageRecord", "Query",
                          "load_dataset", "write_dataset"),
    "percs.data.io": ("DataFileError",),
    "percs.data.normalize": ("normalize_image",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    # Lazy, so that building the `percs data` parser imports neither NumPy nor fastremap.
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'percs.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


__all__ = ["CellType", "DataFileError", "Dataset", "DatasetError", "DatasetWriter", "ImageRecord", "Query",
           "load_dataset", "normalize_image", "write_dataset"]
