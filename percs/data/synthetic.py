"""Synthetic cell images with instance masks and cell types, for tests and the out-of-the-box demo.

Five cell types in two modality groups, differing in size, shape, texture and intensity:

    fluorescence (grey, bright cells on a dark background)
      round       small (r 5-7), round, bright, smooth dome
      elongated   medium, 2.2-3x longer than wide, medium brightness, striped along the long axis
      granular    large (r 11-14), irregular outline, dim, speckled with granules
    brightfield (RGB, stained cells absorbing light on a pale background)
      ring        medium, round, dark rim and pale interior
      blob        medium-large, wavy outline, evenly dark, blue-purple

Cells are star-shaped polygons drawn with scikit-image; a third are placed against an existing cell and later
cells may cover up to a fifth of their area with earlier ones (they keep the free part), so cells touch.
The image is blurred (sigma 1), lit unevenly and given Gaussian noise. Everything follows from `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.measure import label as connected_components

from percs.data.format import Dataset, DatasetWriter, canonical_labels


@dataclass(frozen=True)
class CellStyle:
    """How one synthetic cell type looks. Radii in pixels; intensity is the signal in 0..1."""

    name: str
    modality: str
    radius: tuple[float, float]
    elongation: tuple[float, float]
    wobble: float
    intensity: float
    texture: str


CELL_STYLES = (
    CellStyle("round", "fluorescence", (5.0, 7.0), (1.0, 1.2), 0.04, 0.9, "dome"),
    CellStyle("elongated", "fluorescence", (6.0, 8.0), (2.2, 3.0), 0.04, 0.55, "striped"),
    CellStyle("granular", "fluorescence", (11.0, 14.0), (1.0, 1.4), 0.15, 0.35, "speckled"),
    CellStyle("ring", "brightfield", (8.0, 10.0), (1.0, 1.25), 0.06, 0.8, "rim"),
    CellStyle("blob", "brightfield", (9.0, 12.0), (1.1, 1.6), 0.12, 0.6, "flat"),
)
STYLES = {s.name: s for s in CELL_STYLES}
STAIN = {"fluorescence": None, "brightfield": np.array([0.45, 0.75, 0.35], np.float32)}  # absorbance per RGB


@dataclass(frozen=True)
class SyntheticImage:
    """image: (H, W) uint8 (fluorescence) or (H, W, 3) uint8 (brightfield); labels: (H, W) int32 1..N in
    raster order; instance_types[i] is the type of label i + 1."""

    image: np.ndarray
    labels: np.ndarray
    instance_types: tuple[str, ...]
    modality: str


@dataclass(frozen=True)
class _Cells:
    """N cells as arrays: centre (N, 2) (y, x); a >= b semi-axes (N,); angle of the long axis (N,);
    amplitude, phase (N, 4) of the outline's harmonics 2..5; brightness (N,); style index (N,)."""

    centre: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    brightness: np.ndarray
    style: np.ndarray


_HARMONICS = np.arange(2, 6)
_TEXTURES = ("dome", "striped", "speckled", "rim", "flat")
ATTEMPTS = 6  # placements tried per cell


