"""Importing real data with flags alone (percs.data.importing through `percs data import`): a z-stack source, a
type with an awkward name, a source with empty images, type tables with modalities, groups kept per source, and
the report of what each importer skipped and why. Sources are written in the test's folder from real images of
../shared/data (symlinked where used as they are)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import data_dir
from percs.cli import main
from percs.data.format import DataWarning, load_dataset
from percs.data.importing import ImportOptions, check_type_name, suggest_type_name
from percs.data.importers import import_folder, import_typemap
from percs.data.io import read_image
from percs.data.pannuke import import_pannuke
from test_importers import CONSEP_CLASSES, _consep_subset, link, pannuke_masks, write_pannuke_fold

CELLPOSE_KC = ("095", "096", "097")


def z_stack_source(tmp_path: Path) -> np.ndarray:
    """stardist's real nuclei image as plane 4 of a 5-plane z-stack without axes metadata (planes k: image *
    (k + 1) // 5), with its real mask; returns the planes."""
    root = data_dir("stardist_sample")
    image = tifffile.imread(root / "img2d.tif")
    planes = np.stack([(image.astype(np.uint32) * (k + 1) // 5).astype(np.uint16) for k in range(5)])
    (tmp_path / "img").mkdir()
    tifffile.imwrite(tmp_path / "img" / "nuclei.tif", planes, photometric="minisblack")
    link(root / "mask2d.tif", tmp_path / "msk" / "nuclei.tif")
    return planes


def import_folder_cli(tmp_path, out, *flags) -> int:
    return main(["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--type", "nucleus",
                 "--modality", "fluorescence", "--out", str(tmp_path / out), *flags])


def test_z_stack_imports_with_plane_flags(tmp_path, capsys):
    planes = z_stack_source(tmp_path)
    assert import_folder_cli(tmp_path, "guessed") == 0
    printed = capsys.readouterr()
    assert "warning: guessed axes CYX for images of shape (5, 512, 512) without axes metadata" in printed.err
    assert "give --plane mid|max|N" in printed.err and "nuclei.tif" in printed.err
    guessed = load_dataset(tmp_path / "guessed")
    assert guessed.images[0].channels == 5 and guessed.meta["warnings"][0].startswith("guessed axes CYX")
    for flag, expected, taken in (("mid", planes[2], 2), ("max", planes[4], "max"), ("1", planes[1], 1)):
        assert import_folder_cli(tmp_path, f"plane_{flag}", "--plane", flag) == 0
        assert "warning" not in capsys.readouterr().err
        ds = load_dataset(tmp_path / f"plane_{flag}")
        (record,) = ds.images
        assert record.meta["plane"] == taken and record.meta["axes"] == "ZYX" and record.channels == 1
        assert np.array_equal(ds.read_image(record), expected) and "warnings" not in ds.meta
    assert ds.meta["plane"] == 1 and record.n_instances == 125
    assert import_folder_cli(tmp_path, "too_far", "--plane", "5") == 1
    assert f"{tmp_path / 'img' / 'nuclei.tif'}: --plane 5: image has 5 planes (0..4" in capsys.readouterr().err
    assert import_folder_cli(tmp_path, "bad_flag", "--plane", "middle") == 1
    assert "error: --plane 'middle': expected mid" in capsys.readouterr().err


def test_z_stack_with_imagej_axes_needs_a_plane_and_channels_pick_from_rgb(tmp_path, capsys):
    planes = z_stack_source(tmp_path)
    tifffile.imwrite(tmp_path / "img" / "nuclei.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    assert import_folder_cli(tmp_path, "no_plane") == 1
    err = capsys.readouterr().err
    assert "nuclei.tif: image has shape (5, 512, 512), a stack of 5 planes (axes ZYX)" in err and "--plane" in err
    assert not (tmp_path / "no_plane").exists()
    styles = data_dir("cellpose_styles") / "Kc167"
    for kind in ("img", "masks"):
        link(styles / f"095_{kind}.png", tmp_path / "kc" / f"095_{kind}.png")
    assert main(["data", "import", "cellpose", str(tmp_path / "kc"), "--type", "Kc167", "--modality", "fluorescence",
                 "--channels", "1,0", "--out", str(tmp_path / "two")]) == 0
    ds = load_dataset(tmp_path / "two")
    rgb = read_image(styles / "095_img.png")
    assert np.array_equal(ds.read_image(ds.images[0]), rgb[..., [1, 0]]) and ds.images[0].meta["channels"] == [1, 0]


def awkward_source(tmp_path: Path, folder: str = "weird type (v2)?") -> Path:
    styles = data_dir("cellpose_styles") / "Kc167"
    for stem in CELLPOSE_KC:
        for kind in ("img", "masks"):
            link(styles / f"{stem}_{kind}.png", tmp_path / "src" / folder / f"{stem}_{kind}.png")
    return tmp_path / "src"


def test_awkward_type_name_is_renamed_with_a_flag(tmp_path, capsys):
    src = awkward_source(tmp_path)
    command = ["data", "import", "cellpose", str(src), "--modality", "fluorescence"]
    assert main([*command, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert f"folder {src / 'weird type (v2)?'}: cell type 'weird type (v2)?' is not a usable type name" in err
    assert "--rename 'weird type (v2)?=weird_type_v2'" in err and not (tmp_path / "refused").exists()
    assert main([*command, "--rename", "weird type (v2)?=weird_type_v2", "--modality-of", "weird_type_v2=fluo",
                 "--out", str(tmp_path / "renamed")]) == 0
    manifest = json.loads((tmp_path / "renamed" / "manifest.json").read_text())
    assert manifest["cell_types"] == [{"name": "weird_type_v2", "modality": "fluo"}]
    assert manifest["meta"]["rename"] == {"weird type (v2)?": "weird_type_v2"}
    assert [r["name"] for r in manifest["images"]] == [f"weird_type_v2/{s}" for s in CELLPOSE_KC]
    assert main([*command, "--rename", "weird type (v2)?=w", "--rename", "Kc167=kc", "--out",
                 str(tmp_path / "unused")]) == 1
    assert "rename names cell types that were not imported: ['Kc167']" in capsys.readouterr().err
    assert main([*command, "--rename", "weird type (v2)?=still weird", "--out", str(tmp_path / "bad")]) == 1
    assert "rename 'weird type (v2)?'='still weird': cell type 'still weird' is not" in capsys.readouterr().err


def test_type_names_rule():
    for name in ("Kc167", "fluo_small_256", "1", "T-cell.v2+"):
        check_type_name(name, "x")
    for name in ("", " a", "a b", "a,b", "a=b", "_a", "é"):
        with pytest.raises(ValueError, match="is not a usable type name"):
            check_type_name(name, "x")
    assert suggest_type_name("weird type (v2)?") == "weird_type_v2" and suggest_type_name("??") == "type"


def empty_image_source(tmp_path: Path) -> tuple[list[str], str]:
    """Four real dsb2018 images; the mask of the last is emptied (a tile without nuclei)."""
    root = data_dir("dsb2018_stage1_test")
    ids = [e["id"] for e in json.loads((root / "index.json").read_text())[:4]]
    for i in ids:
        link(root / "images" / f"{i}.png", tmp_path / "img" / f"{i}.png")
    for i in ids[:3]:
        link(root / "masks" / f"{i}.tif", tmp_path / "msk" / f"{i}.tif")
    empty = np.zeros_like(tifffile.imread(root / "masks" / f"{ids[3]}.tif"))
    tifffile.imwrite(tmp_path / "msk" / f"{ids[3]}.tif", empty)
    return ids, ids[3]


def test_images_without_cells_are_skipped_with_a_count_or_kept(tmp_path, capsys):
    ids, empty = empty_image_source(tmp_path)
    assert import_folder_cli(tmp_path, "dropped") == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "skipped 1: 1 no instances (--keep-empty keeps images without cells" in out
    dropped = load_dataset(tmp_path / "dropped")
    assert [r.name for r in dropped.images] == ids[:3]
    assert dropped.meta["skipped"] == [{"image": str(tmp_path / "img" / f"{empty}.png"),
                                        "labels": str(tmp_path / "msk" / f"{empty}.tif"), "reason": "no instances"}]
    assert import_folder_cli(tmp_path, "kept", "--keep-empty") == 0
    out = capsys.readouterr().out
    assert "4 images" in out and "1 images without cells kept (negative images); nothing skipped" in out
    kept = load_dataset(tmp_path / "kept")
    record = kept.record(empty)
    assert record.n_instances == 0 and not kept.read_labels(record).any() and kept.meta["keep_empty"] is True
    assert (tmp_path / "kept" / record.image).read_bytes() == (tmp_path / "img" / f"{empty}.png").read_bytes()


def test_pannuke_tiles_without_nuclei_kept_as_negatives(tmp_path):
    masks = pannuke_masks(2)
    masks[1, ..., :5] = 0
    write_pannuke_fold(tmp_path / "pn", 1, masks, ["Breast", "Colon"], 0)
    dropped = import_pannuke(tmp_path / "pn", tmp_path / "dropped")
    assert len(dropped.images) == 1 and dropped.meta["skipped"][0]["reason"] == "no instances"
    kept = import_pannuke(tmp_path / "pn", tmp_path / "kept", ImportOptions(modality="histology", keep_empty=True,
                                                                            rename={"dead": "necrotic"}))
    assert [r.n_instances == 0 for r in kept.images] == [False, True] and kept.meta["skipped"] == []
    assert "necrotic" in [t.name for t in kept.cell_types]


def test_type_table_carries_modalities_and_unspecified_warns(tmp_path, capsys):
    ids, _ = empty_image_source(tmp_path)
    rows = zip(ids, ["fluo", "fluo", "bf", "bf"], ["fluorescence"] * 2 + ["brightfield"] * 2)
    (tmp_path / "types.csv").write_text("image,type,modality\n" + "".join(f"{i},{t},{m}\n" for i, t, m in rows))
    command = ["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--type-table",
               str(tmp_path / "types.csv")]
    assert main([*command, "--modality-column", "modality", "--out", str(tmp_path / "typed")]) == 0
    assert "unspecified" not in capsys.readouterr().err
    ds = load_dataset(tmp_path / "typed")
    assert [(t.name, t.modality) for t in ds.cell_types] == [("bf", "brightfield"), ("fluo", "fluorescence")]
    assert main([*command, "--modality-column", "modality", "--modality-of", "bf=histology",
                 "--out", str(tmp_path / "override")]) == 0
    assert load_dataset(tmp_path / "override").modality_of("bf") == "histology"
    assert main([*command, "--out", str(tmp_path / "untyped")]) == 0
    err = capsys.readouterr().err
    assert "warning: cell types ['bf', 'fluo'] have modality 'unspecified'" in err and "--modality-column" in err
    (tmp_path / "clash.csv").write_text(f"image,type,modality\n{ids[0]},fluo,a\n{ids[1]},fluo,b\n")
    assert main([*command[:-1], str(tmp_path / "clash.csv"), "--modality-column", "modality",
                 "--out", str(tmp_path / "clash")]) == 1
    assert "clash.csv: cell type 'fluo' is given two modality groups ('a', 'b')" in capsys.readouterr().err
    assert main(["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--type", "t",
                 "--modality-column", "m", "--out", str(tmp_path / "no_table")]) == 1
    assert "--modality-column: needs --type-table" in capsys.readouterr().err


def test_group_pattern_is_kept_per_source(tmp_path):
    src = _consep_subset(tmp_path)
    with pytest.warns(DataWarning, match=r"images match no group_pattern .*\(1 image\(s\), e.g. test/test_10_000\)"):
        ds = import_typemap(src, tmp_path / "out", ImportOptions(modality="histology",
                                                                 group_pattern=r"^train/(.*)_\d+$"), CONSEP_CLASSES)
    assert ds.meta["group_pattern"] == r"^train/(.*)_\d+$"
    assert {r.name: r.meta["group"] for r in ds.images} == {
        "test/test_10_000": "test/test_10_000", "train/train_10_000": "train_10", "train/train_10_001": "train_10",
        "train/train_1_003": "train_1"}
    with pytest.raises(ValueError, match="group_pattern '\\(' is not a regular expression"):
        import_typemap(src, tmp_path / "bad", ImportOptions(group_pattern="("), CONSEP_CLASSES)
    assert not (tmp_path / "bad").exists()


def test_every_importer_reports_what_it_skipped_and_why(tmp_path, capsys):
    src = awkward_source(tmp_path, "Kc167")
    shutil.copy(src / "Kc167" / "095_masks.png", src / "Kc167" / "099_masks.png")  # a mask without image
    (src / "Kc167" / "notes.txt").write_text("scope settings")
    (src / "Kc167" / "old").mkdir()
    (src / "empty_type").mkdir()
    assert main(["data", "import", "cellpose", str(src), "--modality", "fluorescence",
                 "--out", str(tmp_path / "c")]) == 0
    assert "skipped 4: 1 no images, 1 subfolder not searched, 1 unmatched file, 1 unsupported suffix" in \
        capsys.readouterr().out
    skipped = load_dataset(tmp_path / "c").meta["skipped"]
    assert {s["reason"]: s.get("file", s.get("folder")) for s in skipped} == {
        "no images": str(src / "empty_type"), "subfolder not searched": str(src / "Kc167" / "old"),
        "unsupported suffix": str(src / "Kc167" / "notes.txt"), "unmatched file": str(src / "Kc167" / "099_masks.png")}
    ids, _ = empty_image_source(tmp_path / "f")
    ds = import_folder(tmp_path / "f" / "img", tmp_path / "f" / "msk", tmp_path / "folder",
                       {**{i: "t" for i in ids}, "gone": "t"}, ImportOptions(modality="x"))
    assert sorted(s["reason"] for s in ds.meta["skipped"]) == ["no instances", "table entry without image"]
    consep = _consep_subset(tmp_path / "t")
    (consep / "extra").mkdir()
    (consep / "train" / "images" / "Thumbs.db").write_text("")
    ds = import_typemap(consep, tmp_path / "typemap", ImportOptions(modality="histology"), CONSEP_CLASSES)
    assert sorted(s["reason"] for s in ds.meta["skipped"]) == ["no instances", "not a split folder",
                                                               "unsupported suffix"]
