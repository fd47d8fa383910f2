"""Stacks and multichannel images on import: which axis of an image file is which, and what is kept of it.

An image file decodes to an array whose axes have roles: Y and X (the image plane, sized like the labels), C
(channels: colour samples or stains) and Z (planes: z-slices or time points). The roles come from, in order:

1. `StackOptions.axes` (`--axes`), letters Y, X, C, Z for every image file (e.g. ZYX, CYX, ZCYX, YXC);
2. a TIFF's series axes (tifffile reads them from ImageJ, OME and tifffile metadata; S counts as C, T as Z),
   where its Y and X sizes match the labels (tifffile's own default axes for an unlabelled array may not);
3. for PNG and JPEG: YX, or YXC;
4. otherwise they are guessed, and the guess is reported with the option that overrides it: Y, X are the
   first two axes (with a trailing axis) or the last two that are sized like the labels; an axis after them
   is C; one axis before them is Z when a plane is asked for (`plane` without `channels`), C otherwise (as
   percs always read them); two axes before them are Z then C (ImageJ's order).

Then a Z axis is reduced by `plane` ("mid": plane (n - 1) // 2, "max": the maximum projection, or a plane
index; without it an image with planes is an error), `channels` keeps the listed channels in that order (one
channel: a grey image), and the result is (H, W) or (H, W, C). A file whose array is already (H, W) or (H, W, C)
and of which everything is kept can be copied byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from percs.data.io import DataFileError

PLANE_CHOICES = ("mid", "max")
ROLE_OF_LETTER = {"Y": "Y", "X": "X", "C": "C", "S": "C", "Z": "Z", "T": "Z"}
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class StackOptions:
    """What to keep of stacks and multichannel images (see the module docstring).

    plane: "mid", "max" or a plane index (>= 0) for images with a plane axis; None: such images are errors.
    channels: channel indices to keep, in this order; None: all. axes: the axes of every image file (letters
    Y, X, C, Z, each at most once); None: from TIFF metadata, else guessed (and reported).
    """

    plane: str | int | None = None
    channels: tuple[int, ...] | None = None
    axes: str | None = None

    def check(self) -> None:
        if self.plane is not None and self.plane not in PLANE_CHOICES and not (
                isinstance(self.plane, int) and self.plane >= 0):
            raise ValueError(f"plane {self.plane!r} is not mid, max or a plane index >= 0")
        if self.channels is not None:
            parse_channels(",".join(str(c) for c in self.channels), "channels")
        if self.axes is not None:
            parse_axes(self.axes, "axes")

    def as_meta(self) -> dict:
        """The options that were given, for a manifest's meta."""
        meta = {"plane": self.plane, "channels": None if self.channels is None else list(self.channels),
                "axes": self.axes}
        return {k: v for k, v in meta.items() if v is not None}


def parse_plane(text: str | None, what: str = "--plane") -> str | int | None:
    """'mid', 'max' or a plane index ('3') -> "mid", "max" or 3."""
    if text is None:
        return None
    text = text.strip().lower()
    if text in PLANE_CHOICES:
        return text
    if not text.isdigit():
        raise ValueError(f"{what} {text!r}: expected mid (the middle plane), max (maximum projection) or a plane "
                         "index (0, 1, ...)")
    return int(text)


