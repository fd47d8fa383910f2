"""Importers: real files from ../shared/data, small files in the upstream layouts, every bad-input case, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.io import savemat

from conftest import data_dir, read_label_image
from percs.cli import main
from percs.data.format import DatasetError, load_dataset
from percs.data.importers import (ImportOptions, TypemapLayout, import_cellpose, import_folder, import_typemap,
                                  read_image_types, read_instance_classes)
from percs.data.io import DataFileError
from percs.data.pannuke import PANNUKE_CLASSES, import_pannuke
from percs.flows import renumber

CONSEP_CLASSES = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}


def link(target: Path, path: Path) -> Path:
    """A symlink in the test's tmp folder (the shared data is never copied)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def labels_and_image(shape=(12, 16), n=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(n):
        labels[2 + 3 * k : 4 + 3 * k, 2 : 6 + k] = 10 * (n - k)  # gapped ids, descending in raster order
    return labels, rng.integers(0, 255, shape + (3,), dtype=np.uint8)


# cellpose

def test_cellpose_styles_real(tmp_path):
    root = data_dir("cellpose_styles")
    index = json.loads((root / "index.json").read_text())
    ds = import_cellpose(root, tmp_path / "out", ImportOptions(modality="fluorescence"))
    assert load_dataset(tmp_path / "out").images == ds.images
    assert [t.name for t in ds.cell_types] == sorted({e["group"] for e in index})
    assert {t.modality for t in ds.cell_types} == {"fluorescence"}
    by_name = {r.name: r for r in ds.images}
    assert len(ds.images) == len(index) == 30 and sum(r.n_instances for r in ds.images) == 3496
    for entry in index[::7]:
        record = by_name[entry["image"][: -len("_img.png")]]
        assert record.split is None and set(record.instance_types) == {entry["group"]}
        assert record.n_instances == entry["n_inst"] and record.shape == (entry["h"], entry["w"])
        assert (tmp_path / "out" / record.image).read_bytes() == (root / entry["image"]).read_bytes()
        assert np.array_equal(ds.read_labels(record), renumber(read_label_image(root / entry["mask"])))
        assert ds.read_image(record).dtype == np.uint16  # 16-bit colour PNGs, decoded in full


def test_cellpose_flat_split_folders_need_a_type(tmp_path):
    root = data_dir("cellpose_styles")
    for split, stem in (("train", "095"), ("train", "096"), ("test", "097")):
        for kind in ("img", "masks"):
            link(root / "Kc167" / f"{stem}_{kind}.png", tmp_path / "src" / split / f"{stem}_{kind}.png")
    with pytest.raises(DataFileError, match="holds \\*_img images directly; name their cell type"):
        import_cellpose(tmp_path / "src", tmp_path / "bad")
    ds = import_cellpose(tmp_path / "src", tmp_path / "out", type_name="kc")
    assert [(r.name, r.split) for r in ds.images] == [("test/097", "test"), ("train/095", "train"),
                                                      ("train/096", "train")]
    assert [(t.name, t.modality) for t in ds.cell_types] == [("kc", "unspecified")]


def test_cellpose_image_without_masks_is_named(tmp_path):
    labels, image = labels_and_image()
    Image.fromarray(image).save(tmp_path / "a_img.png")
    with pytest.raises(DataFileError, match=f"{tmp_path / 'a_img.png'}: no masks file a_masks"):
        import_cellpose(tmp_path, tmp_path / "out", type_name="t")


# folder

