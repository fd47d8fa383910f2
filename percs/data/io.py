"""Reading and writing the image and label files of datasets, and their checksums.

Every error raised here is a `DataFileError` whose message starts with the path of the file at fault.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from percs.data.png16 import is_png16_colour, read_png16

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".mat")
MAX_LABEL = 2**31 - 1


class DataFileError(ValueError):
    """A file that cannot be read, or holds something percs cannot use; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


# np.load parses each .npy header with ast.literal_eval, and CPython 3.11 keeps the AST builder's recursion
# counter per interpreter: two threads parsing at once (dask's threaded workers, a distributed cluster run in
# process) can fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
# Every .npy / .npz read in percs goes through this lock.
_NPY_HEADER_LOCK = threading.Lock()


def load_npy(path: Path | str, mmap_mode: str | None = None) -> np.ndarray:
    """np.load of one .npy file (no pickles), safe to call from several threads at once."""
    with _NPY_HEADER_LOCK:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def read_npz(path: Path | str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (all, or `keys`), read into memory; safe to call from several threads at once.

    Raises KeyError naming the array when one of `keys` is not in the file.
    """
    with _NPY_HEADER_LOCK, np.load(path, allow_pickle=False) as saved:
        missing = [key for key in keys or () if key not in saved.files]
        if missing:
            raise KeyError(f"{path}: has no array {missing[0]!r} (holds {saved.files})")
        return {key: saved[key] for key in (saved.files if keys is None else keys)}


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_PIL_IMAGE_MODES = {"P": "RGB", "PA": "RGB", "RGBA": "RGB", "LA": "L", "CMYK": "RGB", "YCbCr": "RGB", "1": "L"}


def _read_pil(path: Path, as_image: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if as_image and im.mode in _PIL_IMAGE_MODES:
            im = im.convert(_PIL_IMAGE_MODES[im.mode])
        return np.asarray(im)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    array = np.asarray(tifffile.imread(path))
    if array.ndim < 2 or array.size == 0:  # tifffile warns and returns an empty array for broken page offsets
        raise DataFileError(path, f"cannot read TIFF (decodes to an array of shape {array.shape})")
    return array


def _decode(path: Path | str, suffixes: tuple[str, ...], what: str, reader) -> np.ndarray:
    """reader(path, suffix) for a file of one of `suffixes`, every failure as a DataFileError naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise DataFileError(path, f"unsupported {what} suffix {path.suffix!r}, expected one of {suffixes}")
    try:
        return reader(path, suffix)
    except DataFileError:
        raise
    except Exception as error:  # decoders raise many types; the caller needs the file name
        raise DataFileError(path, f"cannot read {what} ({type(error).__name__}: {error})") from error


def _image_reader(path: Path, suffix: str) -> np.ndarray:
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    if suffix == ".png" and is_png16_colour(path):
        return read_png16(path)
    return _read_pil(path, as_image=True)


def check_file(path: Path | str) -> Path:
    """path as a Path, after checking that it is a file that can be opened for reading; DataFileError naming
    it otherwise (does not exist, is not a file, cannot be read)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, "does not exist")
    if not path.is_file():
        raise DataFileError(path, "is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise DataFileError(path, f"cannot be read ({error.strerror or error})") from None
    return path


def read_image(path: Path | str) -> np.ndarray:
    """The pixels of a PNG, JPEG or TIFF file: (H, W), (H, W, C) or, for TIFF stacks, more dims.

    PNG and JPEG: alpha is dropped (it never carries a stain), palette and CMYK become RGB, 1-bit becomes
    uint8 {0, 255}; 16-bit colour PNGs are decoded by percs.data.png16 (Pillow would keep 8 bits).
    TIFF: the array as stored (a 4-channel TIFF may be RGBA or four stains; it stays 4 channels).
    Raises DataFileError naming the file when it cannot be decoded.
    """
    return _decode(path, IMAGE_SUFFIXES, "image", _image_reader)


def read_label_file(path: Path | str, mat_key: str = "inst_map") -> np.ndarray:
    """The raw array of a label file: PNG (palette indices kept), TIFF, NPY, or the `mat_key` array of a .mat.

    No checks on the values; see `to_label_image`.
    """

    def reader(path: Path, suffix: str) -> np.ndarray:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix == ".npy":
            return load_npy(path)
        if suffix == ".mat":
            arrays = read_mat(path)
            if mat_key not in arrays:
                raise DataFileError(path, f"has no array {mat_key!r}")
            return arrays[mat_key]
        return _read_pil(path, as_image=False)

    return _decode(path, LABEL_SUFFIXES, "labels", reader)


def read_mat(path: Path | str) -> dict[str, np.ndarray]:
    """The arrays of a MATLAB .mat file (HoVer-Net style: inst_map, type_map, inst_type, ...)."""
    from scipy.io import loadmat

    try:
        return {k: np.asarray(v) for k, v in loadmat(path).items() if not k.startswith("__")}
    except Exception as error:
        raise DataFileError(path, f"cannot read .mat file ({type(error).__name__}: {error})") from error


def to_label_image(labels: np.ndarray, path: Path | str) -> np.ndarray:
    """A raw label array as (H, W) int64, or DataFileError naming the file.

    Accepts integer arrays, or floats holding integers; squeezes one singleton leading or trailing axis.
    Rejects colour label images, stacks, negative values and ids above 2**31 - 1.
    """
    array = np.asarray(labels)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise DataFileError(path, f"labels have shape {array.shape}, expected a 2-D (H, W) label image")
    if array.dtype == bool:
        raise DataFileError(path, "labels are a binary mask, expected an instance label image")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise DataFileError(path, "labels are floats with non-integer values")
    elif array.dtype.kind not in "iu":
        raise DataFileError(path, f"labels have dtype {array.dtype}, expected integers")
    if array.size and array.min() < 0:
        raise DataFileError(path, "labels have negative values")
    if array.size and array.max() > MAX_LABEL:
        raise DataFileError(path, f"labels have ids above {MAX_LABEL}")
    return array.astype(np.int64)


def write_png(path: Path, image: np.ndarray) -> None:
    """A uint8 (H, W) / (H, W, 3) or uint16 (H, W) image as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def write_tiff(path: Path, array: np.ndarray) -> None:
    """An array as a zlib-compressed TIFF, channels last for (H, W, C) images."""
    import tifffile

    photometric = "rgb" if array.ndim == 3 and array.shape[2] == 3 else "minisblack"
    planar = "contig" if array.ndim == 3 else None
    tifffile.imwrite(path, np.ascontiguousarray(array), photometric=photometric, planarconfig=planar,
                     compression="zlib")


def png_encodable(image: np.ndarray) -> bool:
    """Whether `write_png` stores this image losslessly."""
    if image.dtype == np.uint8:
        return image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    return image.dtype == np.uint16 and image.ndim == 2
