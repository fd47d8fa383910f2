"""Small real subsets of ../shared/data imported with the percs importers, and a PerCS benchmark built from them.

The subsets are symlinked into the test's folder (the shared data is never copied): three images of each of
three cellpose_styles groups and of two dsb2018 groups, so that every type has train, val and test images;
and a few CoNSeP patches of six tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import data_dir
from percs.data.build import BuildConfig, build_benchmark
from percs.data.importers import ImportOptions, import_cellpose, import_folder, import_typemap

CELLPOSE = {"Kc167": ("095", "096", "097"), "macrophagocyte": ("104", "106", "121"),
            "neurocyte": ("069", "079", "080")}
DSB = {"fluo_small_256": ("0a849e0eb15f", "1ef68e93964c", "4be73d68f433"),
       "fluo_tissue_elongated": ("1962d0c5faf3", "a984e7fb886a", "ca20076870e8")}
NOVEL = ("fluo_tissue_elongated", "neurocyte")


def _link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def import_subsets(root: Path) -> list[Path]:
    """Imports the cellpose_styles and dsb2018 subsets under `root`; returns the two dataset folders."""
    styles = data_dir("cellpose_styles")
    for group, stems in CELLPOSE.items():
        for stem in stems:
            for kind in ("img", "masks"):
                _link(styles / group / f"{stem}_{kind}.png", root / "src" / "styles" / group / f"{stem}_{kind}.png")
    dsb = data_dir("dsb2018_stage1_test")
    index = json.loads((dsb / "index.json").read_text())
    for entry in index:
        if entry["group"] in DSB and entry["id"][:12] in DSB[entry["group"]]:
            _link(dsb / "images" / f"{entry['id']}.png", root / "src" / "dsb" / "images" / f"{entry['id']}.png")
            _link(dsb / "masks" / f"{entry['id']}.tif", root / "src" / "dsb" / "masks" / f"{entry['id']}.tif")
    options = ImportOptions(modality="fluorescence")
    import_cellpose(root / "src" / "styles", root / "cellpose_styles", options)
    types = {e["id"]: e["group"] for e in index}
    import_folder(root / "src" / "dsb" / "images", root / "src" / "dsb" / "masks", root / "dsb2018", types, options)
    return [root / "cellpose_styles", root / "dsb2018"]


def build_subset_benchmark(root: Path, variants: int = 3, name: str = "bench") -> Path:
    """A PerCS benchmark of the subsets (NOVEL held out), built into root/name; imports them on first use."""
    sources = [root / "cellpose_styles", root / "dsb2018"]
    if not all(s.is_dir() for s in sources):
        sources = import_subsets(root)
    build_benchmark(sources, root / name, BuildConfig(novel_types=NOVEL, variants=variants))
    return root / name


def import_consep_subset(root: Path) -> Path:
    """Three patches of each of four CoNSeP train tiles and two test tiles, imported into root/consep."""
    consep = data_dir("consep")
    for split, tiles in (("train", (1, 2, 3, 4)), ("test", (1, 2))):
        for tile in tiles:
            for k in range(3):
                name = f"{split}_{tile}_{k:03d}"
                for folder, suffix in (("images", "jpg"), ("inst", "tif"), ("typemap", "png")):
                    relative = Path(split) / folder / f"{name}.{suffix}"
                    _link(consep / relative, root / "src" / relative)
    classes = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
    import_typemap(root / "src", root / "consep", ImportOptions(modality="histology"), classes)
    return root / "consep"
