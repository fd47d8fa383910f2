"""Writes the GPU check's carry folder (default gpu-carry/, git-ignored), everything the check reads there:

    python bench/gpu/pack.py [--out gpu-carry] [--per-type 3] [--no-wheels] [--wheel-python PY] [--overwrite]

- shared/weights/dinov2_vits14_pretrain.pth: the DINOv2 ViT-S/14 state dict of ../shared/weights as float16
  (44 MB instead of 88; percs' loader reads it back as float32). Checked here: it loads through
  `load_backbone`, and the rounding error of the weights and of the backbone's features are recorded.
- shared/data/cellpose_styles: every label image of cellpose_styles (the CUDA tests' real images) and
  bench/bench_predict.py's image, laid out as ../shared is, so that PERCS_SHARED can point there.
- benchmark/: a small percs-mini, made as the README's Benchmarks section makes percs-mini (`percs data import`
  of cellpose_styles and dsb2018_stage1_test, `percs data build` with the same novel types, seed 0), from the
  first --per-type images of each type and group, with one mixed version per evaluation image.
- wheels/: what the GPU machine's image lacks or may hold too old (fastremap; the Cellpose peer and fill-voids;
  scikit-build-core, pybind11, ninja, packaging, pathspec), for its Python 3.12, fetched with pip from the
  configured index. CMake (27 MB as a wheel) does not fit beside the weights: the image's own is used. Also
  percs' own wheel for Python 3.12 with the CUDA kernels (built here, with a Python 3.12 found here): the check
  installs it only when it cannot build percs on the GPU machine.
- carry.json: what is in the folder, the checkout's commit, sizes; the folder must stay under 60 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (CARRY_BENCHMARK, CARRY_MANIFEST, CARRY_STYLES, CARRY_WEIGHTS, CARRY_WHEELS,  # noqa: E402
                    PREDICT_IMAGE, REPO_ROOT)
from toolchain import GPU_PYTHON, PLATFORMS  # noqa: E402

LIMIT_MIB = 60
WEIGHTS = "weights/dinov2_vits14_pretrain.pth"
WHEELS = ("fastremap==1.21.0", "fill-voids==2.1.2", "cellpose==4.2.1", "scikit-build-core==1.1.0",
          "pybind11==3.1.0", "ninja==1.13.2", "packaging==26.3", "pathspec==1.1.1")
NOVEL_TYPES = "neurocyte,style2,fluo_tissue_elongated,brightfield_hematoxylin_lightbg"  # percs-mini's
DSB_MODALITIES = "brightfield_HE_pink=brightfield,brightfield_hematoxylin_lightbg=brightfield"


def default_shared() -> Path:
    return Path(os.environ.get("PERCS_SHARED", REPO_ROOT.parent / "shared"))


def pack_weights(shared: Path, out: Path) -> dict:
    """The float32 state dict saved as float16, read back through percs' loader and compared."""
    import torch

    from percs.model.backbone_weights import load_backbone

    source = shared / WEIGHTS
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {key: value.to(torch.float16) if value.is_floating_point() else value for key, value in state.items()}
    target = out / CARRY_WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, target)
    floats = [k for k, v in state.items() if v.is_floating_point()]
    normal = torch.finfo(torch.float16).tiny  # below it float16 is subnormal: absolute, not relative, rounding
    relative = 0.0
    for key in floats:
        values = state[key][state[key].abs() >= normal]
        if values.numel():
            rounded = half[key][state[key].abs() >= normal].float()
            relative = max(relative, float(((rounded - values) / values).abs().max()))
    flushed = sum(int(((half[k] == 0) & (state[k] != 0)).sum()) for k in floats)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = load_backbone("vits14", source).eval()(images).features
        packed_backbone = load_backbone("vits14", target).eval()
        features = packed_backbone(images).features
    return {"source": str(source), "dtype": "float16", "loads_as": str(next(packed_backbone.parameters()).dtype),
            "max_relative_rounding_normal_range": relative, "values_flushed_to_zero": flushed,
            "features_max_abs_difference": float((features - reference).abs().max()),
            "features_max_abs": float(reference.abs().max())}


