"""Inference precision: bfloat16 matrix products where the CPU computes them in hardware.

"auto" (the default everywhere percs predicts) runs the model's linear layers, attention and convolutions in
bfloat16 under `torch.autocast` on a CPU with AMX or AVX512-BF16 instructions, and in float32 elsewhere (older
CPUs emulate bfloat16 and would be slower; on a GPU percs keeps float32). Layer norms, softmax statistics and
everything after the network (the stitched fields, `flows_to_masks`, the cell scorer's decision) stay float32.
Training is never affected: the context is entered only around inference. "float32" is the exact arithmetic
the models were trained with; docs/large_images.md gives the speed and AP of both.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "float32", "bfloat16")


def check_precision(precision: str, name: str = "precision") -> str:
    """precision itself when it is one of PRECISIONS; ValueError naming `name` otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def cpu_bfloat16_features() -> list[str]:
    """The CPU's bfloat16 matrix instructions torch can use: a sublist of ["AMX", "AVX512-BF16"]."""
    # torch's probes are private but stable since torch 2.3
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    return [name for name, probe in probes if bool(getattr(torch.cpu, probe, lambda: False)())]


def native_bfloat16(device: torch.device) -> bool:
    """Whether device is a CPU with bfloat16 matrix instructions (AMX tiles or AVX512-BF16)."""
    return torch.device(device).type == "cpu" and bool(cpu_bfloat16_features())


def resolve_precision(precision: str, device: torch.device) -> str:
    """"float32" or "bfloat16": what `precision` (one of PRECISIONS) means on device."""
    if check_precision(precision) != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


@contextlib.contextmanager
def inference_precision(precision: str, device: torch.device):
    """Context running the model at `precision` on device (autocast to bfloat16, or nothing for float32)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bfloat16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
