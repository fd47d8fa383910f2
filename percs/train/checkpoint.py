"""Checkpoint files: written atomically, checked with a SHA-256 digest on load, RNG states captured and restored.

File layout: the line `percs-checkpoint sha256=<64 hex digits>\\n`, then a `torch.save` payload whose digest
that is. Writing goes to `<name>.tmp` then `os.replace`, so a crash never leaves a half-written checkpoint under
the real name. The payload holds only tensors, numbers, strings and containers (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"percs-checkpoint sha256="
HEADER_SIZE = len(MAGIC) + 64 + 1


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or altered; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Writes `state` to `path` atomically (tmp file, fsync, os.replace) with its SHA-256 in the header."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(MAGIC + digest + b"\n")
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict saved by `save_checkpoint`, after checking its digest (CheckpointError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read ({error.strerror or error})") from None
    header, payload = data[:HEADER_SIZE], data[HEADER_SIZE:]
    if not header.startswith(MAGIC) or not header.endswith(b"\n"):
        raise CheckpointError(f"checkpoint {path} is not a percs checkpoint (no checksum header)")
    expected = header[len(MAGIC) : -1].decode("ascii", "replace")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual} != {expected} in its header")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (CPU and every CUDA device), weights_only-loadable."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _plain(random.getstate()),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value