def pack_styles(shared: Path, out: Path) -> dict:
    """cellpose_styles' label images and bench_predict's image, as ../shared holds them."""
    source, target = shared / "data" / "cellpose_styles", out / CARRY_STYLES
    masks = sorted(source.glob("*/*_masks.png"))
    for path in [*masks, source / f"{PREDICT_IMAGE}_img.png"]:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.parent.name / path.name)
    return {"label_images": len(masks), "image": PREDICT_IMAGE}


def link_cellpose_subset(source: Path, target: Path, per_type: int) -> None:
    for folder in sorted(d for d in source.iterdir() if d.is_dir()):
        for image in sorted(folder.glob("*_img.png"))[:per_type]:
            (target / folder.name).mkdir(parents=True, exist_ok=True)
            for path in (image, image.with_name(image.name.replace("_img", "_masks"))):
                (target / folder.name / path.name).symlink_to(path)


def link_dsb_subset(source: Path, target: Path, per_type: int) -> None:
    """The first per_type images (by id) of each group, with a type table naming only them."""
    rows, kept = json.loads((source / "index.json").read_text()), []
    for group in sorted({row["group"] for row in rows}):
        kept += sorted((r for r in rows if r["group"] == group), key=lambda r: r["id"])[:per_type]
    for folder, suffix in (("images", ".png"), ("masks", ".tif")):
        (target / folder).mkdir(parents=True)
        for row in kept:
            (target / folder / f"{row['id']}{suffix}").symlink_to(source / folder / f"{row['id']}{suffix}")
    (target / "index.json").write_text(json.dumps(kept))


def percs_cli(*args: str) -> None:
    """A `percs` command, through the CLI's own parser, in this process."""
    from percs.cli import main

    if main(list(args)) != 0:
        raise RuntimeError(f"percs {' '.join(args)} failed")


def pack_benchmark(shared: Path, out: Path, per_type: int) -> dict:
    from percs.data.format import load_dataset

    data = shared / "data"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        link_cellpose_subset(data / "cellpose_styles", scratch / "styles", per_type)
        link_dsb_subset(data / "dsb2018_stage1_test", scratch / "dsb", per_type)
        percs_cli("data", "import", "cellpose", str(scratch / "styles"), "--modality", "fluorescence",
                  "--out", str(scratch / "sources" / "cellpose_styles"))
        percs_cli("data", "import", "folder", str(scratch / "dsb" / "images"), str(scratch / "dsb" / "masks"),
                  "--type-table", str(scratch / "dsb" / "index.json"), "--name-column", "id", "--type-column", "group",
                  "--modality", "fluorescence", "--modality-of", DSB_MODALITIES,
                  "--out", str(scratch / "sources" / "dsb2018"))
        percs_cli("data", "build", str(scratch / "sources" / "cellpose_styles"), str(scratch / "sources" / "dsb2018"),
                  "--novel-types", NOVEL_TYPES, "--variants", "1", "--seed", "0", "--name", "percs-mini-carry",
                  "--out", str(out / CARRY_BENCHMARK))
    dataset = load_dataset(out / CARRY_BENCHMARK)
    splits = {}
    for record in dataset.images:
        splits[record.split] = splits.get(record.split, 0) + 1
    queries = {}
    for query in dataset.queries:
        split = dataset.record(query.image).split
        queries[split] = queries.get(split, 0) + 1
    return {"per_type": per_type, "images": splits, "queries": queries, "novel_types": NOVEL_TYPES.split(",")}


def pack_wheels(out: Path) -> dict:
    """The third-party wheels for the GPU machine's Python, fetched by pip from the configured index."""
    target = out / CARRY_WHEELS
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               GPU_PYTHON, "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(target),
               *WHEELS]
    subprocess.run(command, check=True)
    return {"python": GPU_PYTHON, "files": sorted(p.name for p in target.glob("*.whl"))}


def find_python(version: str) -> Path | None:
    """An interpreter of `version` that runs here: pythonX.Y on PATH, else a pyenv one."""
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python3"))
    for candidate in filter(None, [shutil.which(f"python{version}"), *pyenv]):
        probe = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(map(int, version.split(".")))):
            return Path(candidate)
    return None


