"""Input checks and NumPy / torch conversion shared by the kernel wrappers."""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # torch is a core dependency; the guard keeps the kernels importable in stripped environments
    import torch
except ImportError:  # pragma: no cover
    torch = None


def is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda(x: Any) -> bool:
    return is_tensor(x) and x.is_cuda


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A NumPy view of a NumPy array or CPU tensor (CUDA tensors are the caller's business)."""
    if is_tensor(x):
        if x.is_cuda:
            raise ValueError(f"{name} is a CUDA tensor where a CPU array was expected")
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")


def like_input(result: np.ndarray, template: Any):
    """Returns result as the same kind of object as template (NumPy array or CPU tensor)."""
    if is_tensor(template):
        return torch.from_numpy(np.ascontiguousarray(result))
    return result


def check_ndim(x: Any, name: str, allowed: tuple[int, ...]) -> None:
    if not (isinstance(x, np.ndarray) or is_tensor(x)):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    if x.ndim not in allowed:
        expected = " or ".join(str(n) for n in allowed)
        raise ValueError(f"{name} has {x.ndim} dims, expected {expected}")


def dtype_kind(x: Any) -> str:
    """NumPy dtype kind ('i', 'u', 'f', 'b', ...) of an array or tensor."""
    if is_tensor(x):
        if x.dtype == torch.bool:
            return "b"
        if x.dtype.is_floating_point or x.dtype.is_complex:
            return "f"
        return "u" if x.dtype == torch.uint8 else "i"
    return x.dtype.kind


def check_labels(labels: Any, name: str = "labels", ndims: tuple[int, ...] = (2,)) -> None:
    """Integer label images: bool and float are refused, negative labels too."""
    check_ndim(labels, name, ndims)
    kind = dtype_kind(labels)
    if kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")
    size = labels.numel() if is_tensor(labels) else labels.size
    if kind == "i" and size and bool((labels < 0).any()):
        raise ValueError(f"{name} has negative labels")


def check_finite(x: Any, name: str) -> None:
    if dtype_kind(x) != "f":
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    finite = torch.isfinite(x).all() if is_tensor(x) else np.isfinite(x).all()
    if not bool(finite):
        raise ValueError(f"{name} has non-finite values")