def test_folder_dsb2018_with_group_table(tmp_path):
    root = data_dir("dsb2018_stage1_test")
    index = json.loads((root / "index.json").read_text())
    chosen = [e for e in index if e["group"].startswith("brightfield")][:3] + index[:5]
    for e in chosen:
        link(root / "images" / f"{e['id']}.png", tmp_path / "images" / f"{e['id']}.png")
        link(root / "masks" / f"{e['id']}.tif", tmp_path / "masks" / f"{e['id']}.tif")
    types = read_image_types(root / "index.json", "id", "group")
    brightfield = {e["group"]: "brightfield" for e in chosen if e["group"].startswith("brightfield")}
    options = ImportOptions("dsb", "fluorescence", brightfield)
    ds = import_folder(tmp_path / "images", tmp_path / "masks", tmp_path / "out", types, options, split="test")
    assert ds.name == "dsb" and len(ds.images) == len({e["id"] for e in chosen})
    for e in chosen:
        record = ds.record(f"test/{e['id']}")
        assert set(record.instance_types) == {e["group"]} and record.n_instances == e["n_inst"]
        assert ds.modality_of(e["group"]) == ("brightfield" if e["group"].startswith("bright") else "fluorescence")
        assert np.array_equal(ds.read_labels(record), renumber(tifffile.imread(root / "masks" / f"{e['id']}.tif")))


def test_folder_stardist_sample_renumbers_gapped_ids(tmp_path):
    root = data_dir("stardist_sample")
    link(root / "img2d.tif", tmp_path / "img" / "nuclei.tif")
    link(root / "mask2d.tif", tmp_path / "mask" / "nuclei.tif")
    ds = import_folder(tmp_path / "img", tmp_path / "mask", tmp_path / "out", "nucleus")
    (record,) = ds.images
    raw = tifffile.imread(root / "mask2d.tif")
    assert raw.max() == 183 and record.n_instances == len(np.unique(raw)) - 1 == 125
    assert np.array_equal(ds.read_labels(record), renumber(raw))
    assert (tmp_path / "out" / record.image).read_bytes() == (root / "img2d.tif").read_bytes()
    assert ds.read_image(record).dtype == np.uint16


def _folder_pair(tmp_path, image, labels, name="x", image_suffix=".png", mask_name=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "msk").mkdir(exist_ok=True)
    if image_suffix == ".png":
        Image.fromarray(image).save(tmp_path / "img" / f"{name}.png")
    else:
        tifffile.imwrite(tmp_path / "img" / f"{name}{image_suffix}", image, photometric="minisblack")
    np.save(tmp_path / "msk" / f"{mask_name or name}.npy", labels)


def test_folder_decisions_on_channels_alpha_and_empty_masks(tmp_path):
    labels, rgb = labels_and_image()
    rgba = np.dstack([rgb, np.full(labels.shape, 200, np.uint8)])
    _folder_pair(tmp_path, rgba, labels, "rgba")
    _folder_pair(tmp_path, np.moveaxis(rgb, 2, 0).astype(np.int16), labels, "planes", ".tif")  # (3, H, W)
    _folder_pair(tmp_path, rgb[..., 0], np.zeros_like(labels), "empty")
    ds = import_folder(tmp_path / "img", tmp_path / "msk", tmp_path / "out", "t")
    assert [r.name for r in ds.images] == ["planes", "rgba"]
    rgba_record, planes = ds.record("rgba"), ds.record("planes")
    assert (tmp_path / "out" / rgba_record.image).read_bytes() == (tmp_path / "img" / "rgba.png").read_bytes()
    assert np.array_equal(ds.read_image(rgba_record), rgb)  # alpha dropped on reading
    stored = ds.read_image(planes)
    assert planes.image.endswith(".tif") and stored.dtype == np.float32 and np.array_equal(stored, rgb)
    assert np.array_equal(ds.read_labels(planes), renumber(labels)) and planes.n_instances == 3
    assert ds.meta["skipped"] == [{"image": str(tmp_path / "img" / "empty.png"),
                                   "labels": str(tmp_path / "msk" / "empty.npy"), "reason": "no instances"}]


