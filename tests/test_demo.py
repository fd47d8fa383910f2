"""percs demo: the whole pipeline on synthetic data, shortened (one epoch) so that it runs in CI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from percs.api import Segmenter
from percs.demo import DemoConfig, DemoProgress, run_demo, training_config


def test_short_demo_writes_the_benchmark_run_evaluations_and_table(tmp_path):
    lines = []
    result = run_demo(DemoConfig(tmp_path / "demo", images_per_type=4, shape=(112, 112), epochs=1, progress=False),
                      say=lines.append)
    out = result.out
    assert (out / "benchmark" / "manifest.json").is_file() and result.checkpoint.is_file()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    control = json.loads((out / "eval-wrong-reference" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_queries"] > 0 and control["control"]["name"] == "wrong-reference"
    assert 0.0 <= result.ap50 <= 1.0 and result.ap50 == metrics["overall"]["iou"]["0.5"]["mean"]["ap"]["value"]
    table = (out / "table.md").read_text()
    assert "PerCS-DINO (vits14, random-init backbone" in table and "percs-demo test" in table
    assert table.count("\n|") >= 4
    assert len(lines) == 6 and lines[-1].startswith("test AP@0.5")
    assert lines[2].startswith("epoch 1/1 done; demo: about ") and lines[2].endswith("then the evaluations")
    assert set(result.seconds) == {"data", "train", "eval"}
    trained_on = Segmenter.from_checkpoint(result.checkpoint, device="cpu").trained_on
    assert trained_on.dataset == "percs-demo" and trained_on.synthetic and len(trained_on.cell_types) == 5
    assert trained_on.summary().startswith("model trained on percs-demo (synthetic cells, 5 types: blob, ")


def test_demo_progress_says_the_time_left_and_each_validation():
    lines = []
    progress = DemoProgress(eval_queries=20, say=lines.append)
    progress({"event": "step", "epoch": 0})
    progress({"event": "epoch", "epoch": 0, "epochs": 60, "eta_s": 200.0})
    progress({"event": "epoch", "epoch": 1, "epochs": 60, "eta_s": 190.0})  # between validations: quiet
    progress({"event": "val", "epoch": 9, "epochs": 60, "ap50": 0.125, "ap30": 0.25, "queries": 10, "seconds": 5.0,
              "eta_s": 150.0})
    assert lines == [
        "epoch 1/60 done; demo: about 3.3 min of training left, then the evaluations",
        "epoch 10/60: val AP@0.5 0.125 (AP@0.3 0.250, 10 queries, 5.0 s); demo: about 2.7 min left "
        "(training 2.5 min, evaluations 10 s)",
    ]


def test_demo_config_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="images_per_type"):
        DemoConfig(tmp_path, images_per_type=2)
    with pytest.raises(ValueError, match="weights file"):
        DemoConfig(tmp_path, weights=str(tmp_path / "missing.pth"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(DemoConfig(tmp_path / "full"), say=lambda _: None)


def test_demo_with_weights_freezes_a_pretrained_vits14(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    config = training_config(DemoConfig(tmp_path / "d", weights=str(weights)), tmp_path / "bench")
    assert config.model.backbone_weights == str(weights) and config.model.backbone_depth == 0
    assert config.optim.freeze_backbone and config.train.feature_cache_variants == 4
    plain = training_config(DemoConfig(tmp_path / "d"), tmp_path / "bench")
    assert not plain.optim.freeze_backbone and plain.model.head.detail_channels == 16


def test_cli_reports_a_bad_out_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    done = subprocess.run([sys.executable, "-m", "percs", "demo", "--out", str(tmp_path / "busy")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "not empty" in done.stderr and "Traceback" not in done.stderr