def prebuild_percs(out: Path, python: Path | None) -> dict | str:
    """percs' wheel for the GPU machine's Python with the CUDA kernels of the default architectures (pip's build
    isolation: the build tools come from the configured index), for the check to install when it cannot build
    on the GPU machine (no Python.h there, say)."""
    from toolchain import find_nvcc

    nvcc = find_nvcc()
    if python is None or nvcc is None:
        return f"not built: {'no Python ' + GPU_PYTHON if python is None else 'no nvcc'} on this machine"
    env = {**os.environ, "PERCS_CUDA": "ON", "CUDACXX": nvcc}
    with tempfile.TemporaryDirectory() as build:
        subprocess.run([str(python), "-m", "pip", "wheel", "--no-deps", "-w", str(out / CARRY_WHEELS),
                        f"-Cbuild-dir={build}", str(REPO_ROOT)], check=True, env=env, cwd=REPO_ROOT)
    return {"python": str(python), "nvcc": nvcc, "files": sorted(p.name for p in (out / CARRY_WHEELS).glob("percs-*"))}


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def commit() -> str:
    result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def check_target(out: Path, overwrite: bool) -> None:
    """Refuses to replace anything but a carry folder, and a carry folder without --overwrite."""
    if out.exists() and any(out.iterdir()):
        if not (out / CARRY_MANIFEST).is_file():
            raise SystemExit(f"pack.py: {out} exists and is not a carry folder (no {CARRY_MANIFEST}): not touched")
        if not overwrite:
            raise SystemExit(f"pack.py: {out} already holds a carry; pass --overwrite to replace it")


def pack(out: Path, args: argparse.Namespace) -> dict:
    """Writes every part of the carry into `out`; returns its manifest (also written there)."""
    manifest = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit(),
                "weights": pack_weights(args.shared, out), "styles": pack_styles(args.shared, out),
                "benchmark": pack_benchmark(args.shared, out, args.per_type),
                "wheels": None if args.no_wheels else pack_wheels(out),
                "percs_wheel": None if args.no_wheels else prebuild_percs(out, args.wheel_python)}
    manifest["mib"] = {name: round(folder_mib(out / name), 2) for name in ("shared", CARRY_BENCHMARK, CARRY_WHEELS)
                       if (out / name).exists()}
    manifest["total_mib"] = round(folder_mib(out), 2)
    manifest["weights"]["sha256"] = hashlib.sha256((out / CARRY_WEIGHTS).read_bytes()).hexdigest()
    (out / CARRY_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "gpu-carry", help="carry folder (default gpu-carry)")
    parser.add_argument("--shared", type=Path, default=default_shared(), help="default $PERCS_SHARED or ../shared")
    parser.add_argument("--per-type", type=int, default=3, help="source images per type and group (default 3)")
    parser.add_argument("--no-wheels", action="store_true", help="no wheels/ (the CPU dry run needs none)")
    parser.add_argument("--wheel-python", type=Path, default=find_python(GPU_PYTHON),
                        help=f"a Python {GPU_PYTHON} to prebuild percs' wheel with (default: python{GPU_PYTHON} on "
                             "PATH, else pyenv's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing carry folder")
    args = parser.parse_args(argv)
    clock = time.perf_counter()
    out = args.out.resolve()
    check_target(out, args.overwrite)
    # Written beside the target and renamed when complete, so a failed pack never leaves a half carry.
    packing = out.with_name(out.name + ".packing")
    shutil.rmtree(packing, ignore_errors=True)
    packing.mkdir(parents=True)
    manifest = pack(packing, args)
    print(json.dumps(manifest, indent=1))
    if manifest["total_mib"] >= LIMIT_MIB:
        print(f"pack.py: the carry is {manifest['total_mib']} MiB, over the {LIMIT_MIB} MiB the check may carry; "
              f"left in {packing}", file=sys.stderr)
        return 1
    shutil.rmtree(out, ignore_errors=True)
    packing.rename(out)
    print(f"packed {out} in {time.perf_counter() - clock:.0f} s: {manifest['total_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
