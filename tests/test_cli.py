"""The command line and `percs info`."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from percs.cli import main


def test_info_prints_json(capsys):
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__
    assert "cpu" in report["backends"]
    assert isinstance(report["cuda_usable"], bool)
    assert report["cuda_usable"] == (torch.cuda.is_available() and "cuda" in report["backends"])


def test_console_module_runs(tmp_path):
    # Outside the source tree: `python -m` puts the working directory first on sys.path.
    out = subprocess.run(
        [sys.executable, "-m", "percs", "info"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(out.stdout)["backends"][0] == "cpu"


def test_unknown_command_fails(tmp_path):
    out = subprocess.run([sys.executable, "-m", "percs", "nonsense"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "invalid choice" in out.stderr
