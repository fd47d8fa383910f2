"""Shared test fixtures: where the real data lives, the CUDA skip rule, one torch thread on request."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run and machine, so a failure in CI replays here as it was
# (HYPOTHESIS_PROFILE=random explores new examples instead; failures then print their seed).
settings.register_profile("derandomized", derandomize=True, print_blob=True)
settings.register_profile("random", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (restored after): tiny models gain nothing from more, and lose
    much on a loaded machine. Modules of such tests use `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shared_dir() -> Path:
    """The shared folder: $PERCS_SHARED, default ../shared next to the repository."""
    return Path(os.environ.get("PERCS_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _skip_or_fail(message: str) -> None:
    """Missing shared files skip a test locally but fail it under CI=true, where they must be present."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def data_dir(name: str) -> Path:
    """A folder of shared/data; skips the test when it is missing, fails instead under CI=true."""
    path = shared_dir() / "data" / name
    if not path.is_dir():
        _skip_or_fail(f"real data folder {path} is missing (set PERCS_SHARED)")
    return path


def weights_file(name: str) -> Path:
    """A file of shared/weights; skips the test when it is missing, fails instead under CI=true."""
    path = shared_dir() / "weights" / name
    if not path.is_file():
        _skip_or_fail(f"pretrained weights file {path} is missing (set PERCS_SHARED)")
    return path


def read_label_image(path: Path) -> np.ndarray:
    """A label image from PNG or TIFF as int32."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path).astype(np.int32)
    from skimage.io import imread

    return np.asarray(imread(path)).astype(np.int32)


def real_label_images(*folders: str) -> list[tuple[str, np.ndarray]]:
    """(name, labels) of every annotated image of cellpose_styles and dsb2018_stage1_test, by folder."""
    images = []
    for folder in folders:
        root = data_dir(folder)
        if folder == "cellpose_styles":
            paths = sorted(root.glob("*/*_masks.png"))
        elif folder == "dsb2018_stage1_test":
            paths = sorted((root / "masks").glob("*.tif"))
        elif folder == "consep":
            paths = sorted(root.glob("*/inst/*.tif"))
        else:
            paths = sorted(root.glob("*mask*.tif"))
        images += [(f"{folder}/{p.relative_to(root)}", read_label_image(p)) for p in paths]
    return images


def cuda_available() -> bool:
    try:
        import torch

        from percs import _backend
    except ImportError:
        return False
    return torch.cuda.is_available() and _backend._cuda is not None


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device and percs._cuda")
