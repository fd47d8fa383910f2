"""Images larger than memory, read one region at a time: Zarr and OME-Zarr stores, and TIFF files (tiled, BigTIFF;
JPEG, JPEG 2000, LZW, ... tiles decoded by imagecodecs) through tifffile's Zarr store.

    source = open_image("slide.ome.zarr")            # or .tif / .svs / .ndpi, or ImageSource.from_array(array)
    source.shape, source.channels                     # (H, W), 0 for a grey image
    region = source.read(y0, y1, x0, x1)              # (h, w) or (h, w, C), as stored

An `ImageSource` made from a path pickles as its path (the store is opened again, once per process, where it
is read), so that dask workers read their own regions and no process holds the whole image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from percs.data.io import DataFileError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf", ".tf8", ".bif")
MAX_CHANNELS = 4
SINGLETON_AXES = "tzqi"  # axes that must have length 1 (a plane of a stack is not chosen here)


class ImageStoreError(DataFileError):
    """A store or file that cannot be read as a 2D image: names the path and what was wrong."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(path, problem)
        self.problem = problem

    def __reduce__(self):  # raised on a dask worker, it travels back pickled
        return type(self), (str(self.path), self.problem)


@dataclass
class ImageSource:
    """A 2D image read by region. axes: the stored array's axes, one letter each: y, x, c (channels) or one of
    SINGLETON_AXES (length 1). shape: (H, W); channels: C, or 0 for an (H, W) image. path: where it is stored
    (None for an in-memory array); component: the array's path inside a Zarr group, or the TIFF series index."""

    path: str | None
    component: str
    axes: str
    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    array: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_array(cls, array, axes: str | None = None) -> "ImageSource":
        """An in-memory or lazy array (NumPy, zarr.Array, dask array): (H, W), (H, W, C) or (C, H, W) with
        C <= 4; axes as for the class (guessed from the shape when None)."""
        axes = axes or guess_axes(tuple(array.shape), "array")
        return _checked(cls(None, "", axes, *_geometry(tuple(array.shape), axes, "array"),
                            np.dtype(array.dtype), array), "array")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1): (h, w) or (h, w, C) as stored (dtype unchanged)."""
        height, width = self.shape
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(f"region y {y0}..{y1}, x {x0}..{x1} is not inside the {height} x {width} image")
        where = {"y": slice(y0, y1), "x": slice(x0, x1), "c": slice(None)}
        region = np.asarray(self._opened()[tuple(where.get(axis, 0) for axis in self.axes)])
        kept = [axis for axis in self.axes if axis in where]
        return np.transpose(region, [kept.index(axis) for axis in "yxc" if axis in kept])

    def _opened(self):
        if self.array is None:
            self.array = _open_cached(self.path, self.component)
        return self.array

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None:
            state["array"] = None  # reopened where it is read
        return state


_OPENED: dict[tuple[str, str], Any] = {}
_OPENED_LOCK = threading.Lock()


def _open_cached(path: str, component: str):
    with _OPENED_LOCK:
        key = (path, component)
        if key not in _OPENED:
            _OPENED[key] = _open_array(Path(path), component)[0]
        return _OPENED[key]


def is_zarr_store(path: str | Path) -> bool:
    """Whether path is a folder holding a Zarr (v2 or v3) array or group."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


def is_large_image_path(path: str | Path) -> bool:
    """Whether path names an image that `open_image` reads lazily: a Zarr store or a TIFF-like file."""
    return is_zarr_store(path) or (Path(path).is_file() and Path(path).suffix.lower() in TIFF_SUFFIXES)


def open_image(path: str | Path) -> ImageSource:
    """The ImageSource of a Zarr / OME-Zarr store (the first multiscale level, or the array itself) or of a
    TIFF file (series 0, full resolution). ImageStoreError naming the path when it cannot be read as a 2D image
    with at most MAX_CHANNELS channels, at least one backbone patch tall and wide."""
    path = Path(path)
    if not path.exists():
        raise ImageStoreError(path, "does not exist")
    array, component, axes = _open_array(path, None)
    if axes is None:
        axes = guess_axes(tuple(array.shape), str(path))
    source = ImageSource(str(path.resolve()), component, axes, *_geometry(tuple(array.shape), axes, path),
                         np.dtype(array.dtype), array)
    return _checked(source, path)


