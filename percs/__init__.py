"""percs: personalized cell segmentation (PerCS-DINO) with Cellpose-style flow kernels in C++ and CUDA."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("percs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
