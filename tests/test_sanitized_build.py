"""Under the CI sanitizer job (PERCS_EXPECT_SANITIZED=1), the kernels really are the ASan/UBSan build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from percs import _backend


@pytest.mark.skipif(os.environ.get("PERCS_EXPECT_SANITIZED") != "1", reason="only in the sanitizer job")
def test_cpu_module_is_the_sanitized_build():
    module = Path(_backend.cpu.__file__).read_bytes()
    assert b"__asan_init" in module or b"__asan_report" in module
    assert b"__ubsan_handle" in module
