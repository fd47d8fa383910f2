"""A decoder for 16-bit colour PNGs, which Pillow reads as 8 bit (it keeps only the high byte).

The Cellpose data store two-colour fluorescence as 16-bit RGB PNGs (../shared/data/cellpose_styles), so
percs reads such files itself: non-interlaced PNGs of bit depth 16 and colour type 2 (RGB), 4 (grey + alpha)
or 6 (RGBA); alpha is dropped, as for every PNG percs reads. Rows filtered with None, Sub or Up are
reconstructed with array operations, Average and Paeth pixel by pixel (slower, and rarer in practice).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAMPLES = {2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (alpha last)


def png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's first 29 bytes, or None if not a PNG."""
    if len(data) < 29 or data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour, interlace


def is_png16_colour(path: Path) -> bool:
    with open(path, "rb") as f:
        header = png_header(f.read(29))
    return header is not None and header[2] == 16 and header[3] in SAMPLES


def _chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def unfilter(filters: np.ndarray, filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Reconstructs PNG scanlines: filters (H,) filter type per row, filtered (H, row bytes) uint8."""
    out = np.empty_like(filtered)
    previous = np.zeros(filtered.shape[1], np.int64)
    for y, kind in enumerate(filters):
        line = filtered[y].astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 1:
            row = np.cumsum(line.reshape(-1, bpp), axis=0).ravel() % 256
        elif kind == 2:
            row = (line + previous) % 256
        elif kind in (3, 4):
            row = np.zeros_like(line)
            left, up_left = np.zeros(bpp, np.int64), np.zeros(bpp, np.int64)
            for x in range(0, line.size, bpp):
                up = previous[x : x + bpp]
                guess = (left + up) // 2 if kind == 3 else _paeth(left, up, up_left)
                left = row[x : x + bpp] = (line[x : x + bpp] + guess) % 256
                up_left = up
        else:
            raise ValueError(f"row {y} has PNG filter type {kind}, expected 0..4")
        out[y] = row
        previous = row
    return out


def read_png16(path: Path | str) -> np.ndarray:
    """(H, W, 3) uint16 RGB (or (H, W) for grey + alpha) of a 16-bit colour PNG; ValueError when malformed."""
    data = Path(path).read_bytes()
    header = png_header(data)
    if header is None:
        raise ValueError("not a PNG file")
    width, height, depth, colour, interlace = header
    if depth != 16 or colour not in SAMPLES or interlace:
        raise ValueError(f"bit depth {depth}, colour type {colour}, interlace {interlace}: expected 16, 2/4/6, 0")
    samples = SAMPLES[colour]
    stride = 1 + width * samples * 2
    raw = np.frombuffer(zlib.decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT")), np.uint8)
    if raw.size < height * stride:
        raise ValueError(f"image data is {raw.size} bytes, expected {height * stride} (truncated file)")
    rows = raw[: height * stride].reshape(height, stride)
    pixels = unfilter(rows[:, 0], rows[:, 1:], samples * 2).view(">u2").reshape(height, width, samples)
    keep = pixels[..., :3] if colour in (2, 6) else pixels[..., 0]
    return np.ascontiguousarray(keep, dtype=np.uint16)
