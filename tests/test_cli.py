"""The command line: `percs info`, help for every option, parsers that load no heavy module, the error of an
uncompiled source tree."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from percs import _backend
from percs.cli import build_parser, main

# Modules that only running a command may import: building the parser or printing help must not.
HEAVY_MODULES = ("torch", "scipy", "skimage", "numba", "fastremap", "tifffile", "percs._cpu", "percs.model",
                 "percs.api", "percs.predict.api", "percs.predict.predictor", "percs.predict.files",
                 "percs.train.trainer", "percs.baselines.persam", "percs.baselines.filter")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of the parser and of every sub-command under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def test_info_says_which_backends_are_compiled_and_usable(capsys):
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__
    cpu, cuda = report["backends"]["cpu"], report["backends"]["cuda"]
    assert cpu["compiled"] and cpu["usable"] and cpu["threads"] >= 1 and isinstance(cpu["openmp"], bool)
    assert cuda["compiled"] == (_backend._cuda is not None)
    devices = _backend._cuda.device_count() if cuda["compiled"] else 0
    assert cuda["devices"] == devices
    assert cuda["usable"] == (devices > 0 and torch.cuda.is_available())
    if cuda["usable"]:
        assert "not_usable_because" not in cuda
    else:
        assert cuda["not_usable_because"]
    if cuda["compiled"] and not devices:
        assert "no CUDA device or driver" in cuda["not_usable_because"]
    if cuda["compiled"] and torch.version.cuda is None:  # (not compiled: that alone is the reason given)
        assert "CPU-only build" in cuda["not_usable_because"]
    if not cuda["compiled"]:
        assert "percs._cuda was not compiled" in cuda["not_usable_because"]


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (False, True), (True, False)])
def test_info_says_what_auto_precision_runs_on_this_cpu(capsys, monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)["inference_precision_on_cpu"]
    assert report["auto"] == ("bfloat16" if amx or avx512_bf16 else "float32")
    features = [name for name, present in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if present]
    if features:
        assert report["because"].endswith(f"in hardware ({', '.join(features)})")
    else:
        assert "no AMX or AVX512-BF16" in report["because"]
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_console_module_runs(tmp_path):
    # Outside the source tree: `python -m` puts the working directory first on sys.path.
    out = subprocess.run(
        [sys.executable, "-m", "percs", "info"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(out.stdout)["backends"]["cpu"]["usable"] is True


def test_unknown_command_fails(tmp_path):
    out = subprocess.run([sys.executable, "-m", "percs", "nonsense"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_every_option_of_every_command_has_help():
    missing = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"percs {' '.join(path + (c.dest,))}" for c in action._choices_actions if not c.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"percs {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"without help: {missing}"


def test_mask_suffix_help_has_an_example():
    parser = dict(commands(build_parser()))[("data", "import", "folder")]
    action = next(a for a in parser._actions if "--mask-suffix" in a.option_strings)
    assert "e.g. _masks matches cell01.png with cell01_masks.tif" in action.help


def test_parsers_and_help_import_no_heavy_module(tmp_path):
    # In a fresh interpreter (this one has torch loaded already), the help of every command is printed.
    paths = [list(path) for path, _ in commands(build_parser())]
    code = (
        "import contextlib, io, sys\n"
        "from percs.cli import main\n"
        f"for path in {paths!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([*path, '--help'])\n"
        f"print(sorted({{h for h in {HEAVY_MODULES!r} for m in sys.modules if m == h or m.startswith(h + '.')}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", f"imported by building the parser or printing help: {out.stdout}"


def test_uncompiled_source_tree_says_how_to_build(tmp_path):
    # A copy of the Python files without the compiled modules, imported as `python -m pytest` from the
    # repository root would import it; -S: no site-packages, so no installed (or editable) percs either.
    source = Path(__file__).resolve().parents[1] / "percs"
    shutil.copytree(source, tmp_path / "percs", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    out = subprocess.run([sys.executable, "-S", "-c", "import percs._backend"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: percs' compiled kernels (percs._cpu) cannot be imported from")
    assert str(tmp_path / "percs") in message
    assert "`pip install .`" in message and "`pytest` rather than `python -m pytest`" in message