def _place_centres(shape, styles, fill, rng) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 2) keeping 0.75 x (r1 + r2) apart, and their style indices (N,); a third of the tries
    go next to an earlier cell, so that cells touch. All random numbers are drawn up front."""
    radius = np.array([np.mean(s.radius) for s in styles])
    n_wanted = int(fill * shape[0] * shape[1] / np.mean(np.pi * radius**2))
    style = rng.integers(len(styles), size=n_wanted)
    near = (rng.uniform(size=(n_wanted, ATTEMPTS)) < 1 / 3).tolist()
    which = rng.uniform(size=(n_wanted, ATTEMPTS)).tolist()
    reach = rng.uniform(0.8, 1.0, (n_wanted, ATTEMPTS)).tolist()
    phi = rng.uniform(0, 2 * np.pi, (n_wanted, ATTEMPTS)).tolist()
    anywhere = (rng.uniform(size=(n_wanted, ATTEMPTS, 2)) * shape).tolist()
    centres, radii, kept = np.zeros((n_wanted, 2)), np.zeros(n_wanted), []
    for i in range(n_wanted):
        r, n = float(radius[style[i]]), len(kept)
        for j in range(ATTEMPTS):
            if n and near[i][j]:
                k = int(which[i][j] * n)
                d = reach[i][j] * (r + radii[k])
                y, x = centres[k, 0] + d * np.sin(phi[i][j]), centres[k, 1] + d * np.cos(phi[i][j])
            else:
                y, x = anywhere[i][j]
            if not n or (np.hypot(centres[:n, 0] - y, centres[:n, 1] - x) >= 0.75 * (radii[:n] + r)).all():
                centres[n], radii[n] = (y, x), r
                kept.append(i)
                break
    return centres[: len(kept)], style[kept]


def _sample_cells(shape, styles, fill, rng) -> _Cells:
    centre, style = _place_centres(shape, styles, fill, rng)
    n = len(style)
    table = np.array([(*s.radius, *s.elongation, s.wobble, s.intensity) for s in styles]).reshape(-1, 6)[style]
    r, e = rng.uniform(table[:, 0], table[:, 1]), rng.uniform(table[:, 2], table[:, 3])
    amplitude = table[:, 4, None] * rng.uniform(0.3, 1.0, (n, _HARMONICS.size)) / _HARMONICS
    return _Cells(centre, r * np.sqrt(e), r / np.sqrt(e), rng.uniform(0, np.pi, n), amplitude,
                  rng.uniform(0, 2 * np.pi, (n, _HARMONICS.size)), table[:, 5] * rng.uniform(0.85, 1.15, n), style)


def _depth(cells: _Cells, cell: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pixels (y, x) of cells `cell`: normalised distance from the centre (1 on the outline) and the
    coordinate along the long axis in units of a.

    The outline at angle t is the ellipse's radius times (1 + sum_k A_k cos(k t + phase_k)), k = 2..5; the
    harmonics are evaluated as powers of the unit complex number exp(i t) (no trigonometric calls per pixel).
    """
    dy, dx = y - cells.centre[cell, 0], x - cells.centre[cell, 1]
    c, s = np.cos(cells.angle), np.sin(cells.angle)
    u, v = dx * c[cell] + dy * s[cell], dy * c[cell] - dx * s[cell]
    rho = np.hypot(u, v)
    z = np.where(rho > 0, (u + 1j * v) / np.where(rho > 0, rho, 1), 1)
    z2 = z * z
    powers = np.stack([z2, z2 * z, z2 * z2, z2 * z2 * z], 1)
    weights = cells.amplitude * np.exp(1j * cells.phase)
    wobble = (weights[cell] * powers).real.sum(1)
    a, b = cells.a[cell], cells.b[cell]
    return np.hypot(b * u, a * v) / (a * b * (1 + wobble)), u / a


def _paint(shape, cells: _Cells):
    """Each pixel goes to the cell of least normalised depth that covers it (so overlapping outlines touch).

    All cells' bounding boxes are enumerated at once as flat pixel lists. Returns labels (cell index + 1),
    depth and long-axis coordinate per pixel."""
    H, W = shape
    reach = np.maximum(cells.a, cells.b) * (1 + cells.amplitude.sum(1)) + 1
    y0, x0 = (np.clip(np.floor(cells.centre[:, k] - reach), 0, n).astype(np.int64) for k, n in enumerate(shape))
    y1, x1 = (np.clip(np.floor(cells.centre[:, k] + reach) + 1, 0, n).astype(np.int64) for k, n in enumerate(shape))
    h, w = np.maximum(y1 - y0, 0), np.maximum(x1 - x0, 0)
    counts = h * w
    cell = np.repeat(np.arange(counts.size), counts)
    local = np.arange(cell.size) - np.repeat(np.cumsum(counts) - counts, counts)
    y, x = y0[cell] + local // w[cell], x0[cell] + local % w[cell]
    depth, along = _depth(cells, cell, y.astype(np.float64), x.astype(np.float64))
    inside = depth <= 1
    pixel, depth, along, cell = (y * W + x)[inside], depth[inside], along[inside], cell[inside]
    order = np.lexsort((cell, depth, pixel))  # per pixel: least depth first, earlier cell on ties
    pixel, depth, along, cell = pixel[order], depth[order], along[order], cell[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]] if pixel.size else np.zeros(0, bool)
    labels, depth_map, along_map = np.zeros(H * W, np.int32), np.zeros(H * W, np.float32), np.zeros(H * W, np.float32)
    labels[pixel[first]] = cell[first] + 1
    depth_map[pixel[first]], along_map[pixel[first]] = depth[first], along[first]
    return labels.reshape(shape), depth_map.reshape(shape), along_map.reshape(shape)


