"""A mosaic of real cells for blockwise prediction, and a dask LocalCluster of two workers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_dir

from percs.data.io import read_image, read_label_file
from percs.predict import PredictorConfig

BLOCK = 512
MOSAIC = 2048  # 4 x 4 blocks of 512: three block borders cross each axis
TILE = 256  # mosaic tiles centred on a real cell; tile centres at multiples of TILE, so on every block border
PREDICT = PredictorConfig(window=112, stride=84, niter=100)


def mosaic_of_real_cells(size: int = MOSAIC, seed: int = 0):
    """(image (size, size, 3) uint16, reference image, reference mask): TILE x TILE crops of the Kc167 images of
    shared/data/cellpose_styles, each centred on one of its cells and pasted so that its centre falls at a
    multiple of TILE: a cell on every block corner and on every block border in between."""
    folder = data_dir("cellpose_styles") / "Kc167"
    sources = [(read_image(p), read_label_file(p.with_name(p.name.replace("_img", "_masks"))))
               for p in sorted(folder.glob("*_img.png"))]
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size + TILE, size + TILE, 3), np.uint16)
    half = TILE // 2
    for top in range(0, size + 1, TILE):
        for left in range(0, size + 1, TILE):
            image, labels = sources[rng.integers(len(sources))]
            centres = [np.argwhere(labels == cell).mean(0).round().astype(int) for cell in np.unique(labels)[1:]]
            inside = [c for c in centres if (half <= c).all() and (c < np.array(labels.shape) - half).all()]
            cy, cx = inside[rng.integers(len(inside))]
            canvas[top : top + TILE, left : left + TILE] = image[cy - half : cy + half, cx - half : cx + half]
    image, labels = sources[0]
    mask = labels == np.unique(labels)[1]
    return canvas[half : half + size, half : half + size], image, mask


@pytest.fixture(scope="module")
def mosaic():
    return mosaic_of_real_cells()


@pytest.fixture(scope="module")
def cluster():
    """A dask.distributed LocalCluster of two single-threaded workers in this process."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        with Client(local) as client:
            yield client
