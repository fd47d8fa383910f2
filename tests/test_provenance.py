"""What a model was trained on (percs.train.provenance): the record and its summary, synthetic data recognised
through a benchmark's sources, old checkpoints, `Segmenter.trained_on`, and `percs predict`'s line and warning.
(Checkpoints written by `percs train` carry the record: tests/test_train.py.)"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from predict_helpers import write_tiny_checkpoint

from percs.api import ModelLoadError, Segmenter
from percs.cli import main
from percs.data.format import MANIFEST
from percs.data.synthetic import synthetic_image
from percs.train.provenance import SYNTHETIC_GENERATOR, UNKNOWN, TrainingData, is_generated

pytestmark = pytest.mark.usefixtures("one_thread")

SYNTHETIC = TrainingData("percs-demo", ("blob", "ring"), True, "train", "/data/demo", "ab" * 32)
REAL = TrainingData("percs-mini", ("neurocyte", "style1", "style3"), False, "train", "/data/mini", "cd" * 32)
SYNTHETIC_WARNING = ("percs predict: warning: the model was trained on synthetic cells (percs.data.synthetic, as the "
                     "demo's): it is unlikely to work on real images")


def test_summary_line():
    assert REAL.summary() == "model trained on percs-mini (3 types: neurocyte, style1, style3)"
    assert SYNTHETIC.summary() == "model trained on percs-demo (synthetic cells, 2 types: blob, ring)"
    assert UNKNOWN.summary().startswith("model trained on unknown data") and not UNKNOWN.known and REAL.known


def test_record_round_trip_and_bad_records():
    for record in (REAL, SYNTHETIC):
        assert TrainingData.from_record(json.loads(json.dumps(record.to_record()))) == record
    assert TrainingData.from_record(None) is UNKNOWN  # a checkpoint written before the record
    with pytest.raises(ValueError, match="trained_on is list"):
        TrainingData.from_record(["percs-mini"])
    with pytest.raises(ValueError, match="trained_on is dict .* expected a dict with a dataset name"):
        TrainingData.from_record({"cell_types": []})
    with pytest.raises(ValueError, match="trained_on.cell_types is 'abc'"):
        TrainingData.from_record({"dataset": "d", "cell_types": "abc"})


def write_manifest(folder, meta: dict) -> dict:
    """folder/manifest.json holding `meta`; returns the source entry `percs data build` records for it."""
    folder.mkdir(parents=True)
    data = json.dumps({"format": "percs-dataset", "meta": meta}).encode()
    (folder / MANIFEST).write_bytes(data)
    return {"name": folder.name, "path": str(folder), "manifest_sha256": hashlib.sha256(data).hexdigest()}


def test_synthetic_data_is_recognised_directly_and_through_every_source(tmp_path):
    synthetic = write_manifest(tmp_path / "synthetic", {"generator": SYNTHETIC_GENERATOR, "seed": 0})
    real = write_manifest(tmp_path / "real", {})
    built = write_manifest(tmp_path / "built", {"builder": "percs data build", "sources": [synthetic]})
    assert is_generated({"generator": SYNTHETIC_GENERATOR})
    assert is_generated({"sources": [synthetic]}) and is_generated({"sources": [built, synthetic]})
    assert not is_generated({}) and not is_generated({"sources": []})
    assert not is_generated({"sources": [synthetic, real]})  # some real cells: not synthetic
    assert not is_generated({"sources": [dict(synthetic, path=str(tmp_path / "moved"))]})  # unverifiable
    assert not is_generated({"sources": [{"name": "no path"}]}) and not is_generated({"sources": ["x"]})
    (tmp_path / "synthetic" / MANIFEST).write_text("{}")  # changed since the build
    assert not is_generated({"sources": [synthetic]})


def test_segmenter_exposes_the_record_and_old_checkpoints_load_as_unknown(tmp_path):
    old = Segmenter.from_checkpoint(write_tiny_checkpoint(tmp_path / "old.pt"), device="cpu")
    assert old.trained_on is UNKNOWN
    new = Segmenter.from_checkpoint(write_tiny_checkpoint(tmp_path / "new.pt", trained_on=REAL.to_record()),
                                    device="cpu")
    assert new.trained_on == REAL
    bad = write_tiny_checkpoint(tmp_path / "bad.pt", trained_on={"dataset": 3})
    with pytest.raises(ModelLoadError, match=f"checkpoint {bad} has an unreadable training-data record: trained_on"):
        Segmenter.from_checkpoint(bad, device="cpu")


@pytest.mark.parametrize("record", [SYNTHETIC, REAL, UNKNOWN], ids=["synthetic", "real", "old"])
def test_predict_prints_the_training_data_and_warns_about_synthetic_training(tmp_path, capsys, record):
    checkpoint = write_tiny_checkpoint(tmp_path / "ck.pt", trained_on=record.to_record() if record.known else None)
    cells = synthetic_image((56, 56), seed=1)
    tifffile.imwrite(tmp_path / "a.tif", cells.image)
    Image.fromarray((cells.labels == 1).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    code = main(["predict", "--checkpoint", str(checkpoint), "--reference-image", str(tmp_path / "a.tif"),
                 "--reference-mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"), "--no-progress",
                 str(tmp_path / "a.tif")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0] == record.summary()
    warned = [line for line in captured.err.splitlines() if "synthetic" in line]
    assert warned == ([SYNTHETIC_WARNING] if record.synthetic else [])
