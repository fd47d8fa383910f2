"""The compiled kernel modules: percs._cpu always, percs._cuda when it was built."""

from __future__ import annotations

import percs

try:
    from percs import _cpu
except ImportError as error:
    raise ImportError(
        f"percs' compiled kernels (percs._cpu) cannot be imported from {', '.join(percs.__path__)} ({error}). "
        "Build and install them with `pip install .` (or `pip install \".[test]\"` to run the tests). If percs "
        "is installed, run `pytest` rather than `python -m pytest` from the repository root: `python -m` puts "
        "the working directory first on sys.path, so its uncompiled percs/ folder shadows the installed package."
    ) from error

try:
    from percs import _cuda
except ImportError as error:  # built without nvcc, or the module could not load
    _cuda = None
    CUDA_IMPORT_ERROR: str | None = str(error)
else:
    CUDA_IMPORT_ERROR = None

cpu = _cpu


def cuda(argument: str):
    """The CUDA kernel module, or an error naming the CUDA tensor argument that needed it."""
    if _cuda is None:
        raise RuntimeError(
            f"{argument} is a CUDA tensor but percs was built without its CUDA kernels "
            f"({CUDA_IMPORT_ERROR or 'no nvcc at build time'}); rebuild with nvcc on PATH or pass CPU arrays"
        )
    return _cuda


def built_backends() -> list[str]:
    return ["cpu"] + (["cuda"] if _cuda is not None else [])