def _keep_whole_cells(labels: np.ndarray, cells: _Cells) -> np.ndarray:
    """Keeps each cell's largest 4-connected piece, and only cells that kept half their outline's area."""
    pieces = connected_components(labels, background=0, connectivity=1)
    size = np.bincount(pieces.ravel())
    owner = np.zeros(size.size, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    best = np.zeros(cells.a.size + 1, np.int64)
    np.maximum.at(best, owner[1:], size[1:])
    keep = (size == best[owner]) & (owner > 0)
    area = np.r_[0.0, np.pi * cells.a * cells.b]
    keep &= best[owner] >= 0.5 * area[owner]
    return np.where(keep[pieces], labels, 0).astype(np.int32)


def _texture(labels, depth, along, cells: _Cells, styles, rng) -> np.ndarray:
    codes = np.array([_TEXTURES.index(s.texture) for s in styles])
    kind = np.r_[-1, codes[cells.style]][labels]
    d = np.clip(depth, 0, 1)
    speckle = 0.4 + 1.6 * (rng.uniform(0, 1, labels.shape) < 0.3)  # granules of one pixel before the blur
    patterns = (1 - 0.4 * d**2, 0.7 + 0.3 * np.cos(4 * np.pi * along), speckle, np.where(d > 0.65, 1.0, 0.3),
                np.full(labels.shape, 0.9))
    texture = np.zeros(labels.shape, np.float32)
    for code, pattern in enumerate(patterns):
        texture = np.where(kind == code, pattern, texture)
    return (texture * np.r_[0.0, cells.brightness][labels]).astype(np.float32)


def _render(texture: np.ndarray, modality: str, noise: float, rng: np.random.Generator) -> np.ndarray:
    H, W = texture.shape
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    light = 1 + 0.15 * np.sin(2 * np.pi * (y / max(H, 1) + rng.uniform())) * np.cos(np.pi * x / max(W, 1))
    signal = gaussian_filter(texture, 1.0) * light
    if STAIN[modality] is None:
        image = 0.06 + signal + rng.normal(0, noise, signal.shape)
    else:
        absorbance = signal[..., None] * STAIN[modality] * 2
        image = 0.93 * np.exp(-absorbance) + rng.normal(0, noise, signal.shape + (3,))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def synthetic_image(shape: tuple[int, int] = (256, 256), cell_types: tuple[str, ...] = ("round",), seed: int = 0,
                    fill: float = 0.3, noise: float = 0.03) -> SyntheticImage:
    """One image of cells of `cell_types` (names in STYLES, one modality group).

    fill: target fraction of the area covered by cells (fewer where placements fail). noise: std of the
    Gaussian noise on the 0..1 intensity scale.
    """
    unknown = [t for t in cell_types if t not in STYLES]
    if not cell_types or unknown:
        raise ValueError(f"cell_types {cell_types!r} must be non-empty names from {tuple(STYLES)}")
    modalities = {STYLES[t].modality for t in cell_types}
    if len(modalities) != 1:
        raise ValueError(f"cell_types {cell_types!r} mix modality groups {sorted(modalities)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape {shape!r} must be (H, W) with H, W >= 1")
    if not 0 <= fill <= 1 or noise < 0:
        raise ValueError(f"fill={fill} must be in [0, 1] and noise={noise} >= 0")
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    styles = [STYLES[t] for t in cell_types]
    cells = _sample_cells(shape, styles, fill, rng)
    labels, depth, along = _paint(shape, cells)
    labels = _keep_whole_cells(labels, cells)
    texture = _texture(labels, depth, along, cells, styles, rng)
    names = {i + 1: styles[k].name for i, k in enumerate(cells.style)}
    labels, types = canonical_labels(labels, names, "synthetic image")
    modality = modalities.pop()
    return SyntheticImage(_render(texture, modality, noise, rng), labels, types, modality)


def write_synthetic_dataset(out: Path | str, images_per_type: int = 2, mixed_images: int = 2,
                            shape: tuple[int, int] = (256, 256), seed: int = 0, name: str = "synthetic") -> Dataset:
    """A dataset of every style in CELL_STYLES: `images_per_type` one-type images per type (named
    `<type>/<k>`), then `mixed_images` images mixing all types of one modality group (`mixed/<k>`, groups in
    turn). No splits (they come with `percs data build`). Image k of the run uses seed `seed * 1000 + k`."""
    groups = sorted({s.modality for s in CELL_STYLES})
    plan = [(f"{s.name}/{k}", (s.name,)) for s in CELL_STYLES for k in range(images_per_type)]
    for k in range(mixed_images):
        group = groups[k % len(groups)]
        plan.append((f"mixed/{k}", tuple(s.name for s in CELL_STYLES if s.modality == group)))
    with DatasetWriter(out, name, {"generator": "percs.data.synthetic", "seed": seed}) as writer:
        for style in CELL_STYLES:
            writer.add_cell_type(style.name, style.modality)
        for index, (image_name, types) in enumerate(plan):
            sample = synthetic_image(shape, types, seed * 1000 + index)
            instance_types = dict(enumerate(sample.instance_types, start=1))
            meta = {"seed": seed * 1000 + index}
            writer.add_image(image_name, sample.image, sample.labels, instance_types, meta=meta)
        return writer.close()


__all__ = ["CELL_STYLES", "CellStyle", "SyntheticImage", "synthetic_image", "write_synthetic_dataset"]
