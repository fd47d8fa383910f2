"""`percs predict` and percs.predict_files: outputs, input formats, cell tables, every input error."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image
from predict_helpers import ThresholdModel, checkpoint_config, write_tiny_checkpoint
from test_data_format import write_png16

import percs.api
from percs.api import Segmenter
from percs.cli import main
from percs.data.synthetic import synthetic_image
from percs.metrics import evaluate
from percs.overlay import PREDICTED_COLOUR, REFERENCE_COLOUR, add_legend, draw_overlay
from percs.predict_files import (FEW_CELLS, FewCellsWarning, cell_table, few_cells_message, plan_outputs,
                                 read_query_image, segment_files)

SIZE = 112


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cells():
    """A 112 x 112 synthetic fluorescence image (uint8 grey) and its labels."""
    return synthetic_image((SIZE, SIZE), seed=1)


@pytest.fixture
def threshold_model(monkeypatch, tmp_path):
    """`load_model` replaced by ThresholdModel under one 112-pixel window: bright blobs become cells (ck.pt, a
    placeholder file, is never read)."""
    (tmp_path / "ck.pt").write_bytes(b"")
    config = checkpoint_config(tmp_path, window=SIZE, stride=SIZE)
    monkeypatch.setattr(percs.api, "load_model",
                        lambda checkpoint, device="auto", backbone_weights=None: (ThresholdModel(), config))
    return Segmenter(ThresholdModel(), config.predict)


def write_inputs(folder, cells) -> None:
    """folder/images/a.tif, b.png (the same grey image) and folder/mask.png (cell 1, 0/255)."""
    (folder / "images").mkdir()
    tifffile.imwrite(folder / "images" / "a.tif", cells.image)
    Image.fromarray(cells.image).save(folder / "images" / "b.png")
    Image.fromarray((cells.labels == 1).astype(np.uint8) * 255).save(folder / "mask.png")


def run_predict(tmp_path, *arguments, reference="images/a.tif", mask="mask.png", images=("images",)):
    argv = ["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / reference),
            "--reference-mask", str(tmp_path / mask), "--out", str(tmp_path / "out"), "--no-progress",
            *arguments, *[str(tmp_path / p) for p in images]]
    return main(argv)


def read_cells_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_overlay(path, height: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """An overlay PNG split into the picture (its first `height` rows) and the legend strip under it."""
    overlay = np.asarray(Image.open(path))
    return overlay[:height], overlay[height:]


def test_cli_end_to_end_with_a_checkpoint(tmp_path, cells):
    write_tiny_checkpoint(tmp_path / "ck.pt")
    write_inputs(tmp_path, cells)
    command = [sys.executable, "-m", "percs", "predict", "--checkpoint", "ck.pt", "--reference-image",
               "images/a.tif", "--reference-mask", "mask.png", "--out", "out", "images"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "segmented 2 of 2 images" in done.stdout and "percs predict" in done.stderr  # the progress bar
    assert done.stdout.startswith("model trained on unknown data")  # a checkpoint without the record
    for stem in ("a", "b"):
        labels = tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif")
        assert labels.dtype == np.int32 and labels.shape == (SIZE, SIZE)
        overlay, strip = read_overlay(tmp_path / "out" / f"{stem}_overlay.png")
        assert overlay.dtype == np.uint8 and overlay.shape == (SIZE, SIZE, 3) and strip.shape[1] == SIZE
        rows = read_cells_csv(tmp_path / "out" / f"{stem}_cells.csv")
        assert len(rows) == labels.max() and set(np.unique(labels)) == set(range(labels.max() + 1))
    outlined = [(read_overlay(tmp_path / "out" / f"{s}_overlay.png")[0] == REFERENCE_COLOUR).all(-1).sum()
                for s in ("a", "b", "reference")]
    assert outlined[0] > 0 and outlined[1] == 0 and outlined[2] == outlined[0]  # a is the reference image


def test_cells_found_and_their_table(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    assert run_predict(tmp_path, images=("images/b.png",)) == 0
    labels = tifffile.imread(tmp_path / "out" / "b_labels.tif")
    expected = threshold_model.segment(cells.image, threshold_model.reference(cells.image, cells.labels == 1))
    np.testing.assert_array_equal(labels, expected.labels)
    assert evaluate(cells.labels, labels, 0.5)[0].tp >= 8  # separate blobs found as cells
    rows = read_cells_csv(tmp_path / "out" / "b_cells.csv")
    assert [int(r["id"]) for r in rows] == list(range(1, labels.max() + 1))
    for row in rows:
        ys, xs = np.nonzero(labels == int(row["id"]))
        assert int(row["area"]) == len(ys)
        assert float(row["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-3)
        assert float(row["centroid_x"]) == pytest.approx(xs.mean(), abs=1e-3)
        assert float(row["score"]) == pytest.approx(expected.cell_probability[int(row["id"]) - 1], abs=1e-6)
    overlay, strip = read_overlay(tmp_path / "out" / "b_overlay.png")
    assert (overlay == PREDICTED_COLOUR).all(-1).sum() > 0 and not (overlay == REFERENCE_COLOUR).all(-1).any()
    np.testing.assert_array_equal(overlay, draw_overlay(cells.image, labels))  # the legend leaves the picture as is
    assert np.array_equal(np.concatenate((overlay, strip)), add_legend(overlay, (("found cell", PREDICTED_COLOUR),
                                                                                 ("reference", REFERENCE_COLOUR))))
    for colour in (PREDICTED_COLOUR, REFERENCE_COLOUR):  # the legend's swatches, 8 x 8 inside their border
        assert (strip == colour).all(-1).sum() >= 64, colour
    _, strip = read_overlay(tmp_path / "out" / "reference_overlay.png")
    assert (strip == REFERENCE_COLOUR).all(-1).sum() >= 64 and not (strip == PREDICTED_COLOUR).all(-1).any()


def test_min_cell_probability_drops_rows(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    assert run_predict(tmp_path, images=("images/a.tif",)) == 0
    scores = [float(r["score"]) for r in read_cells_csv(tmp_path / "out" / "a_cells.csv")]
    cut = float(np.median(scores))
    assert run_predict(tmp_path, "--overwrite", "--min-cell-probability", str(cut), images=("images/a.tif",)) == 0
    kept = [float(r["score"]) for r in read_cells_csv(tmp_path / "out" / "a_cells.csv")]
    assert len(kept) == sum(s >= cut for s in scores) < len(scores) and min(kept) >= cut
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").max() == len(kept)


def write_formats(folder, image: np.ndarray) -> list[str]:
    """The grey uint8 image in every format and depth (colour versions carry it in their red channel) as
    folder/<kind>_<format>.<suffix>; the stems of the lossless ones."""
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)
    folder.mkdir()
    tifffile.imwrite(folder / "grey8_tif.tif", image)
    tifffile.imwrite(folder / "grey16_tif.tif", image.astype(np.uint16) * 257)
    tifffile.imwrite(folder / "rgb8_tif.tif", rgb, photometric="rgb")
    tifffile.imwrite(folder / "rgb16_tif.tiff", rgb.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(folder / "planar_tif.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    Image.fromarray(image).save(folder / "grey8_png.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(folder / "grey16_png.png")
    Image.fromarray(rgb).save(folder / "rgb8_png.PNG")
    write_png16(folder / "rgb16_png.png", rgb.astype(np.uint16) * 257, [0] * image.shape[0])
    Image.fromarray(image).save(folder / "grey8_jpg.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "rgb8_jpg.jpeg", quality=95, subsampling=0)
    return ["grey16_tif", "rgb8_tif", "rgb16_tif", "planar_tif", "grey8_png", "grey16_png", "rgb8_png", "rgb16_png"]


def test_grey_and_colour_8_and_16_bit_tiff_png_jpeg(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    lossless = write_formats(tmp_path / "formats", cells.image)
    assert run_predict(tmp_path, images=("formats",)) == 0
    out = tmp_path / "out"
    reference = tifffile.imread(out / "grey8_tif_labels.tif")
    assert reference.max() >= 8
    for stem in lossless:  # the same pixels after the percentile stretch: the same cells
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_labels.tif"), reference, err_msg=stem)
    for stem in ("grey8_jpg", "rgb8_jpg"):
        jpeg = tifffile.imread(out / f"{stem}_labels.tif")
        assert evaluate(reference, jpeg, 0.5)[0].tp >= 0.8 * reference.max(), stem
    assert len(list(out.glob("*_cells.csv"))) == len(lossless) + 3


def test_reference_by_label_id_outlines_that_cell(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    tifffile.imwrite(tmp_path / "labels.tif", cells.labels.astype(np.uint16))
    assert run_predict(tmp_path, "--reference-label", "5", mask="labels.tif", images=("images/a.tif",)) == 0
    overlay = read_overlay(tmp_path / "out" / "a_overlay.png")[0]
    ys, xs = np.nonzero((overlay == REFERENCE_COLOUR).all(-1))
    assert len(ys) > 0 and (cells.labels[ys, xs] == 5).all()
    assert not (tmp_path / "out" / "reference_overlay.png").exists()  # the only image is the reference image


def test_folder_that_is_also_out_skips_its_outputs(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    argv = ["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / "images" / "a.tif"),
            "--reference-mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "images"), "--no-progress",
            "--overwrite", str(tmp_path / "images")]
    assert main(argv) == 0 and main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        ["a.tif", "b.png", "reference_overlay.png"] + [f"{s}{x}" for s in "ab"
                                                       for x in ("_labels.tif", "_overlay.png", "_cells.csv")])


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """`load_model` replaced by one that fails the test: the inputs must be refused before a model loads (ck.pt,
    a placeholder file, is never read)."""
    (tmp_path / "ck.pt").write_bytes(b"")

    def refuse(checkpoint, device="auto", backbone_weights=None):
        raise AssertionError(f"the model was loaded from {checkpoint} although an input is bad")

    monkeypatch.setattr(percs.api, "load_model", refuse)


def expect_error(capsys, code: int, *fragments: str, status: int = 2, lines: int = 1) -> None:
    """Exit status `status`, `lines` lines on stderr (one per problem), each "percs predict: error: ...", no
    traceback, and every fragment in them."""
    captured = capsys.readouterr()
    assert code == status, captured
    err = captured.err.splitlines()
    assert len(err) == lines and all(line.startswith("percs predict: error: ") for line in err), captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)


def test_reference_errors_name_the_argument_and_file(tmp_path, cells, no_model, capsys):
    write_inputs(tmp_path, cells)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "empty.png")
    expect_error(capsys, run_predict(tmp_path, mask="empty.png"), f"--reference-mask {tmp_path / 'empty.png'}: is empty")
    Image.fromarray(np.ones((50, 60), np.uint8)).save(tmp_path / "small.png")
    expect_error(capsys, run_predict(tmp_path, mask="small.png"),
                 f"--reference-mask {tmp_path / 'small.png'}: size (50, 60) differs", str(tmp_path / "images" / "a.tif"))
    tifffile.imwrite(tmp_path / "labels.tif", cells.labels.astype(np.uint16))
    expect_error(capsys, run_predict(tmp_path, "--reference-label", "999", mask="labels.tif"),
                 f"--reference-mask {tmp_path / 'labels.tif'}: has no cell labelled 999 (--reference-label)")
    expect_error(capsys, run_predict(tmp_path, "--reference-label", "0", mask="labels.tif"), "no cell labelled 0")
    expect_error(capsys, run_predict(tmp_path, mask="labels.tif"), f"--reference-mask {tmp_path / 'labels.tif'}: holds",
                 "--reference-label")
    expect_error(capsys, run_predict(tmp_path, mask="nothere.png"), f"--reference-mask {tmp_path / 'nothere.png'}: "
                                                                    "does not exist")
    expect_error(capsys, run_predict(tmp_path, mask="images"), f"--reference-mask {tmp_path / 'images'}: is not a file")
    expect_error(capsys, run_predict(tmp_path, reference="nothere.png"),
                 f"--reference-image {tmp_path / 'nothere.png'}: does not exist")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    expect_error(capsys, run_predict(tmp_path, reference="broken.png"),
                 f"--reference-image {tmp_path / 'broken.png'}: cannot read image")
    assert mask.is_file() and not (tmp_path / "out").exists()  # nothing written before the inputs were checked


def test_image_errors_name_the_file(tmp_path, cells, no_model, capsys):
    write_inputs(tmp_path, cells)
    expect_error(capsys, run_predict(tmp_path, images=("images", "missing.tif")),
                 f"IMAGES {tmp_path / 'missing.tif'}: does not exist")
    (tmp_path / "empty").mkdir()
    expect_error(capsys, run_predict(tmp_path, images=("empty",)), "no images found", str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("x")
    expect_error(capsys, run_predict(tmp_path, images=("notes.txt",)), "notes.txt: unsupported image suffix")
    assert not (tmp_path / "out").exists()


def test_corrupt_images_are_refused_before_the_model_loads(tmp_path, cells, no_model, capsys):
    write_inputs(tmp_path, cells)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    expect_error(capsys, run_predict(tmp_path), f"IMAGES {tmp_path / 'images' / 'broken.png'}: cannot read image")
    tifffile.imwrite(tmp_path / "images" / "c.tif", cells.image)
    with open(tmp_path / "images" / "c.tif", "r+b") as file:
        file.truncate(200)  # a TIFF cut short: its header is fine, its pixels are missing
    tifffile.imwrite(tmp_path / "images" / "nan.tif", np.full((SIZE, SIZE), np.nan, np.float32))
    expect_error(capsys, run_predict(tmp_path), "broken.png: cannot read image", "c.tif: cannot read image",
                 "nan.tif: image has NaN", lines=3)  # one line per bad image, all of them
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions that bind (not root)")
def test_unreadable_files_are_named(tmp_path, cells, no_model, capsys):
    write_inputs(tmp_path, cells)
    for path in (tmp_path / "images" / "b.png", tmp_path / "mask.png"):
        path.chmod(0)
    expect_error(capsys, run_predict(tmp_path), f"--reference-mask {tmp_path / 'mask.png'}: cannot be read")
    (tmp_path / "mask.png").chmod(0o644)
    expect_error(capsys, run_predict(tmp_path), f"IMAGES {tmp_path / 'images' / 'b.png'}: cannot be read")


@pytest.mark.parametrize("shape", [(1, 1), (13, 40), (40, 13)])
def test_images_under_one_patch_are_refused(tmp_path, cells, no_model, capsys, shape):
    write_inputs(tmp_path, cells)
    Image.fromarray(np.full(shape, 200, np.uint8)).save(tmp_path / "images" / "tiny.png")
    expect_error(capsys, run_predict(tmp_path),
                 f"IMAGES {tmp_path / 'images' / 'tiny.png'}: image is {shape[0]} x {shape[1]} pixels",
                 "at least 14 x 14")
    tiny_mask = np.zeros(shape, np.uint8)
    tiny_mask[0, 0] = 1
    Image.fromarray(tiny_mask).save(tmp_path / "tiny_mask.png")
    expect_error(capsys, run_predict(tmp_path, reference="images/tiny.png", mask="tiny_mask.png",
                                     images=("images/a.tif",)), f"--reference-image {tmp_path / 'images' / 'tiny.png'}: image is")
    assert not (tmp_path / "out").exists()


def test_images_smaller_than_a_window_are_padded(tmp_path, cells, threshold_model):
    """14 x 14 (one patch) and 30 x 50 crops, under the 112-pixel window, give the labels the predictor gives
    them (padded to a window and cut back), of their own shape."""
    write_inputs(tmp_path, cells)
    (tmp_path / "small").mkdir()
    crops = {"patch": cells.image[:14, :14], "crop": cells.image[20:50, 10:60]}
    for stem, crop in crops.items():
        Image.fromarray(np.ascontiguousarray(crop)).save(tmp_path / "small" / f"{stem}.png")
    assert run_predict(tmp_path, images=("small",)) == 0
    reference = threshold_model.reference(cells.image, cells.labels == 1)
    for stem, crop in crops.items():
        labels = tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif")
        assert labels.shape == crop.shape
        np.testing.assert_array_equal(labels, threshold_model.segment(crop, reference).labels)
    assert tifffile.imread(tmp_path / "out" / "crop_labels.tif").max() > 0


def test_option_errors_are_refused_before_the_model_loads(tmp_path, cells, no_model, capsys):
    write_inputs(tmp_path, cells)
    expect_error(capsys, run_predict(tmp_path, "--min-cell-probability", "1.5"),
                 "--min-cell-probability must be in [0, 1], got 1.5")
    expect_error(capsys, run_predict(tmp_path, "--device", "gpu0"), "--device: device 'gpu0' is not a device")
    expect_error(capsys, run_predict(tmp_path, "--flow-threshold", "-0.1"),
                 "--flow-threshold must be a finite number >= 0, got -0.1")
    expect_error(capsys, run_predict(tmp_path, "--reference-diameter", "-2"),
                 "--reference-diameter must be 0 (off) or a number of pixels >= 1, got -2.0")
    (tmp_path / "ck.pt").unlink()
    expect_error(capsys, run_predict(tmp_path), f"--checkpoint {tmp_path / 'ck.pt'}: does not exist")
    (tmp_path / "ck.pt").mkdir()
    expect_error(capsys, run_predict(tmp_path), f"--checkpoint {tmp_path / 'ck.pt'}: is not a file")
    assert not (tmp_path / "out").exists()


def test_flow_threshold_replaces_the_models_flow_check(tmp_path, cells, threshold_model, monkeypatch):
    import percs.predict.predictor as predictor

    write_inputs(tmp_path, cells)
    seen, original = [], predictor.flows_to_masks

    def recorded(*args, **kwargs):
        seen.append(kwargs["flow_threshold"])
        return original(*args, **kwargs)

    monkeypatch.setattr(predictor, "flows_to_masks", recorded)
    assert run_predict(tmp_path) == 0
    assert run_predict(tmp_path, "--flow-threshold", "0", "--overwrite") == 0
    assert set(seen[: len(seen) // 2]) == {0.4} and set(seen[len(seen) // 2:]) == {0.0}


def test_reference_diameter_resizes_by_the_reference_and_refuses_one_out_of_range(tmp_path, cells, threshold_model,
                                                                                monkeypatch, capsys):
    import percs.predict.predictor as predictor
    from percs.data.scale import equivalent_diameter

    write_inputs(tmp_path, cells)
    seen, original = [], predictor.Predictor.fields

    def recorded(self, image, embedding=None, scale=1.0):
        seen.append(scale)
        return original(self, image, embedding, scale)

    monkeypatch.setattr(predictor.Predictor, "fields", recorded)
    across = equivalent_diameter((cells.labels == 1).sum())
    assert run_predict(tmp_path, "--reference-diameter", str(across * 2)) == 0
    assert seen and set(seen) == {2.0}
    for output in (tmp_path / "out").glob("*_labels.tif"):
        assert tifffile.imread(output).shape == cells.image.shape[:2]
    assert run_predict(tmp_path, "--reference-diameter", str(across * 40), "--overwrite") == 2
    assert f"the reference cell is {across:.1f} px across" in capsys.readouterr().err


def test_cells_csv_has_unix_line_endings(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    assert run_predict(tmp_path, images=("images/a.tif",)) == 0
    data = (tmp_path / "out" / "a_cells.csv").read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    assert data.count(b"\n") == 1 + tifffile.imread(tmp_path / "out" / "a_labels.tif").max() > 1


def test_output_collisions(tmp_path, cells, threshold_model, capsys):
    write_inputs(tmp_path, cells)
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "b.tif", cells.image)
    expect_error(capsys, run_predict(tmp_path, images=("images", "other")), "would both write", "b.tif", "b.png")
    tifffile.imwrite(tmp_path / "other" / "Reference.tif", cells.image)
    expect_error(capsys, run_predict(tmp_path, images=("other/Reference.tif",)), "reference_overlay.png")
    assert run_predict(tmp_path, images=("images",)) == 0
    expect_error(capsys, run_predict(tmp_path, images=("images",)), "exists", "--overwrite")
    assert run_predict(tmp_path, "--overwrite", images=("images",)) == 0
    (tmp_path / "file").write_text("")
    code = main(["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--reference-image", str(tmp_path / "images" / "a.tif"),
                 "--reference-mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "file"),
                 str(tmp_path / "images")])
    expect_error(capsys, code, f"--out {tmp_path / 'file'} exists and is not a folder")


def test_checkpoint_errors(tmp_path, cells, capsys):
    write_inputs(tmp_path, cells)
    expect_error(capsys, run_predict(tmp_path), f"--checkpoint {tmp_path / 'ck.pt'}: does not exist")
    (tmp_path / "ck.pt").write_bytes(b"not a checkpoint")
    expect_error(capsys, run_predict(tmp_path), f"checkpoint {tmp_path / 'ck.pt'} is not a percs checkpoint")
    path = write_tiny_checkpoint(tmp_path / "ck.pt")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10
    path.write_bytes(bytes(data))
    expect_error(capsys, run_predict(tmp_path), f"checkpoint {path} is corrupt")
    assert not (tmp_path / "out").exists()


def test_cell_table_of_known_cells():
    labels = np.zeros((10, 12), np.int32)
    labels[1:3, 2:5] = 1  # 6 pixels, centre (1.5, 3)
    labels[6, 7] = 2
    table = cell_table(labels, np.array([0.75, 0.5], np.float32))
    assert table["id"].tolist() == [1, 2] and table["area"].tolist() == [6, 1]
    np.testing.assert_allclose(table["centroid_y"], [1.5, 6])
    np.testing.assert_allclose(table["centroid_x"], [3, 7])
    np.testing.assert_allclose(table["score"], [0.75, 0.5])
    assert all(len(column) == 0 for column in cell_table(np.zeros((4, 4), np.int32), np.zeros(0)).values())


def test_read_query_image_layouts(tmp_path):
    tifffile.imwrite(tmp_path / "planar.tif", np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30),
                     photometric="rgb", planarconfig="separate")
    assert read_query_image(tmp_path / "planar.tif").shape == (20, 30, 3)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((10, 20, 30), np.uint8))
    with pytest.raises(ValueError, match=r"stack.tif: image has shape \(10, 20, 30\)"):
        read_query_image(tmp_path / "stack.tif")


def test_warns_when_an_image_has_no_cell_or_very_few(tmp_path, cells, threshold_model, capsys):
    write_inputs(tmp_path, cells)
    (tmp_path / "few").mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "few" / "none.png")
    two = np.zeros((SIZE, SIZE), np.uint8)
    two[10:22, 10:22] = two[60:74, 70:84] = 200
    Image.fromarray(two).save(tmp_path / "few" / "two.png")
    assert run_predict(tmp_path, images=("few", "images/b.png")) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("model trained on unknown data")  # ThresholdModel has no record
    assert tifffile.imread(tmp_path / "out" / "two_labels.tif").max() == 2
    advice = "(fewer than 3): the image may hold no cell of the reference's type, or the model may not know"
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and all(line.startswith("percs predict: warning: ") for line in warnings), warnings
    assert f"{tmp_path / 'few' / 'none.png'}: no cell found {advice}" in warnings[0]
    assert f"{tmp_path / 'few' / 'two.png'}: only 2 cells found {advice}" in warnings[1]


def test_segment_files_warns_through_the_warnings_module(tmp_path, cells, threshold_model):
    write_inputs(tmp_path, cells)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "none.png")
    jobs = plan_outputs([tmp_path / "none.png"], tmp_path / "images" / "a.tif", tmp_path / "out")
    with pytest.warns(FewCellsWarning, match="none.png: no cell found"):
        segment_files(threshold_model, cells.image, cells.labels == 1, jobs, tmp_path / "out", progress=False)
    assert few_cells_message("x.png", FEW_CELLS) is None
    assert few_cells_message("x.png", 1).startswith("x.png: only 1 cell found (fewer than 3)")
