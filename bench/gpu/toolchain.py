"""Stage `build`: what the machine has, the carried wheels it lacks, and percs built with its CUDA kernels.

On the GPU machine (no package index) every build-time and runtime package percs needs is checked by version;
the missing or too old ones are installed from the carry folder's wheels (`pip --no-index --find-links`)
into WORK/site, which check.sh puts first on PYTHONPATH (the machine's environment is not written to), then
percs is built with `PERCS_CUDA=ON` for the GPU's own architecture (the default list of four takes
longer to compile) and installed. When that cannot be done (no Python.h, no nvcc, a compile error), the wheel
that pack.py prebuilt for Python 3.12 with the default architectures is installed instead, so that the other
stages still run on the GPU, and the stage is reported as failed with the reason.
The CPU dry run checks the same things, resolves the carried wheels for the GPU machine's Python and platform,
and compiles nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from common import CARRY_WHEELS, Context, Part, run_logged, tail

# distribution -> minimum version: pyproject.toml's build requirements and dependencies that the GPU image
# may lack or hold too old (its package list: ../.library/device/KINDS.md), and the Cellpose peer's.
BUILD = {"scikit-build-core": "0.10", "pybind11": "2.12", "ninja": "1.10", "packaging": "23.2",
         "pathspec": "0.12"}
RUNTIME = {"fastremap": "1.14", "numpy": "1.24", "scipy": "1.10", "numba": "0.58", "scikit-image": "0.21",
           "tifffile": "2023.1", "tqdm": "4.60", "torch": "2.4", "pytest": "7", "hypothesis": "6.80"}
PEER = {"cellpose": "4.2.1", "fill-voids": "2.0"}
CMAKE_MINIMUM = (3, 24)
GPU_PYTHON = "3.12"  # the GPU machine's interpreter, for which pack.py fetches the compiled wheels
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "linux_x86_64")  # the last: percs' own wheel, built by pack.py


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def too_old(version: str | None, minimum: str) -> bool:
    from packaging.version import Version

    return version is None or Version(version) < Version(minimum)


def requirement_table(requirements: dict[str, str]) -> dict[str, dict]:
    """{distribution: {"installed", "minimum", "ok"}} for this interpreter."""
    table = {}
    for name, minimum in requirements.items():
        version = installed_version(name)
        table[name] = {"installed": version, "minimum": minimum, "ok": not too_old(version, minimum)}
    return table


def command_version(command: list[str]) -> str | None:
    """The first line of `command`'s output that names a version, or None when the program is missing."""
    if shutil.which(command[0]) is None:
        return None
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in output.splitlines() if any(c.isdigit() for c in line)]
    named = [line for line in lines if "release" in line or "version" in line.lower()]
    return (named or lines or [None])[0]


def cmake_ok() -> tuple[bool, str | None]:
    text = command_version(["cmake", "--version"])
    if text is None:
        return False, None
    version = tuple(int(p) for p in text.split()[-1].split("-")[0].split(".")[:2])
    return version >= CMAKE_MINIMUM, text


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def find_sanitizer() -> str | None:
    for candidate in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def environment() -> dict:
    """The machine as the report states it: GPU, driver, toolkit, Python, torch, CPU cores, percs' backends."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "nvcc": command_version([find_nvcc() or "nvcc", "--version"]),
           "compute_sanitizer": command_version([find_sanitizer() or "compute-sanitizer", "--version"]),
           "cmake": cmake_ok()[1], "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
        env["driver"] = command_version(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    try:
        from percs.info import info

        env["percs"] = info()
    except ImportError as error:
        env["percs"] = f"not importable: {error}"
    return env


def cuda_architecture() -> str:
    """The first GPU's architecture as CMAKE_CUDA_ARCHITECTURES names it (9.0 -> "90-real")."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}{minor}-real"


def install_missing(ctx: Context, part: Part, requirements: dict[str, str]) -> list[str]:
    """Installs each distribution of `requirements` that is missing or too old from the carried wheels (one pip
    call each, so one that cannot be had does not stop the others); returns those still unmet."""
    wanted = [name for name, row in requirement_table(requirements).items() if not row["ok"]]
    for name in wanted:
        result = run_logged([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
                             "--upgrade", "--target", str(ctx.site), "--find-links", str(ctx.path(CARRY_WHEELS)),
                             name], ctx.log("build"))
        part.put(("wheel_installs", name), {"exit_status": result.returncode, "output": tail(result.stdout, 4)})
    return [name for name, row in requirement_table({n: requirements[n] for n in wanted}).items() if not row["ok"]]


