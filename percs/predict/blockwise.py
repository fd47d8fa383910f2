"""Images larger than memory, segmented block by block on dask and stitched exactly (see `percs.predict.blocks`).

    segmenter = Segmenter.from_checkpoint("best.pt")
    reference = segmenter.reference(ref_image, ref_mask)          # or ReferenceRegion(source, mask, (y, x))
    result = segment_blockwise(segmenter, "slide.ome.zarr", reference, "out/slide_labels.zarr",
                               BlockwiseConfig(block_size=2048, scheduler="tcp://host:8786"))

Steps, each a set of dask tasks with a progress bar: (1) the normalisation ranges of the whole image, region by
region (`percs.predict.image_stats`); (2) each block's context is read, normalised with those ranges, segmented
by the Predictor and its own cells kept (`owned_cells`), written to `<labels>.blocks/<block>.npz`; (3) each core
of the Zarr labels (one chunk) is painted from its block and neighbours with global ids; (4) only when some cell
lost every pixel to another, the ids are closed up. The model and the reference embedding are sent to the
workers once. A killed run started again with the same settings reuses the blocks already in `<labels>.blocks`;
it is removed when the labels are complete. The labels are also written as a tiled TIFF when the image has at
most TIFF_MAX_PIXELS pixels. No process holds the whole image, the labels or the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from percs.data.io import read_npz
from percs.data.scale import shared_scale
from percs.predict.blocks import (Block, OwnedCells, assemble_core, block_grid, closing_lookup, global_ids,
                                  neighbours, owned_cells)
from percs.predict.dask_runner import DaskRunner
from percs.predict.image_stats import merge_statistics, ranges_from_statistics, region_counts
from percs.predict.source import ImageSource, open_image

TIFF_MAX_PIXELS = 1 << 28
MAX_SIZE_FRACTION = 0.4  # flows_to_masks' default, as a fraction of the whole image


@dataclass(frozen=True)
class BlockwiseConfig:
    """block_size: the side of a block's core and of a Zarr chunk of the labels (a multiple of 16). overlap:
    context added around each core; None: the predictor's window + 2 x the reference cell's diameter (the
    cells of a core are then whole, and their fields those of the whole image). workers: threads of dask's
    local scheduler (not used with a cluster). scheduler: None for dask's local scheduler, or a dask.distributed
    scheduler's address ("tcp://host:8786") or Client. tiff: also write `<labels>.tif`; None: when the image has
    at most TIFF_MAX_PIXELS pixels. restart: discard an unfinished run's blocks instead of resuming it."""

    block_size: int = 2048
    overlap: int | None = None
    workers: int = 1
    scheduler: object = None
    tiff: bool | None = None
    progress: bool = True
    restart: bool = False

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size % 16:
            raise ValueError(f"block_size must be a positive multiple of 16, got {self.block_size!r}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers!r}")


@dataclass(frozen=True)
class ReferenceRegion:
    """A reference cell inside a large image: mask (h, w) bool, the cell, whose top-left pixel lies at offset
    (y, x) of source. The backbone sees the reference window around it, normalised as that whole image."""

    source: ImageSource
    mask: np.ndarray
    offset: tuple[int, int]


@dataclass
class BlockwiseResult:
    """labels: the Zarr array's path, (H, W) int32, 0 background, cells 1..n_cells in raster order of their first
    pixels. tiff: the TIFF copy or None. cells: `percs.predict.files.cell_table` columns. resumed: blocks found
    done by an earlier run. cut_cells: cells that reached the edge of their block's context (a larger overlap
    would change them)."""

    labels: Path
    tiff: Path | None
    n_cells: int
    cells: dict[str, np.ndarray]
    n_blocks: int
    resumed: int
    cut_cells: int


@dataclass
class BlockInputs:
    """What every block task needs, sent to each worker once."""

    model: object
    predict: object
    embedding: object
    source: ImageSource
    ranges: dict
    min_cell_probability: float | None
    scratch: str
    labels: str
    references: tuple | None = None  # instance-level models: ([positive (vectors, descriptors)], [negative])
    scale: float = 1.0  # the references' (`percs.data.scale`): the network runs on each block resized by it


