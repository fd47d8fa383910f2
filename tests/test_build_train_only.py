"""`percs data build --train-only`: a train-only source goes to train only, is recorded in the manifest, leaves
val, test, novel and the queries as the build without it (`percs.data.compare`), and cannot bring a novel type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import data_dir
from percs.cli import main
from percs.data.build import BuildConfig, build_benchmark
from percs.data.compare import evaluation_differences
from percs.data.format import MANIFEST, DatasetWriter, load_dataset
from percs.data.importers import ImportOptions, import_folder
from real_subsets import NOVEL, import_subsets

TRAIN_SUBSET = {"fluo_small_256": ("84eeec681987", "e5aeb5b3577a"), "fluo_360x360": ("b1eb0123fe2d",)}


def _import_train_subset(root: Path) -> Path:
    """Three dsb2018_stage1_train images (two of a type percs-mini has, one of a train-only type), as dsb2018_train."""
    dsb = data_dir("dsb2018_stage1_train")
    types = {e["id"]: e["group"] for e in json.loads((dsb / "index.json").read_text())
             if e["id"][:12] in TRAIN_SUBSET.get(e["group"], ())}
    for stem in types:
        for folder, suffix in (("images", "png"), ("masks", "tif")):
            (root / "src" / folder).mkdir(parents=True, exist_ok=True)
            (root / "src" / folder / f"{stem}.{suffix}").symlink_to(dsb / folder / f"{stem}.{suffix}")
    import_folder(root / "src" / "images", root / "src" / "masks", root / "dsb2018_train", types,
                  ImportOptions(modality="fluorescence"))
    return root / "dsb2018_train"


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def test_real_train_only_source_goes_to_train_and_changes_no_evaluation(tmp_path):
    sources = import_subsets(tmp_path)
    extra = _import_train_subset(tmp_path / "train_only")
    config = BuildConfig(novel_types=NOVEL, variants=1)
    base = build_benchmark(sources, tmp_path / "base", config)
    large = build_benchmark(sources, tmp_path / "large", config, train_only=[extra])
    assert evaluation_differences(tmp_path / "base", tmp_path / "large") == []
    added = [r for r in large.images if r.name.startswith("dsb2018_train/")]
    assert len(added) == 3 and {r.split for r in added} == {"train"}
    assert {r.name for r in large.in_split("train")} == {r.name for r in base.in_split("train") + added}
    assert [t.name for t in large.cell_types] == [t.name for t in base.cell_types] + ["fluo_360x360"]
    meta_base, meta_large = _manifest(tmp_path / "base")["meta"], _manifest(tmp_path / "large")["meta"]
    assert meta_large["train_only_sources"] == ["dsb2018_train"] and "train_only_sources" not in meta_base
    assert [s["name"] for s in meta_large["sources"]] == ["cellpose_styles", "dsb2018", "dsb2018_train"]
    assert {k: v for k, v in meta_large.items() if k not in ("sources", "train_only_sources")} == \
        {k: v for k, v in meta_base.items() if k != "sources"}
    train_entries = {e["name"]: e for e in _manifest(tmp_path / "large")["images"]}
    assert all(train_entries[e["name"]] == e for e in _manifest(tmp_path / "base")["images"])
    # never a donor of an evaluation image's pasted cells nor a reference
    assert not any(donor.startswith("dsb2018_train/") for r in large.images for _, donor, _ in r.meta.get("pasted", []))
    assert not any(q.reference_image.startswith("dsb2018_train/") for q in large.queries)


def _source(root: Path, name: str, types: dict[str, str], per_type: int, empty: int = 0) -> Path:
    """A dataset of `per_type` 40 x 40 images per type (four square cells each) and `empty` images without cells."""
    rng = np.random.default_rng(len(name))
    with DatasetWriter(root / name, name) as writer:
        for t, modality in types.items():
            writer.add_cell_type(t, modality)
        plan = [(f"{t}/{k}", t) for t in types for k in range(per_type)] + [(f"empty/{k}", None) for k in range(empty)]
        for image_name, t in plan:
            labels = np.zeros((40, 40), np.int32)
            for k in range(4 if t else 0):
                labels[4 + 9 * k: 10 + 9 * k, 5 + 7 * k: 12 + 7 * k] = k + 1
            image = (rng.integers(0, 40, (40, 40)) + 150 * (labels > 0)).astype(np.uint8)
            writer.add_image(image_name, image, labels, {k: t for k in range(1, 5)})
    return root / name


@pytest.fixture
def tiny(tmp_path):
    base = _source(tmp_path, "base", {"a": "fluo", "b": "fluo", "c": "fluo"}, 4)
    extra = _source(tmp_path, "extra", {"a": "fluo", "d": "fluo", "e": "other"}, 3, empty=1)
    return base, extra


@pytest.mark.parametrize("config", [BuildConfig(novel_types=("c",), variants=2), BuildConfig(novel_count=1, seed=1),
                                    BuildConfig(variants=0, reference="same-image")])
def test_train_only_source_leaves_evaluation_and_queries_identical(tiny, tmp_path, config):
    base, extra = tiny
    without = build_benchmark([base], tmp_path / "without", config)
    with_extra = build_benchmark([base], tmp_path / "with", config, train_only=[extra])
    assert evaluation_differences(tmp_path / "without", tmp_path / "with") == []
    assert {r.split for r in with_extra.images if r.name.startswith("extra/")} == {"train"}
    assert len([r for r in with_extra.images if r.name.startswith("extra/")]) == 10  # 3 x 3 typed + 1 empty
    assert [t.name for t in with_extra.cell_types] == [t.name for t in without.cell_types] + ["d", "e"]
    assert with_extra.modality_of("e") == "other" and with_extra.meta["train_only_sources"] == ["extra"]


def test_cli_train_only_and_its_refusals(tiny, tmp_path, capsys):
    base, extra = tiny
    out = tmp_path / "cli"
    assert main(["data", "build", str(base), "--train-only", str(extra), "--novel-types", "c", "--variants", "1",
                 "--out", str(out)]) == 0
    assert load_dataset(out).meta["train_only_sources"] == ["extra"]
    for novel in (["--novel-types", "a"], ["--novel-types", "d"], ["--novel-types", "all"], ["--novel-count", "3"]):
        capsys.readouterr()
        assert main(["data", "build", str(base), "--train-only", str(extra), *novel, "--out", str(tmp_path / "x")]) == 1
        err = capsys.readouterr().err
        assert f"percs data build: error: train-only source {extra}: 3 image(s) hold novel type(s) " in err, err
        assert "(first: 'a/0')" in err or "(first: 'd/0')" in err
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"novel type\(s\) \['d'\] \(first: 'd/0'\)"):
        build_benchmark([base], tmp_path / "y", BuildConfig(novel_types=("d",)), train_only=[extra])
    with pytest.raises(ValueError, match="no source dataset given"):
        build_benchmark([], tmp_path / "z", train_only=[extra])
    with pytest.raises(ValueError, match="a source named 'extra' was already given"):
        build_benchmark([extra], tmp_path / "z", train_only=[extra])


def test_evaluation_differences_finds_what_changed(tiny, tmp_path):
    base, _ = tiny
    built = tmp_path / "built"
    build_benchmark([base], built, BuildConfig(novel_types=("c",), variants=1))
    assert evaluation_differences(built, built) == []
    reseeded = tmp_path / "reseeded"
    build_benchmark([base], reseeded, BuildConfig(novel_types=("c",), variants=1, seed=1))
    assert any(line.endswith("only in base") for line in evaluation_differences(built, reseeded))
    changed = tmp_path / "changed"
    shutil.copytree(built, changed)
    manifest = _manifest(changed)
    entry = next(e for e in manifest["images"] if e["split"] == "test")
    manifest["files"][entry["labels"]] = "0" * 64
    manifest["queries"][0]["reference_label"] += 1
    manifest["cell_types"].reverse()
    (changed / MANIFEST).write_text(json.dumps(manifest))
    assert evaluation_differences(built, changed) == [
        "cell types: the base's are not the first of the other's, so type indices differ",
        f"image {entry['name']!r}: differs in sha256 of {entry['labels']}",
        f"queries: {len(manifest['queries'])} != {len(manifest['queries'])} or differ "
        f"({len(manifest['queries']) - 1} equal at their index)"]