def resolve_wheels(ctx: Context, part: Part, names: list[str]) -> None:
    """Dry run: each carried wheel named is found for the GPU machine's Python and platform, without an index."""
    wheels = ctx.path(CARRY_WHEELS)
    if not wheels.is_dir():
        part.put(("wheels_for_gpu_python",), "no wheels folder in the carry (packed with --no-wheels)")
        return
    with tempfile.TemporaryDirectory() as target:
        command = [sys.executable, "-m", "pip", "download", "--no-index", "--no-deps", "--only-binary=:all:",
                   "--find-links", str(wheels), "--python-version", GPU_PYTHON, "--implementation", "cp",
                   *[f"--platform={p}" for p in PLATFORMS], "-d", target, *names]
        result = run_logged(command, ctx.log("build"))
        part.put(("wheels_for_gpu_python",), {"resolved": result.returncode == 0, "names": names,
                                              "output": tail(result.stdout, 8)})
        if result.returncode:
            raise RuntimeError(f"the carried wheels do not resolve for Python {GPU_PYTHON}: {tail(result.stdout, 3)}")


def python_headers() -> str | None:
    """The folder holding this interpreter's Python.h (CMake's Development.Module needs it), or None."""
    import sysconfig

    include = Path(sysconfig.get_paths()["include"])
    return str(include) if (include / "Python.h").is_file() else None


def build_percs(ctx: Context, part: Part) -> bool:
    """pip-installs percs from this checkout with its CUDA kernels for this GPU into ctx.site (no index, no build
    isolation: the build tools come from the machine or ctx.site); True on success."""
    env = {"PERCS_CUDA": "ON", "CUDACXX": find_nvcc() or "nvcc", "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
               "--no-cache-dir", "--upgrade", "--target", str(ctx.site), "-Cbuild-dir=build/gpu-check",
               f"-Ccmake.define.CMAKE_CUDA_ARCHITECTURES={cuda_architecture()}", "."]
    result = run_logged(command, ctx.log("build"), env)
    part.put(("build_cuda",), {"command": " ".join(command), "env": env, "exit_status": result.returncode,
                               "output": tail(result.stdout, 25)})
    return result.returncode == 0


def install_prebuilt(ctx: Context, part: Part) -> bool:
    """Installs the percs wheel that pack.py built for this Python (CUDA kernels for the default architectures,
    from the commit carry.json names); True on success."""
    wheels = sorted(ctx.path(CARRY_WHEELS).glob(f"percs-*-cp{GPU_PYTHON.replace('.', '')}-*.whl"))
    if not wheels:
        part.put(("prebuilt_wheel",), "none in the carry")
        return False
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--no-cache-dir",
               "--target", str(ctx.site), str(wheels[-1])]
    result = run_logged(command, ctx.log("build"))
    part.put(("prebuilt_wheel",), {"wheel": wheels[-1].name, "exit_status": result.returncode,
                                   "output": tail(result.stdout, 5)})
    return result.returncode == 0


def installed_info(ctx: Context) -> dict | str:
    """percs.info() of the installed percs, read in a fresh interpreter outside the source tree."""
    code = "import json, percs.info; print(json.dumps(percs.info.info()))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ctx.work, capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else tail(result.stderr, 5)


def unmet_toolchain(ctx: Context, part: Part) -> list[str]:
    """Installs the missing build and runtime packages from the carry; what is still missing after that."""
    unmet = install_missing(ctx, part, {**BUILD, **RUNTIME})
    install_missing(ctx, part, PEER)  # the Cellpose peer is optional: the bench stage says when it is missing
    if not cmake_ok()[0]:
        unmet.append(f"cmake >= {'.'.join(map(str, CMAKE_MINIMUM))}")
    if find_nvcc() is None:
        unmet.append("nvcc")
    if python_headers() is None:
        unmet.append("Python.h (the python3-dev headers)")
    return unmet


def run(ctx: Context, part: Part) -> None:
    cmake, cmake_text = cmake_ok()
    part.put(("toolchain",), {"cmake": cmake_text, "cmake_ok": cmake, "nvcc": find_nvcc(),
                              "python_headers": python_headers(), "build": requirement_table(BUILD),
                              "runtime": requirement_table(RUNTIME), "peer": requirement_table(PEER)})
    if ctx.dry_run:
        resolve_wheels(ctx, part, [*BUILD, "fastremap", *PEER, "percs"])
        part.put(("installed",), installed_info(ctx))
        part.finish("passed", "dry run: toolchain and wheels checked, nothing compiled (percs as installed)")
        return
    unmet = unmet_toolchain(ctx, part)
    if not unmet and build_percs(ctx, part):
        part.put(("installed",), installed_info(ctx))
        part.finish("passed", f"percs built here with its CUDA kernels for {cuda_architecture()}")
        return
    why = f"missing here: {', '.join(unmet)}" if unmet else "the CUDA build failed"
    prebuilt = install_prebuilt(ctx, part)
    part.put(("installed",), installed_info(ctx))
    part.finish("failed", f"{why}; " + ("installed the wheel pack.py prebuilt (see carry.json) so that the "
                                        "other stages run" if prebuilt else "no usable prebuilt wheel either"))
