"""`percs predict` on large images: an OME-Zarr store and a JPEG-tiled TIFF of real cells, run on a dask
LocalCluster of two workers; a reference inside the large image; resuming; every input error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from blockwise_helpers import BLOCK, PREDICT, cluster, mosaic  # noqa: F401  (fixtures)
from PIL import Image
from predict_helpers import ThresholdModel, checkpoint_config, write_tiny_checkpoint

import percs.api
from percs.cli import main
from percs.metrics import evaluate
from percs.predict.api import Segmenter
from percs.predict.source import ImageSource, ImageStoreError, open_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def threshold_model(monkeypatch, tmp_path):
    """`load_model` replaced by ThresholdModel with the mosaic tests' predictor settings (ck.pt is never read)."""
    (tmp_path / "ck.pt").write_bytes(b"")
    config = checkpoint_config(tmp_path, window=PREDICT.window, stride=PREDICT.stride, niter=PREDICT.niter)
    monkeypatch.setattr(percs.api, "load_model",
                        lambda checkpoint, device="auto", backbone_weights=None: (ThresholdModel(), config))
    return Segmenter(ThresholdModel(), config.predict)


def write_ome_zarr(path, image: np.ndarray, chunk: int = 256) -> None:
    """image (H, W, C) as an OME-Zarr 0.5 image: level 0 (C, H, W) in chunks of chunk x chunk pixels."""
    group = zarr.open_group(str(path), mode="w")
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]}
    level = group.create_array("0", shape=(image.shape[2],) + image.shape[:2], chunks=(1, chunk, chunk),
                               dtype=image.dtype)
    level[:] = np.moveaxis(image, -1, 0)