def _bad_folder(tmp_path: Path, case: str) -> str:
    """Writes image x and masks x with one defect; returns the file the error must name."""
    labels, image = labels_and_image()
    bad_labels = {"size": labels[:, :15], "colour_labels": np.dstack([labels] * 3), "binary": labels > 0,
                  "negative": -labels, "float": labels + 0.5}.get(case, labels)
    _folder_pair(tmp_path, image, bad_labels)
    if case == "stack":
        (tmp_path / "img" / "x.png").unlink()
        stack = np.zeros((2, 3) + labels.shape, np.uint8)
        tifffile.imwrite(tmp_path / "img" / "x.tif", stack, photometric="minisblack")
        return "img/x.tif"
    if case == "unreadable":
        (tmp_path / "img" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    if case == "no_mask":
        (tmp_path / "msk" / "x.npy").unlink()
    if case == "no_image":
        np.save(tmp_path / "msk" / "y.npy", labels)
        return "msk/y.npy"
    return "msk/x.npy" if case in ("binary", "negative", "float", "colour_labels") else "img/x.png"


@pytest.mark.parametrize("case, message", [
    ("size", r"image is \(12, 16\) but its labels .* are \(12, 15\)"),
    ("stack", r"image has shape \(2, 3, 12, 16\), a stack of 2 planes \(axes ZCYX, guessed.*--plane mid\|max\|N"),
    ("colour_labels", "labels have shape .* expected a 2-D"),
    ("binary", "binary mask"),
    ("negative", "negative values"),
    ("float", "non-integer"),
    ("unreadable", "cannot read image"),
    ("no_mask", "no masks file x"),
    ("no_image", "has no image of the same name"),
])
def test_folder_bad_inputs_name_the_file(tmp_path, case, message):
    culprit = _bad_folder(tmp_path, case)
    with pytest.raises(DataFileError, match=message) as error:
        import_folder(tmp_path / "img", tmp_path / "msk", tmp_path / "out", "t")
    assert str(error.value).startswith(str(tmp_path / culprit))
    assert not (tmp_path / "out").exists()


def test_folder_type_tables(tmp_path):
    labels, image = labels_and_image()
    for name in ("a", "b"):
        _folder_pair(tmp_path, image, labels, name)
    (tmp_path / "types.csv").write_text("file,kind\nimages/a.png,alpha\nb,beta\nzzz,gamma\n")
    assert read_image_types(tmp_path / "types.csv", "file", "kind") == {"a": "alpha", "b": "beta", "zzz": "gamma"}
    (tmp_path / "types.json").write_text(json.dumps({"a.png": "alpha"}))
    with pytest.raises(DataFileError, match="b.png: is not in the cell-type table"):
        import_folder(tmp_path / "img", tmp_path / "msk", tmp_path / "out", read_image_types(tmp_path / "types.json"))
    (tmp_path / "twice.csv").write_text("image,type\na,alpha\na,beta\n")
    with pytest.raises(DataFileError, match="twice.csv: image 'a' is given two cell types"):
        read_image_types(tmp_path / "twice.csv")
    with pytest.raises(DataFileError, match="types.csv: has no column 'image'"):
        read_image_types(tmp_path / "types.csv")
    with pytest.raises(ValueError, match=r"modality_of names cell types that were not imported: \['gamma'\]"):
        import_folder(tmp_path / "img", tmp_path / "msk", tmp_path / "o2", {"a": "alpha", "b": "beta"},
                      ImportOptions(modality_of={"gamma": "x"}))


# typemap

CONSEP_PATCHES = {"train": ["train_10_000", "train_10_001", "train_1_003"], "test": ["test_10_000", "test_7_005"]}


def _consep_subset(tmp_path) -> Path:
    root = data_dir("consep")
    for split, names in CONSEP_PATCHES.items():
        for name in names:
            link(root / split / "images" / f"{name}.jpg", tmp_path / "src" / split / "images" / f"{name}.jpg")
            link(root / split / "inst" / f"{name}.tif", tmp_path / "src" / split / "inst" / f"{name}.tif")
            link(root / split / "typemap" / f"{name}.png", tmp_path / "src" / split / "typemap" / f"{name}.png")
    return tmp_path / "src"


def test_typemap_consep_type_maps_agree_with_instance_table(tmp_path):
    src = _consep_subset(tmp_path)
    index = json.loads((data_dir("consep") / "index.json").read_text())
    with open(tmp_path / "classes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "type"])
        for patch in index["patches"]:
            writer.writerows([patch["name"], label, c] for label, c in patch["inst_class"].items())
    options = ImportOptions(modality="histology")
    by_map = import_typemap(src, tmp_path / "by_map", options, CONSEP_CLASSES)
    table = read_instance_classes(tmp_path / "classes.csv")
    by_table = import_typemap(src, tmp_path / "by_table", options, CONSEP_CLASSES, table)
    assert by_map.images == by_table.images
    assert [t.name for t in by_map.cell_types] == list(CONSEP_CLASSES.values())
    assert [(r.name, r.split) for r in by_map.images] == [
        ("test/test_10_000", "test"), ("train/train_10_000", "train"), ("train/train_10_001", "train"),
        ("train/train_1_003", "train")]
    assert [s["image"].endswith("test_7_005.jpg") for s in by_map.meta["skipped"]] == [True]  # no nuclei
    patches = {p["name"]: p for p in index["patches"]}
    for record in by_map.images:
        patch = patches[record.name.split("/")[1]]
        raw = tifffile.imread(data_dir("consep") / patch["split"] / "inst" / f"{patch['name']}.tif")
        labels = by_map.read_labels(record)
        assert np.array_equal(labels, renumber(raw)) and record.n_instances == patch["n_inst"]
        for label in range(1, record.n_instances + 1):
            original = int(raw[labels == label][0])
            assert record.type_of(label) == CONSEP_CLASSES[patch["inst_class"][str(original)]]


def _hovernet_mat(tmp_path: Path, name="tile"):
    labels, image = labels_and_image((20, 24), 3)
    type_map = np.where(labels == 30, 4, np.where(labels == 20, 3, np.where(labels > 0, 7, 0)))
    minority = np.argwhere(labels == 30)[:3]
    type_map[minority[:, 0], minority[:, 1]] = 2  # a minority class inside an instance does not decide its type
    (tmp_path / "Train" / "Images").mkdir(parents=True)
    (tmp_path / "Train" / "Labels").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "Train" / "Images" / f"{name}.png")
    savemat(tmp_path / "Train" / "Labels" / f"{name}.mat",
            {"inst_map": labels.astype(np.float64), "type_map": type_map.astype(np.int32),
             "inst_type": np.array([[7], [3], [4]]), "inst_centroid": np.zeros((3, 2))})
    return labels


def test_typemap_hovernet_mat_with_merged_classes(tmp_path):
    labels = _hovernet_mat(tmp_path / "src")
    names = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "epithelial", 7: "spindle"}
    ds = import_typemap(tmp_path / "src", tmp_path / "out", ImportOptions(modality="histology"), names,
                        layout=TypemapLayout("Images", "Labels"))
    (record,) = ds.images
    assert record.name == "train/tile" and record.split == "train"
    assert record.instance_types == ("epithelial", "epithelial", "spindle")  # ids 30 (4), 20 (3), 10 (7)
    assert np.array_equal(ds.read_labels(record), renumber(labels))
    assert [t.name for t in ds.cell_types] == ["other", "inflammatory", "epithelial", "spindle"]


