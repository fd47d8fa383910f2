"""16-bit colour PNGs, which Pillow reads as 8 bit (it keeps only the high byte), decoded by imagecodecs (libpng).

The Cellpose data store two-colour fluorescence as 16-bit RGB PNGs (../shared/data/cellpose_styles), so
percs reads such files itself: PNGs of bit depth 16 and colour type 2 (RGB), 4 (grey + alpha) or 6 (RGBA);
alpha is dropped, as for every PNG percs reads.
"""

from __future__ import annotations

import struct
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


def read_png16(path: Path | str) -> np.ndarray:
    """(H, W, 3) uint16 RGB (or (H, W) for grey + alpha) of a 16-bit colour PNG; ValueError when malformed
    (truncated image data included)."""
    import imagecodecs

    data = Path(path).read_bytes()
    header = png_header(data)
    if header is None:
        raise ValueError("not a PNG file")
    _, _, depth, colour, _ = header
    if depth != 16 or colour not in SAMPLES:
        raise ValueError(f"bit depth {depth}, colour type {colour}: expected 16 and 2, 4 or 6")
    try:
        pixels = imagecodecs.png_decode(data)
    except imagecodecs.PngError as error:
        raise ValueError(f"corrupt or truncated PNG data: {error}") from None
    keep = pixels[..., :3] if colour in (2, 6) else pixels[..., 0]
    return np.ascontiguousarray(keep, dtype=np.uint16)