def segment_blockwise(segmenter, image, reference, labels_path: str | Path,
                      config: BlockwiseConfig = BlockwiseConfig(), *, positives=(), negatives=()) -> BlockwiseResult:
    """Segments `image` (an ImageSource, a path as `open_image` takes it, or an array) with the reference cell
    (a `Segmenter.reference`, a ReferenceRegion, or None for a generic model with `config.overlap` set) into
    the Zarr array labels_path, with the settings of config (its scheduler runs the tasks). positives,
    negatives: more positive and negative `Segmenter.reference`s, for a model with an instance-level decision.
    ValueError for a reference outside the image, a block size smaller than the overlap, several references
    for a model that takes one, an instance decision with a margin, or settings that differ from an unfinished
    run's; ImageStoreError for an unreadable store."""
    source = image if isinstance(image, ImageSource) else (
        open_image(image) if isinstance(image, (str, Path)) else ImageSource.from_array(image))
    predict = segmenter.predictor.config
    if (positives or negatives) and segmenter.instance is None:
        raise ValueError("several references or negatives need a model with an instance-level decision")
    if segmenter.instance is not None and segmenter.instance.margin is not None:
        raise ValueError("the instance decision's margin (keep the cells near the image's best match) needs the "
                         "whole image; block by block it would keep cells in every block: set it to None")
    mask = None if reference is None else reference.mask
    scale = shared_scale(_scale_of(segmenter, r) for r in (reference, *positives) if r is not None)
    overlap = config.overlap if config.overlap is not None else default_overlap(mask, predict.window, scale)
    grid = block_grid(source.shape, config.block_size, overlap, predict.stride)
    labels_path = Path(labels_path)
    scratch = Path(str(labels_path) + ".blocks")
    blocks = [block for row in grid for block in row]
    with DaskRunner(config.scheduler, config.workers, config.progress) as runner:
        ranges = _ranges(runner, source, blocks)
        embedding = _embedding(segmenter, reference, ranges)
        references = None
        if segmenter.instance is not None:  # the references' vectors, not an embedding: every block is scored
            def vectors(refs):
                return [tuple(t.cpu() for t in _embedding(segmenter, r, ranges)) for r in refs]

            references, embedding = (vectors([reference, *positives]), vectors(negatives)), None
        else:
            embedding = None if embedding is None else embedding.cpu()
        settings = _settings(segmenter, source, references or embedding, config.block_size, overlap, ranges)
        settings["scale"] = scale
        resumed = _prepare_scratch(scratch, settings, config.restart)
        inputs = BlockInputs(segmenter.model, predict, embedding, source, ranges, segmenter.min_cell_probability,
                             str(scratch), str(labels_path), references, scale)
        shared = runner.share(inputs)
        summaries = runner.map(predict_block, blocks, shared, desc="blocks")
        lookups = global_ids([s.anchors for s in summaries], source.shape[1])
        _create_labels(labels_path, source.shape, config.block_size)
        cells = _stitch(runner, grid, lookups, shared)
    cells["score"] = _scores(summaries, lookups)[cells.pop("previous_id") - 1]
    tiff = None
    if config.tiff or (config.tiff is None and source.shape[0] * source.shape[1] <= TIFF_MAX_PIXELS):
        tiff = labels_path.with_suffix(".tif")
        write_labels_tiff(labels_path, tiff, config.block_size)
    shutil.rmtree(scratch)
    return BlockwiseResult(labels_path, tiff, len(cells["id"]), cells, len(blocks), resumed,
                           int(sum(int(s.cut.sum()) for s in summaries)))