def parse_channels(text: str | None, what: str = "--channels") -> tuple[int, ...] | None:
    """'0' or '0,2' -> (0,) or (0, 2): channel indices, each once."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")]
    if not items or not all(s.isdigit() for s in items):
        raise ValueError(f"{what} {text!r}: expected channel indices separated by commas, e.g. 0 or 0,1")
    channels = tuple(int(s) for s in items)
    if len(set(channels)) != len(channels):
        raise ValueError(f"{what} {text!r}: a channel is listed twice")
    return channels


def parse_axes(text: str | None, what: str = "--axes") -> str | None:
    """'zyx' -> 'ZYX', after checking it holds Y and X once and C, Z at most once, nothing else."""
    if text is None:
        return None
    axes = text.strip().upper()
    if sorted(set(axes) - set("YXCZ")) or any(axes.count(a) > 1 for a in axes) or not {"Y", "X"} <= set(axes):
        raise ValueError(f"{what} {text!r}: expected the letters Y and X once, and C (channels) and Z (planes) "
                         "at most once, one per axis of the image files, e.g. ZYX, CYX, ZCYX or YXC")
    return axes


@dataclass(frozen=True)
class Selected:
    """An image file's array as the format stores it.

    image: (H, W) or (H, W, C). axes: the roles of the file's axes (e.g. "ZYX"). guess: what was guessed and the
    option that overrides it (None: nothing guessed). verbatim: the file's array unchanged (it may be copied).
    selection: what was taken ({"axes", "plane", "channels"}; empty for a plain (H, W) or (H, W, C) file).
    """

    image: np.ndarray
    axes: str
    guess: str | None
    verbatim: bool
    selection: dict = field(default_factory=dict)


def file_axes(path: Path, ndim: int) -> str | None:
    """The axis letters the file states: a TIFF's series axes (None when it has none), YX / YXC otherwise."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return "YX" if ndim == 2 else "YXC"
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes
    except Exception:  # the pixels were read already; axes metadata that cannot be read is no metadata
        return None


def select_stack(image: np.ndarray, path: Path, labels_shape: tuple[int, ...], labels_path: Path,
                 options: StackOptions = StackOptions()) -> Selected:
    """The array `image` read from `path`, reduced to (H, W) or (H, W, C) by `options`; errors name the file."""
    known = options.axes or file_axes(path, image.ndim)
    roles, guess = resolve_axes(image.shape, labels_shape, known, options, path, labels_path)
    axes = "".join(roles)
    selection = {} if axes in ("YX", "YXC") else {"axes": axes}
    out = image
    if "Z" in roles:
        described = f"axes {axes}" + (", guessed: no axes metadata; --axes overrides" if guess else "")
        out, selection["plane"] = _take_plane(out, roles.index("Z"), options.plane, described, path)
        roles = [r for r in roles if r != "Z"]
    order = [roles.index(r) for r in "YXC" if r in roles]
    out = np.transpose(out, order) if order != list(range(out.ndim)) else out
    if options.channels is not None:
        out = _take_channels(out, options.channels, axes, path)
        if "C" in roles:
            selection["channels"] = list(options.channels)
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    return Selected(out, axes, guess, out is image, selection)


def resolve_axes(shape: tuple[int, ...], labels_shape: tuple[int, ...], known: str | None, options: StackOptions,
                 path: Path, labels_path: Path) -> tuple[list[str], str | None]:
    """The role (Y, X, C, Z) of every axis of an array of `shape`, and the guess made (None: none)."""
    roles = [ROLE_OF_LETTER.get(a, "?") for a in known] if known and len(known) == len(shape) else ["?"] * len(shape)
    if options.axes and len(options.axes) != len(shape):
        raise DataFileError(path, f"image has shape {shape}, {len(shape)} axes, but --axes is {options.axes}")
    if "Y" in roles and "X" in roles and not _plane_fits(roles, shape, labels_shape):
        if options.axes or (known and path.suffix.lower() not in TIFF_SUFFIXES):
            y, x = shape[roles.index("Y")], shape[roles.index("X")]
            raise DataFileError(path, f"image is {(y, x)} but its labels {labels_path} are {labels_shape}")
        roles = ["?"] * len(shape)  # tifffile's default axes of an unlabelled array need not be the image plane
    if "Y" not in roles or "X" not in roles:
        roles = ["?"] * len(shape)
        start = _find_plane(shape, labels_shape)
        if start is None:
            raise DataFileError(path, f"image has shape {shape} but its labels {labels_path} are {labels_shape}: "
                                      "no two neighbouring axes of the image match them")
        roles[start:start + 2] = ["Y", "X"]
    roles, guessed = _fill_unknown(roles, options, shape, path)
    _check_roles(roles, shape, path)
    return roles, _guess_message(roles, guessed, shape) if guessed else None


def _plane_fits(roles: list[str], shape, labels_shape) -> bool:
    y, x = roles.index("Y"), roles.index("X")
    return y < x and (shape[y], shape[x]) == tuple(labels_shape)


def _find_plane(shape, labels_shape) -> int | None:
    """The first axis of the image plane: (H, W, C) before (..., H, W), as percs always read 3-D arrays."""
    starts = ([len(shape) - 3] if len(shape) >= 3 else []) + [len(shape) - 2]
    for start in starts:
        if start >= 0 and tuple(shape[start:start + 2]) == tuple(labels_shape):
            return start
    return None