def write_inputs(folder, mosaic) -> None:
    image, reference_image, reference_mask = mosaic
    write_ome_zarr(folder / "mosaic.ome.zarr", image)
    tifffile.imwrite(folder / "slide.tif", (image >> 8).astype(np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb")
    tifffile.imwrite(folder / "ref.tif", reference_image)
    Image.fromarray(reference_mask.astype(np.uint8) * 255).save(folder / "mask.png")


def run_predict(tmp_path, images, *arguments, reference="ref.tif", mask="mask.png"):
    argv = ["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / reference),
            "--reference-mask", str(tmp_path / mask), "--out", str(tmp_path / "out"), "--no-progress",
            "--block-size", str(BLOCK), *arguments, *[str(tmp_path / p) for p in images]]
    return main(argv)


def test_images_are_read_lazily_as_stored(mosaic, tmp_path):
    write_inputs(tmp_path, mosaic)
    image = mosaic[0]
    zarr_source = open_image(tmp_path / "mosaic.ome.zarr")
    assert (zarr_source.axes, zarr_source.shape, zarr_source.channels) == ("cyx", image.shape[:2], 3)
    np.testing.assert_array_equal(zarr_source.read(300, 700, 1000, 1111), image[300:700, 1000:1111])
    tiff_source = open_image(tmp_path / "slide.tif")
    assert tiff_source.axes == "yxc" and tiff_source.dtype == np.uint8
    whole = tifffile.imread(tmp_path / "slide.tif")  # JPEG tiles, decoded by imagecodecs either way
    np.testing.assert_array_equal(tiff_source.read(250, 780, 0, 2048), whole[250:780])
    assert np.abs(whole.astype(int) - (image >> 8)).mean() < 3  # lossy, but the same picture
    import pickle

    copy = pickle.loads(pickle.dumps(tiff_source))
    assert copy.array is None and np.array_equal(copy.read(0, 16, 0, 16), whole[:16, :16])


def test_unreadable_stores_are_named(tmp_path):
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(ImageStoreError, match="broken.zarr: cannot be read"):
        open_image(tmp_path / "broken.zarr")
    zarr.create_array(str(tmp_path / "stack.zarr"), shape=(3, 5, 40, 40), dtype="uint8")
    with pytest.raises(ImageStoreError, match="stack.zarr: has shape"):
        open_image(tmp_path / "stack.zarr")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageStoreError, match="neither a Zarr store"):
        open_image(tmp_path / "notes.txt")
    with pytest.raises(ImageStoreError, match="at least 14 x 14"):
        ImageSource.from_array(np.zeros((10, 100), np.uint8))


def test_cli_segments_large_images_on_a_local_cluster(mosaic, cluster, tmp_path, threshold_model, capsys):
    write_inputs(tmp_path, mosaic)
    address = cluster.scheduler.address
    assert run_predict(tmp_path, ["mosaic.ome.zarr", "slide.tif"], "--dask-scheduler", address) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["mosaic_cells.csv", "mosaic_labels.tif", "mosaic_labels.zarr",
                                                      "reference_overlay.png", "slide_cells.csv", "slide_labels.tif",
                                                      "slide_labels.zarr"]
    reference = threshold_model.reference(mosaic[1], mosaic[2])
    for stem, image in (("mosaic", mosaic[0]), ("slide", tifffile.imread(tmp_path / "slide.tif"))):
        labels = zarr.open_array(str(out / f"{stem}_labels.zarr"), mode="r")[:]
        whole = threshold_model.segment(image, reference).labels
        assert evaluate(whole, labels, 0.5)[0].pooled.ap >= 0.99 and whole.max() > 300
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_labels.tif"), labels)
        rows = (out / f"{stem}_cells.csv").read_text().splitlines()
        assert rows[0] == "id,area,centroid_y,centroid_x,score" and len(rows) == labels.max() + 1
    assert "segmented 2 of 2 images" in capsys.readouterr().out


def test_cli_runs_a_real_checkpoint_block_by_block_on_the_cluster(cluster, tmp_path):
    """A tiny random PerCS-DINO checkpoint: the model and the reference embedding travel to both workers."""
    write_tiny_checkpoint(tmp_path / "ck.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 260), np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((300, 260), np.uint8)
    mask[40:52, 30:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["--block-size", "128", "--overlap", "80", "--dask-scheduler", cluster.scheduler.address]
    assert main(["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / "a.png"),
                 "--reference-mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"), "--no-progress",
                 *argv, str(tmp_path / "a.png")]) == 0
    assert zarr.open_array(str(tmp_path / "out" / "a_labels.zarr")).shape == (300, 260)


def test_a_reference_inside_the_large_image(mosaic, tmp_path, threshold_model):
    write_inputs(tmp_path, mosaic)
    Image.fromarray(np.full((8, 10), 255, np.uint8)).save(tmp_path / "small_mask.png")
    args = ("--reference-offset", "600,700")
    assert run_predict(tmp_path, ["mosaic.ome.zarr"], *args, reference="mosaic.ome.zarr", mask="small_mask.png") == 0
    assert (tmp_path / "out" / "mosaic_labels.zarr").is_dir()


@pytest.mark.parametrize("arguments, reference, mask, message", [
    (("--reference-offset", "2044,10"), "mosaic.ome.zarr", "small_mask.png",
     "--reference-image .*mosaic.ome.zarr: the reference cell is outside the image: a 8 x 10 mask at "
     "--reference-offset 2044,10 does not fit in its 2048 x 2048 pixels"),
    ((), "mosaic.ome.zarr", "small_mask.png", "--reference-offset Y,X is needed"),
    (("--block-size", "100"), "ref.tif", "mask.png", "--block-size must be a positive multiple of 16"),
    (("--block-size", "256", "--overlap", "300"), "ref.tif", "mask.png", "--block-size 256 is smaller than --overlap"),
    (("--block-size", "64"), "ref.tif", "mask.png",
     "--block-size 64 is smaller than the overlap \\(the window 112 \\+ 2 x the reference cell's diameter\\)"),
    (("--workers", "0"), "ref.tif", "mask.png", "--workers must be at least 1"),
])
def test_cli_input_errors(mosaic, tmp_path, threshold_model, capsys, arguments, reference, mask, message):
    write_inputs(tmp_path, mosaic)
    Image.fromarray(np.full((8, 10), 255, np.uint8)).save(tmp_path / "small_mask.png")
    argv = ["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / reference),
            "--reference-mask", str(tmp_path / mask), "--out", str(tmp_path / "out"), "--no-progress",
            *arguments, str(tmp_path / "mosaic.ome.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("percs predict: error: ") and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_names_an_unreadable_store_before_loading_the_model(mosaic, tmp_path, threshold_model, capsys):
    write_inputs(tmp_path, mosaic)
    chunk = next(p for p in (tmp_path / "mosaic.ome.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    meta = tmp_path / "mosaic.ome.zarr" / "0" / "zarr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "shape": "broken"}))
    assert chunk.exists()
    assert run_predict(tmp_path, ["mosaic.ome.zarr"]) == 2
    assert "IMAGES " in (err := capsys.readouterr().err) and "mosaic.ome.zarr: cannot be read" in err


def test_cli_resumes_an_unfinished_run_and_refuses_finished_outputs(mosaic, tmp_path, threshold_model, capsys):
    write_inputs(tmp_path, mosaic)
    tifffile.imwrite(tmp_path / "small.tif", mosaic[0][:600, :700])
    assert run_predict(tmp_path, ["small.tif"], "--blockwise", "--block-size", "256") == 0
    labels = zarr.open_array(str(tmp_path / "out" / "small_labels.zarr"))[:]
    assert run_predict(tmp_path, ["small.tif"], "--blockwise", "--block-size", "256") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # A killed run: its blocks folder is there, with some blocks done; a new run resumes it.
    scratch = tmp_path / "out" / "small_labels.zarr.blocks"
    from percs.predict.blockwise import BlockwiseConfig, segment_blockwise

    failing = ThresholdModel()
    failing.forward = lambda *a: (_ for _ in ()).throw(RuntimeError("killed"))
    reference = threshold_model.reference(mosaic[1], mosaic[2])
    config = BlockwiseConfig(block_size=256, progress=False, restart=True)
    done = segment_blockwise(threshold_model, tmp_path / "small.tif", reference, tmp_path / "out" / "small_labels.zarr",
                             config)
    assert done.n_cells == labels.max()
    with pytest.raises(RuntimeError, match="killed"):
        segment_blockwise(Segmenter(failing, threshold_model.predictor.config), tmp_path / "small.tif", reference,
                          tmp_path / "out" / "small_labels.zarr", config)
    assert scratch.is_dir()
    assert run_predict(tmp_path, ["small.tif"], "--blockwise", "--block-size", "256") == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out" / "small_labels.zarr"))[:], labels)