def _stitch(runner: DaskRunner, grid: list[list[Block]], lookups: list[np.ndarray], shared) -> dict[str, np.ndarray]:
    """Phases 3 and 4: the labels' cores painted, then their ids closed up if a cell vanished. Returns the cell
    table's id, area and centroid columns, and each cell's id before closing (previous_id)."""
    width = len(grid[0])
    blocks = [block for row in grid for block in row]
    jobs = [(block, [(n.name, lookups[n.index[0] * width + n.index[1]]) for n in neighbours(grid, block)])
            for block in blocks]
    chunks = runner.map(stitch_core, jobs, shared, desc="stitching")
    n_cells = sum(len(lookup) - 1 for lookup in lookups)
    areas = np.zeros(n_cells + 1, np.int64)
    sums = np.zeros((n_cells + 1, 2))
    for ids, counts, chunk_sums in chunks:
        areas[ids] += counts
        sums[ids] += chunk_sums
    present = np.flatnonzero(areas[1:]) + 1
    closing = closing_lookup(present, n_cells)
    if closing is not None:
        runner.map(close_ids, [(block, closing) for block in blocks], shared, desc="closing ids")
    return {"id": np.arange(1, present.size + 1), "area": areas[present],
            "centroid_y": sums[present, 0] / areas[present], "centroid_x": sums[present, 1] / areas[present],
            "previous_id": present}


def _scores(summaries: list[OwnedCells], lookups: list[np.ndarray]) -> np.ndarray:
    """(N,) float32: the score of each global id 1..N (entry id - 1)."""
    scores = np.zeros(sum(len(lookup) - 1 for lookup in lookups), np.float32)
    for summary, lookup in zip(summaries, lookups):
        scores[lookup[1:] - 1] = summary.scores
    return scores