def _open_array(path: Path, component: str | None):
    """(array, component, axes or None) of a store; component None: find it (and the axes) from metadata."""
    try:
        if is_zarr_store(path):
            return _open_zarr(path, component)
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
            return _open_tiff(path, component)
    except ImageStoreError:
        raise
    except Exception as error:  # any reader's failure: a corrupt or unreadable store
        raise ImageStoreError(path, f"cannot be read: {type(error).__name__}: {error}") from None
    raise ImageStoreError(path, "is neither a Zarr store (a folder with zarr.json, .zarray or .zgroup) nor a TIFF "
                                f"file ({', '.join(TIFF_SUFFIXES)})")


def _open_zarr(path: Path, component: str | None):
    import zarr

    node = zarr.open(str(path), mode="r")
    if component is not None:
        return (node if component == "" else node[component]), component, None
    if isinstance(node, zarr.Array):
        return node, "", None
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if multiscales:
        first = multiscales[0]
        component = first["datasets"][0]["path"]
        axes = first.get("axes")
        letters = None if axes is None else "".join(str(a["name"] if isinstance(a, dict) else a)[0].lower()
                                                    for a in axes)
        return node[component], component, letters
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) != 1:
        raise ImageStoreError(path, f"is a Zarr group without OME multiscales metadata and {len(arrays)} arrays "
                                    f"({', '.join(arrays[:4]) or 'none'}): expected one image array")
    return node[arrays[0]], arrays[0], None


def _open_tiff(path: Path, component: str | None):
    import tifffile
    import zarr

    series = 0 if component is None else int(component)
    with tifffile.TiffFile(path) as tiff:
        if not tiff.series:
            raise ImageStoreError(path, "has no image in it")
        stored = tiff.series[series].axes
    store = tifffile.imread(path, aszarr=True, series=series, level=0)
    letters = "".join({"Y": "y", "X": "x", "S": "c", "C": "c"}.get(a, a.lower()) for a in stored)
    return zarr.open(store, mode="r"), str(series), letters


def guess_axes(shape: tuple[int, ...], name: str) -> str:
    """Axes of an array without metadata: (H, W) yx; (H, W, C) yxc and (C, H, W) cyx for C <= MAX_CHANNELS."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3 and shape[2] <= MAX_CHANNELS:
        return "yxc"
    if len(shape) == 3 and shape[0] <= MAX_CHANNELS:
        return "cyx"
    raise ImageStoreError(name, f"has shape {shape}, expected (H, W) or (H, W, C) / (C, H, W) with C <= "
                                f"{MAX_CHANNELS}")


def _geometry(shape: tuple[int, ...], axes: str, name) -> tuple[tuple[int, int], int]:
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or "y" not in axes or "x" not in axes:
        raise ImageStoreError(name, f"has shape {shape} with axes {axes!r}: expected one y, one x, at most one c")
    extra = {a: n for a, n in zip(axes, shape) if a not in "yxc"}
    if any(a not in SINGLETON_AXES or n != 1 for a, n in extra.items()):
        raise ImageStoreError(name, f"has shape {shape} with axes {axes!r}: only 2D images (with channels) are "
                                    "segmented; extract a plane first")
    size = dict(zip(axes, shape))
    return (size["y"], size["x"]), size.get("c", 0)


def _checked(source: ImageSource, name) -> ImageSource:
    from percs.predict.api import MIN_IMAGE_SIDE

    if source.channels > MAX_CHANNELS:
        raise ImageStoreError(name, f"has {source.channels} channels, expected at most {MAX_CHANNELS}")
    if source.dtype.kind not in "biuf":
        raise ImageStoreError(name, f"has dtype {source.dtype}, expected integers or floats")
    if min(source.shape) < MIN_IMAGE_SIDE:
        raise ImageStoreError(name, f"is {source.shape[0]} x {source.shape[1]} pixels, expected at least "
                                    f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}")
    return source