def test_typemap_errors_name_the_file(tmp_path):
    _hovernet_mat(tmp_path / "src")
    layout = TypemapLayout("Images", "Labels")
    mat = tmp_path / "src" / "Train" / "Labels" / "tile.mat"
    with pytest.raises(DataFileError, match=f"{mat}: instance 10 has class 7, which class_names does not name"):
        import_typemap(tmp_path / "src", tmp_path / "o1", class_names={3: "a", 4: "b"}, layout=layout)
    with pytest.raises(DataFileError, match=f"{mat}: instances \\[10\\] have no class in the instance table"):
        import_typemap(tmp_path / "src", tmp_path / "o2", instance_classes={"tile": {20: "a", 30: "b"}},
                       layout=layout)
    savemat(mat, {"inst_map": np.ones((20, 24)), "type_map": np.zeros((20, 24))})
    with pytest.raises(DataFileError, match=f"{mat}: instances \\[1\\] cover no pixel of a non-zero class"):
        import_typemap(tmp_path / "src", tmp_path / "o3", layout=layout)
    savemat(mat, {"inst_map": np.ones((20, 24))})
    with pytest.raises(DataFileError, match="no type map tile.<ext>"):
        import_typemap(tmp_path / "src", tmp_path / "o4", layout=layout)
    (tmp_path / "src" / "Train" / "typemap").mkdir()
    np.save(tmp_path / "src" / "Train" / "typemap" / "tile.npy", np.ones((20, 23), np.int32))
    with pytest.raises(DataFileError, match=r"tile.npy: type map is \(20, 23\) but instance map"):
        import_typemap(tmp_path / "src", tmp_path / "o5", layout=layout)
    with pytest.raises(DataFileError, match="needs the folders images/ and inst/"):
        import_typemap(tmp_path / "src", tmp_path / "o6")