def default_overlap(reference_mask: np.ndarray | None, window: int, scale: float = 1.0) -> int:
    """The predictor's window (in the image's pixels: window / scale, the network running on blocks resized by
    scale) + 2 x the reference cell's diameter (the longer side of the bounding box of reference_mask, (H, W)
    bool)."""
    if reference_mask is None:
        raise ValueError("overlap is needed without a reference cell (BlockwiseConfig.overlap): about the window "
                         "plus twice the largest cell's diameter, in pixels")
    rows, cols = np.nonzero(reference_mask)
    return int(math.ceil(window / scale) + 2 * max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def predict_block(block: Block, inputs: BlockInputs) -> OwnedCells:
    """Phase 2 of `segment_blockwise` for one block: its owned cells, read from its file when an earlier run
    wrote it, else segmented and written (atomically). The returned OwnedCells carries no labels."""
    path = Path(inputs.scratch) / f"{block.name}.npz"
    if not path.exists():
        import torch

        from percs.data.normalize import normalize_with_ranges
        from percs.flows import flows_to_masks
        from percs.predict.predictor import Predictor

        cy0, cy1, cx0, cx1 = block.context
        image = torch.from_numpy(normalize_with_ranges(inputs.source.read(cy0, cy1, cx0, cx1), inputs.ranges))
        predictor = Predictor(inputs.model, inputs.predict)
        flows, logits = predictor.fields(image, inputs.embedding, inputs.scale)
        height, width = inputs.source.shape
        config = inputs.predict
        fraction = min(1.0, MAX_SIZE_FRACTION * height * width / ((cy1 - cy0) * (cx1 - cx0)))
        labels = flows_to_masks(flows, logits, cellprob_threshold=config.cellprob_threshold,
                                flow_threshold=config.flow_threshold, niter=config.niter, min_size=config.min_size,
                                max_size_fraction=fraction)
        if inputs.references is None:
            labels, probability = labels.cpu().numpy(), torch.sigmoid(logits).cpu().numpy()
        else:  # the instance-level decision on the block's cells (context as large as the block's)
            from percs.predict.references import decided_labels

            labels, probability = decided_labels(inputs.model.instance, image, labels, *inputs.references,
                                                 inputs.min_cell_probability)
        owned = owned_cells(labels, probability, block, inputs.source.shape, inputs.min_cell_probability)
        partial = path.with_suffix(".partial.npz")
        np.savez_compressed(partial, labels=owned.labels, origin=np.asarray(owned.origin), anchors=owned.anchors,
                            scores=owned.scores, cut=owned.cut)
        partial.replace(path)
    saved = read_npz(path, ("origin", "anchors", "scores", "cut"))
    return OwnedCells(np.zeros((0, 0), np.int32), tuple(saved["origin"]), saved["anchors"], saved["scores"],
                      saved["cut"])


def stitch_core(job: tuple[Block, list[tuple[str, np.ndarray]]], inputs: BlockInputs):
    """Phase 3 for one core: painted from its block and neighbours (name, local -> global lookup), written to
    the labels' chunk. Returns (ids present, their pixel counts, their (y, x) coordinate sums)."""
    import zarr

    block, parts = job
    loaded = []
    for name, lookup in parts:
        saved = read_npz(Path(inputs.scratch) / f"{name}.npz", ("labels", "origin"))
        loaded.append((saved["labels"], tuple(saved["origin"]), lookup))
    core = assemble_core(block.core, loaded)
    y0, y1, x0, x1 = block.core
    zarr.open_array(inputs.labels, mode="r+")[y0:y1, x0:x1] = core
    return _core_statistics(core, y0, x0)


def close_ids(job: tuple[Block, np.ndarray], inputs: BlockInputs) -> None:
    """Phase 4 for one core: its ids mapped through the closing lookup (order kept, ids 1..N consecutive)."""
    import zarr

    block, lookup = job
    y0, y1, x0, x1 = block.core
    labels = zarr.open_array(inputs.labels, mode="r+")
    labels[y0:y1, x0:x1] = lookup[labels[y0:y1, x0:x1]]


def _core_statistics(core: np.ndarray, y0: int, x0: int):
    flat = core.ravel()
    where = np.flatnonzero(flat)
    ids, inverse, counts = np.unique(flat[where], return_inverse=True, return_counts=True)
    rows, cols = np.divmod(where, core.shape[1])
    sums = np.zeros((ids.size, 2))
    np.add.at(sums, inverse, np.stack((rows + y0, cols + x0), 1).astype(np.float64))
    return ids, counts, sums


def _region_task(block: Block, source: ImageSource):
    y0, y1, x0, x1 = block.core
    from percs.data.normalize import used_channels

    return region_counts(source.read(y0, y1, x0, x1), (y0, x0), source.shape,
                         used_channels(max(source.channels, 1)))


def _ranges(runner: DaskRunner, source: ImageSource, blocks: list[Block]) -> dict:
    parts = runner.map(_region_task, blocks, runner.share(source), desc="image statistics")
    return ranges_from_statistics(merge_statistics(parts))


def _scale_of(segmenter, reference) -> float:
    """The scale a Reference carries, or the one a ReferenceRegion's mask sets."""
    if isinstance(reference, ReferenceRegion):
        return segmenter.predictor.scale_of(np.asarray(reference.mask, bool))
    return reference.scale


def _embedding(segmenter, reference, ranges):
    """The reference's embedding, or for an instance-level model its (vectors, descriptors)."""
    if not isinstance(reference, ReferenceRegion):
        if reference is None:
            return None
        if segmenter.instance is not None and reference.vectors is None:
            raise ValueError("reference was made by a model without an instance scorer: make it with this segmenter")
        return reference.vectors if segmenter.instance is not None else reference.embedding
    return reference_region_embedding(segmenter, reference, ranges)


def reference_region_embedding(segmenter, region: ReferenceRegion, ranges: dict | None = None):
    """(C,) embedding of a reference cell inside a large image, (vectors, descriptors) for a model with an
    instance-level decision, or None for a generic model. ValueError when the mask does not lie inside the
    image. ranges: the image's normalisation (None: computed here)."""
    from percs.data.normalize import normalize_with_ranges

    mask = np.asarray(region.mask, bool)
    (y, x), (height, width) = region.offset, region.source.shape
    if mask.ndim != 2 or not mask.any():
        raise ValueError("reference mask must be a non-empty (h, w) mask")
    if y < 0 or x < 0 or y + mask.shape[0] > height or x + mask.shape[1] > width:
        raise ValueError(f"the reference cell is outside the image: its {mask.shape[0]} x {mask.shape[1]} mask at "
                         f"offset ({y}, {x}) does not fit in the {height} x {width} image")
    if segmenter.generic:
        return None
    if segmenter.instance is not None and segmenter.instance.embedding != "window":
        raise ValueError("an instance scorer on image-wide patch features needs the reference image read whole")
    if ranges is None:
        with DaskRunner(progress=False) as runner:
            grid = block_grid(region.source.shape, 2048, 0, 1)
            ranges = _ranges(runner, region.source, [b for row in grid for b in row])
    # the reference window, in this image's pixels before embed_reference resizes the crop by the scale
    side = math.ceil(segmenter.predictor.config.reference_window / segmenter.predictor.scale_of(mask))
    rows, cols = np.nonzero(mask)
    y0, x0 = max(0, y + rows.min() - side), max(0, x + cols.min() - side)
    y1, x1 = min(height, y + rows.max() + 1 + side), min(width, x + cols.max() + 1 + side)
    image = normalize_with_ranges(region.source.read(y0, y1, x0, x1), ranges)
    crop_mask = np.zeros((y1 - y0, x1 - x0), bool)
    crop_mask[y - y0 : y - y0 + mask.shape[0], x - x0 : x - x0 + mask.shape[1]] = mask
    import torch

    if segmenter.instance is not None:  # each cell is embedded from its own window: a crop around it suffices
        return segmenter.instance.reference(torch.from_numpy(image), torch.from_numpy(crop_mask))
    return segmenter.predictor.embed_reference(torch.from_numpy(image), crop_mask)


def _settings(segmenter, source: ImageSource, reference_state, block_size: int, overlap: int, ranges: dict) -> dict:
    """Everything a block's result depends on: a run resumes only the blocks of a run with equal settings.
    reference_state: the reference embedding (C,), or ([positive (vectors, descriptors)], [negative ...]) of an
    instance-level model, or None."""
    digest = hashlib.sha256()
    for tensor in segmenter.model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if reference_state is None:
        embedded = ""
    elif isinstance(reference_state, tuple):
        state = hashlib.sha256()
        for group in reference_state:
            state.update(f"{len(group)} references|".encode())
            for tensor in (t for pair in group for t in pair):
                state.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        embedded = state.hexdigest()
    else:
        embedded = hashlib.sha256(reference_state.detach().cpu().numpy().tobytes()).hexdigest()
    return {"image": source.path, "component": source.component, "shape": list(source.shape),
            "dtype": str(source.dtype), "block_size": block_size, "overlap": overlap,
            "predict": dataclasses.asdict(segmenter.predictor.config), "model_sha256": digest.hexdigest(),
            "embedding_sha256": embedded, "min_cell_probability": segmenter.min_cell_probability,
            "ranges": {str(c): [float(lo), float(hi)] for c, (lo, hi) in ranges.items()}}


def _prepare_scratch(scratch: Path, settings: dict, restart: bool) -> int:
    """The number of blocks an unfinished run with equal settings left done (0 for a new run)."""
    manifest = scratch / "settings.json"
    if scratch.exists() and not restart:
        try:
            earlier = json.loads(manifest.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != settings:
            raise ValueError(f"{scratch} holds the blocks of an unfinished run with other settings (image, model, "
                             "reference, block size or overlap): remove it, or restart the run (--overwrite)")
        return len(list(scratch.glob("block_*_*[0-9].npz")))
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    manifest.write_text(json.dumps(settings, indent=1))
    return 0


def _create_labels(path: Path, shape: tuple[int, int], block_size: int) -> None:
    import zarr

    zarr.create_array(str(path), shape=shape, chunks=(block_size, block_size), dtype="int32", fill_value=0,
                      overwrite=True)


def write_labels_tiff(labels_path: str | Path, tiff_path: str | Path, tile: int) -> None:
    """The Zarr labels copied to a tiled, zlib-compressed (Big)TIFF, one tile of tile x tile pixels at a time
    (tile: a multiple of 16)."""
    import tifffile
    import zarr

    labels = zarr.open_array(str(labels_path), mode="r")
    height, width = labels.shape

    def tiles():
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                piece = np.zeros((tile, tile), np.int32)
                part = labels[y : y + tile, x : x + tile]
                piece[: part.shape[0], : part.shape[1]] = part
                yield piece

    tifffile.imwrite(tiff_path, tiles(), shape=(height, width), dtype=np.int32, tile=(tile, tile),
                     compression="zlib", bigtiff=height * width * 4 > (1 << 31))
