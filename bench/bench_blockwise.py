"""Blockwise prediction of large images on dask: seconds per megapixel and peak memory per worker, for 16, 64
and 256 MP images with 1 and 2 workers (processes of a dask.distributed LocalCluster, one thread each).

    pytest bench/bench_blockwise.py --benchmark-only -k "16mp" --benchmark-json=/tmp/blockwise-16.json
    PERCS_BENCH_CHECKPOINT=/path/best.pt pytest bench/bench_blockwise.py --benchmark-only -k "64mp and 2workers"
    python bench/bench_blockwise.py /tmp/blockwise-16.json      # the table of bench/README.md

The image is a mosaic of the Kc167 images of shared/data/cellpose_styles (400 x 400, 2-colour fluorescence,
16-bit), tiled with random offsets into a Zarr array of (H, W, 3) uint16 in 1024-pixel chunks, written chunk by
chunk (no process holds it whole); it is made once per size under $PERCS_BENCH_DIR (default /tmp/percs-bench).
The model: the checkpoint at $PERCS_BENCH_CHECKPOINT when set (a trained model: real cells, real backbone
cost); else a stand-in without a backbone whose cells are the image's bright nuclei (ThresholdModel of the
tests: the flows of connected components of each window), which times everything but the network: reading,
normalisation, window stitching, flows_to_masks, stitching blocks, writing the Zarr and TIFF. Blocks of
$PERCS_BENCH_BLOCK (default 2048) pixels; the reference is one of the Kc167 cells.

Each result's extra_info: megapixels, workers, s_per_mp, peak_rss_mib per worker (ru_maxrss of each worker
process, which starts fresh for every case) and of this process (the client), cells found, load average.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import data_dir  # noqa: E402

SIZES_MP = (16, 64, 256)
WORKERS = (1, 2)
CHUNK = 1024


def side(megapixels: int) -> int:
    """The side of a square image of about `megapixels` MP (16 -> 4096, 64 -> 8192, 256 -> 16384)."""
    return int(round(np.sqrt(megapixels * 2**20)))


def mosaic_zarr(megapixels: int) -> Path:
    """The benchmark image of this size (made once): Kc167 images tiled with random offsets, chunk by chunk."""
    import zarr

    from percs.data.io import read_image

    path = Path(os.environ.get("PERCS_BENCH_DIR", "/tmp/percs-bench")) / f"mosaic-{megapixels}mp.zarr"
    if (path / "zarr.json").exists():
        return path
    tiles = [read_image(p) for p in sorted((data_dir("cellpose_styles") / "Kc167").glob("*_img.png"))]
    size = side(megapixels)
    array = zarr.create_array(str(path), shape=(size, size, 3), chunks=(CHUNK, CHUNK, 3), dtype="uint16",
                              overwrite=True)
    rng = np.random.default_rng(megapixels)
    for top in range(0, size, CHUNK):
        band = np.zeros((min(CHUNK, size - top), size, 3), np.uint16)
        for left in range(0, size, 400):
            for y in range(0, band.shape[0], 400):
                tile = tiles[rng.integers(len(tiles))]
                piece = tile[: min(400, band.shape[0] - y), : min(400, size - left)]
                band[y : y + piece.shape[0], left : left + piece.shape[1]] = piece
        array[top : top + band.shape[0]] = band
    return path


def segmenter_and_reference():
    """(Segmenter, Reference): the checkpoint's model, or the ThresholdModel stand-in (see the docstring)."""
    from percs.data.io import read_image, read_label_file
    from percs.predict import PredictorConfig
    from percs.predict.api import Segmenter

    image_path = sorted((data_dir("cellpose_styles") / "Kc167").glob("*_img.png"))[0]
    image = read_image(image_path)
    labels = read_label_file(image_path.with_name(image_path.name.replace("_img", "_masks")))
    checkpoint = os.environ.get("PERCS_BENCH_CHECKPOINT")
    if checkpoint:
        segmenter = Segmenter.from_checkpoint(checkpoint, "cpu")
    else:
        from predict_helpers import ThresholdModel

        segmenter = Segmenter(ThresholdModel(), PredictorConfig())
    return segmenter, segmenter.reference(image, labels == np.unique(labels)[1])


def worker_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_setup(tests: str) -> None:
    """One torch thread per worker; the tests folder importable (the stand-in model is pickled by reference)."""
    import torch

    torch.set_num_threads(1)
    if tests not in sys.path:
        sys.path.insert(0, tests)


@pytest.mark.parametrize("workers", WORKERS, ids=[f"{w}workers" for w in WORKERS])
@pytest.mark.parametrize("megapixels", SIZES_MP, ids=[f"{mp}mp" for mp in SIZES_MP])
def test_blockwise(benchmark, tmp_path, megapixels, workers):
    from distributed import Client, LocalCluster

    from percs.predict.blockwise import BlockwiseConfig, segment_blockwise

    image = mosaic_zarr(megapixels)
    segmenter, reference = segmenter_and_reference()
    block = int(os.environ.get("PERCS_BENCH_BLOCK", "2048"))
    load_before = os.getloadavg()[0]
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        client.run(worker_setup, str(Path(__file__).resolve().parents[1] / "tests"))
        config = BlockwiseConfig(block_size=block, scheduler=client, progress=False)
        result = benchmark.pedantic(segment_blockwise, args=(segmenter, image, reference, tmp_path / "labels.zarr",
                                                             config), rounds=1, iterations=1)
        peaks = sorted(client.run(worker_peak_rss_mib).values())
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update({
        "megapixels": side(megapixels) ** 2 / 1e6, "workers": workers, "block": block,
        "model": os.environ.get("PERCS_BENCH_CHECKPOINT") or "ThresholdModel stand-in",
        "s_per_mp": seconds / (side(megapixels) ** 2 / 1e6), "peak_rss_mib_per_worker": peaks,
        "peak_rss_mib_client": worker_peak_rss_mib(), "cells": result.n_cells, "cut_cells": result.cut_cells,
        "load_before_after": [load_before, os.getloadavg()[0]],
    })
    assert result.n_cells > 0


def table(path: str) -> str:
    """The markdown table of a --benchmark-json file."""
    rows = ["| image | workers | s/MP | peak RSS per worker (MiB) | client peak RSS (MiB) | cells | load before / after |",
            "|---|---|---|---|---|---|---|"]
    for bench in json.loads(Path(path).read_text())["benchmarks"]:
        info = bench["extra_info"]
        peaks = " / ".join(f"{p:.0f}" for p in info["peak_rss_mib_per_worker"])
        load = " / ".join(f"{v:.1f}" for v in info["load_before_after"])
        rows.append(f"| {info['megapixels']:.1f} MP | {info['workers']} | {info['s_per_mp']:.2f} | {peaks} | "
                    f"{info['peak_rss_mib_client']:.0f} | {info['cells']} | {load} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(sys.argv[1]))