# pannuke

def write_pannuke_fold(root: Path, fold: int, masks: np.ndarray, tissues: list[str], seed: int) -> None:
    """A fold in the release layout: float64 images 0..255 and masks, tissue names."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, masks.shape[:3] + (3,)).astype(np.float64)
    (root / f"Fold {fold}" / "images" / f"fold{fold}").mkdir(parents=True)
    (root / f"Fold {fold}" / "masks" / f"fold{fold}").mkdir(parents=True)
    np.save(root / f"Fold {fold}" / "images" / f"fold{fold}" / "images.npy", images)
    np.save(root / f"Fold {fold}" / "images" / f"fold{fold}" / "types.npy", np.array(tissues))
    np.save(root / f"Fold {fold}" / "masks" / f"fold{fold}" / "masks.npy", masks)


def pannuke_masks(n: int) -> np.ndarray:
    masks = np.zeros((n, 256, 256, 6))
    masks[0, 10:20, 10:20, 0] = 5  # neoplastic 5
    masks[0, 10:20, 30:40, 2] = 5  # connective, also id 5: another nucleus
    masks[0, 15:25, 15:25, 4] = 9  # epithelial, overlapping the neoplastic one: loses the overlap
    masks[0, 100:110, 100:104, 1] = 2
    if n > 2:
        masks[2, 200:220, 0:8, 3] = 1  # dead
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)
    return masks


def test_pannuke_release_layout(tmp_path):
    write_pannuke_fold(tmp_path / "src", 1, pannuke_masks(3), ["Breast", "Colon", "Skin"], 1)
    write_pannuke_fold(tmp_path / "src", 3, pannuke_masks(2), ["Liver", "Lung"], 3)
    ds = import_pannuke(tmp_path / "src", tmp_path / "out")
    assert [t.name for t in ds.cell_types] == list(PANNUKE_CLASSES)
    assert {t.modality for t in ds.cell_types} == {"histology"}
    assert [(r.name, r.split, r.meta["tissue"]) for r in ds.images] == [
        ("fold1/0000", "train", "Breast"), ("fold1/0002", "train", "Skin"), ("fold3/0000", "test", "Liver")]
    assert [(s["fold"], s["index"], s["tissue"]) for s in ds.meta["skipped"]] == [(1, 1, "Colon"), (3, 1, "Lung")]
    first = ds.images[0]
    labels = ds.read_labels(first)
    assert first.instance_types == ("neoplastic", "connective", "epithelial", "inflammatory")
    assert (labels[10:20, 10:20] == 1).all() and (labels[10:20, 30:40] == 2).all()
    assert (labels[20:25, 15:25] == 3).all() and (labels[15:20, 20:25] == 3).all() and labels.max() == 4
    image = np.load(tmp_path / "src" / "Fold 1" / "images" / "fold1" / "images.npy")[0]
    assert ds.read_image(first).dtype == np.uint8 and np.array_equal(ds.read_image(first), image.astype(np.uint8))
    assert ds.images[1].instance_types == ("dead",)
    one_fold = import_pannuke(tmp_path / "src" / "Fold 3", tmp_path / "one", fold_splits={3: "val"})
    assert [(r.name, r.split) for r in one_fold.images] == [("fold3/0000", "val")]


def test_pannuke_bad_layouts_name_the_file(tmp_path):
    with pytest.raises(DataFileError, match="has no PanNuke fold folders"):
        import_pannuke(tmp_path, tmp_path / "o0")
    write_pannuke_fold(tmp_path / "src", 2, pannuke_masks(2)[..., :5], ["A", "B"], 0)
    masks = tmp_path / "src" / "Fold 2" / "masks" / "fold2" / "masks.npy"
    with pytest.raises(DataFileError, match=f"{masks}: has shape \\(2, 256, 256, 5\\)"):
        import_pannuke(tmp_path / "src", tmp_path / "o1")
    np.save(masks, pannuke_masks(2) * 0.5)
    with pytest.raises(DataFileError, match=f"{masks}\\[0\\]: class channel 0 holds negative or non-integer ids"):
        import_pannuke(tmp_path / "src", tmp_path / "o2")
    masks.unlink()
    with pytest.raises(DataFileError, match=f"{masks}: is missing"):
        import_pannuke(tmp_path / "src", tmp_path / "o3")
    np.save(masks, pannuke_masks(2))
    types = tmp_path / "src" / "Fold 2" / "images" / "fold2" / "types.npy"
    np.save(types, np.array(["A"]))
    with pytest.raises(DataFileError, match=f"{types}: has shape \\(1,\\)"):
        import_pannuke(tmp_path / "src", tmp_path / "o4")


# the CLI

def test_cli_imports_and_reports(tmp_path, capsys):
    src = _consep_subset(tmp_path)
    out = tmp_path / "consep"
    code = main(["data", "import", "typemap", str(src), "--out", str(out), "--modality", "histology",
                 "--class-names", "1=other,2=inflammatory,3=epithelial,4=spindle"])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 4 images, ")
    assert [r.split for r in load_dataset(out).images] == ["test", "train", "train", "train"]


def test_cli_folder_and_pannuke(tmp_path, capsys):
    labels, image = labels_and_image()
    _folder_pair(tmp_path, image, labels, "a")
    (tmp_path / "types.json").write_text(json.dumps([{"id": "a", "group": "g1"}]))
    assert main(["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--out",
                 str(tmp_path / "f"), "--type-table", str(tmp_path / "types.json"), "--name-column", "id",
                 "--type-column", "group", "--modality-of", "g1=brightfield", "--split", "novel"]) == 0
    ds = load_dataset(tmp_path / "f")
    assert ds.cell_types[0].modality == "brightfield" and ds.images[0].split == "novel"
    write_pannuke_fold(tmp_path / "pn", 1, pannuke_masks(1), ["Breast"], 0)
    assert main(["data", "import", "pannuke", str(tmp_path / "pn"), "--out", str(tmp_path / "p"),
                 "--fold-splits", "1=val"]) == 0
    assert load_dataset(tmp_path / "p").images[0].split == "val"


def test_cli_errors_name_the_file_and_exit_1(tmp_path, capsys):
    labels, image = labels_and_image()
    _folder_pair(tmp_path, image, labels[:, :4], "a")
    assert main(["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--type", "t",
                 "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'img' / 'a.png'}: image is (12, 16)" in capsys.readouterr().err
    assert main(["data", "import", "pannuke", str(tmp_path), "--out", str(tmp_path / "o2"),
                 "--fold-splits", "1:train"]) == 1
    assert "is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "import", "folder", str(tmp_path / "img"), str(tmp_path / "msk"), "--out", "x"])


def test_output_folder_must_be_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists and is not empty"):
        import_folder(tmp_path, tmp_path, tmp_path / "out", "t")
