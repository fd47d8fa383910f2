"""percs._cuda, where it was built, imports and answers on any machine, with or without a GPU driver."""

from __future__ import annotations

import importlib.util

import pytest

from percs import _backend


def test_cuda_module_imports_and_counts_devices():
    if importlib.util.find_spec("percs._cuda") is None:
        pytest.skip("percs was built without its CUDA kernels (no nvcc at build time)")
    import percs._cuda as cuda_module

    assert _backend._cuda is cuda_module, _backend.CUDA_IMPORT_ERROR
    count = cuda_module.device_count()
    assert isinstance(count, int) and count >= 0
    assert "cuda" in _backend.built_backends()