def _fill_unknown(roles: list[str], options: StackOptions, shape, path: Path) -> tuple[list[str], list[int]]:
    """Roles for the '?' axes (C after X; before Y one axis Z or C, two Z then C) and the axes guessed (those
    that neither metadata nor the options settled, singletons aside)."""
    roles, guessed = list(roles), []
    for i in range(roles.index("X") + 1, len(roles)):
        if roles[i] == "?":
            roles[i] = "C"
            guessed.append(i)
    leading = [i for i in range(roles.index("Y")) if roles[i] == "?"]
    if len(leading) == 1:
        roles[leading[0]], guess = _one_leading_role(roles, options, shape[leading[0]], path)
        guessed += leading if guess else []
    elif len(leading) == 2 and "C" not in roles and "Z" not in roles:
        roles[leading[0]], roles[leading[1]] = "Z", "C"
        guessed += leading
    elif leading:
        raise DataFileError(path, f"image has shape {shape}: percs takes one plane axis and one channel axis "
                                  "besides Y, X; give the axes with --axes (e.g. ZCYX)")
    return roles, sorted(i for i in guessed if shape[i] > 1)


def _one_leading_role(roles: list[str], options: StackOptions, size: int, path: Path) -> tuple[str, bool]:
    """The role of the one unknown axis before Y, X and whether it is a guess."""
    if "C" in roles or "Z" in roles:
        return ("Z" if "C" in roles else "C"), False
    if options.plane is not None and options.channels is not None and size > 1:
        raise DataFileError(path, f"image has one axis of {size} besides Y, X and no axes metadata: both --plane "
                                  "and --channels were given, so it is unclear whether it holds planes or "
                                  "channels; give --axes ZYX or CYX")
    if options.plane is not None:
        return "Z", False
    return "C", options.channels is None


def _check_roles(roles: list[str], shape, path: Path) -> None:
    if any(roles.count(r) > 1 for r in "YXCZ") or "?" in roles:
        raise DataFileError(path, f"image has shape {shape} with axes {''.join(roles)}: percs takes Y, X, at most "
                                  "one channel axis C and one plane axis Z; give the axes with --axes")


def _guess_message(roles: list[str], guessed: list[int], shape) -> str:
    axes = "".join(roles)
    what = ", ".join(f"axis {i} ({shape[i]}) as {'planes (Z)' if roles[i] == 'Z' else 'channels (C)'}"
                     for i in guessed)
    if roles[guessed[0]] == "C" and guessed[0] < roles.index("Y"):
        fix = f"if it holds z-planes or time points give --plane mid|max|N (or --axes Z{axes[1:]})"
    elif len(guessed) == 2:
        fix = "ImageJ's order; if channels come first give --axes CZ" + axes[2:]
    else:
        fix = "give --axes to say otherwise"
    return f"guessed axes {axes} for images of shape {shape} without axes metadata: {what}; {fix}"


def _take_plane(image: np.ndarray, axis: int, plane: str | int | None, axes: str, path: Path):
    n = image.shape[axis]
    if plane is None:
        raise DataFileError(path, f"image has shape {image.shape}, a stack of {n} planes ({axes}); choose what to "
                                  "keep with --plane mid|max|N (the middle plane, the maximum projection or plane N)")
    if plane == "max":
        return image.max(axis=axis), "max"
    index = (n - 1) // 2 if plane == "mid" else int(plane)
    if index >= n:
        raise DataFileError(path, f"--plane {plane}: image has {n} planes (0..{n - 1}; {axes})")
    return np.take(image, index, axis=axis), index


def _take_channels(image: np.ndarray, channels: tuple[int, ...], axes: str, path: Path) -> np.ndarray:
    n = image.shape[2] if image.ndim == 3 else 1
    missing = [c for c in channels if c >= n]
    if missing:
        raise DataFileError(path, f"--channels {','.join(map(str, channels))}: image has {n} channel(s) "
                                  f"(0..{n - 1}, axes {axes})")
    if image.ndim == 2 or list(channels) == list(range(n)):
        return image
    return image[..., list(channels)]
