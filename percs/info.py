"""What this installation of percs can do: versions, kernel backends, devices."""

from __future__ import annotations

import platform

from percs import __version__, _backend


def cuda_usable() -> bool:
    """True when a CUDA device can run both torch and the percs CUDA kernels now."""
    try:
        import torch
    except ImportError:
        return False
    return _backend._cuda is not None and torch.cuda.is_available() and _backend._cuda.device_count() > 0


def info() -> dict:
    """A JSON-ready description of the installation."""
    try:
        import torch

        torch_version, torch_cuda = torch.__version__, torch.version.cuda
    except ImportError:
        torch_version = torch_cuda = None
    return {
        "percs": __version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "torch_cuda": torch_cuda,
        "backends": _backend.built_backends(),
        "openmp": bool(_backend.cpu.openmp),
        "cpu_threads": _backend.cpu.max_threads(),
        "cuda_import_error": _backend.CUDA_IMPORT_ERROR,
        "cuda_usable": cuda_usable(),
    }
