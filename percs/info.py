"""What this installation of percs can do: versions, kernel backends (compiled, and usable here), devices."""

from __future__ import annotations

import platform

from percs import __version__, _backend


def backends() -> dict[str, dict]:
    """Each kernel backend: compiled (its module imports), usable (it can run on this machine now) and, when it
    cannot, why not. The CUDA kernels take torch CUDA tensors, so they need a device, its driver and a CUDA torch."""
    cpu = {"compiled": True, "usable": True, "openmp": bool(_backend.cpu.openmp),
           "threads": _backend.cpu.max_threads()}
    compiled = _backend._cuda is not None
    devices = _backend._cuda.device_count() if compiled else 0
    reasons = _cuda_unusable_reasons(devices)
    cuda = {"compiled": compiled, "usable": not reasons, "devices": devices}
    if reasons:
        cuda["not_usable_because"] = "; ".join(reasons)
    return {"cpu": cpu, "cuda": cuda}


def _cuda_unusable_reasons(devices: int) -> list[str]:
    if _backend._cuda is None:
        return [f"percs._cuda was not compiled (no nvcc at build time) or does not load: {_backend.CUDA_IMPORT_ERROR}"]
    reasons = [] if devices else ["no CUDA device or driver on this machine"]
    try:
        import torch
    except ImportError:
        return reasons + ["torch is not installed"]
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    elif devices and not torch.cuda.is_available():
        reasons.append("torch sees no CUDA device")
    return reasons


def cpu_precision() -> dict:
    """What the default `predict.precision` ("auto", `percs.model.precision`) runs on this machine's CPU, and why."""
    import torch

    from percs.model.precision import cpu_bfloat16_features, resolve_precision

    features = cpu_bfloat16_features()
    why = (f"the CPU computes bfloat16 in hardware ({', '.join(features)})" if features
           else "the CPU has no AMX or AVX512-BF16: bfloat16 would be emulated, slower than float32")
    return {"auto": resolve_precision("auto", torch.device("cpu")), "because": why,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def info() -> dict:
    """A JSON-ready description of the installation."""
    try:
        import torch

        torch_version, torch_cuda = torch.__version__, torch.version.cuda
    except ImportError:
        torch_version = torch_cuda = None
    report = {
        "percs": __version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "torch_cuda": torch_cuda,
        "backends": backends(),
    }
    if torch_version is not None:
        report["inference_precision_on_cpu"] = cpu_precision()
    return report
