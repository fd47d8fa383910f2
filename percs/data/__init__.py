"""Datasets for personalized cell segmentation: the on-disk format, importers, normalisation, synthetic data.

- `percs.data.format`: `Dataset`, `ImageRecord`, `Query`, `DatasetWriter`, `load_dataset` (docs/dataset_format.md);
- `percs.data.importers` / `percs.data.pannuke`: cellpose, folder, typemap and PanNuke layouts to that format;
- `percs.data.normalize`: `normalize_image`, the one image normalisation of the model's input;
- `percs.data.synthetic`: synthetic images of five cell types, written in the same format;
- `percs.data.build` (with split, mixing, paste, queries, stats): benchmarks with type splits, fixed mixed-type
  images and fixed queries (`percs data build` / `percs data stats`);
- `percs.data.dataset`: `TrainDataset`, the torch training Dataset (crops, dynamic pasting, references).
"""

from percs.data.format import (CellType, Dataset, DatasetError, DatasetWriter, ImageRecord, Query, load_dataset,
                               write_dataset)
from percs.data.io import DataFileError
from percs.data.normalize import normalize_image

__all__ = ["CellType", "DataFileError", "Dataset", "DatasetError", "DatasetWriter", "ImageRecord", "Query",
           "load_dataset", "normalize_image", "write_dataset"]
