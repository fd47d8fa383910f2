"""`percs data build` / `stats`: type splits without leaks, pasting with a gap inside a modality group, the fixed
queries and their references, determinism, the PanNuke protocol on CoNSeP, and errors that name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import data_dir
from percs.cli import main
from percs.data.build import BuildConfig, build_benchmark
from percs.data.format import DatasetError, DatasetWriter, load_dataset
from percs.data.importers import ImportOptions, import_typemap
from percs.data.split import SplitInput, choose_novel_types, plan_splits
from percs.data.stats import split_stats
from percs.data.synthetic import write_synthetic_dataset
from real_subsets import NOVEL, build_subset_benchmark, import_consep_subset

SQUARE = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return load_dataset(build_subset_benchmark(root)), root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "src", images_per_type=4, mixed_images=0, shape=(80, 80), seed=3)
    return root / "src"


def _source(bench_root: Path, record):
    source = load_dataset(bench_root / record.meta["source_dataset"], verify=False)
    return source, source.record(record.meta["source_image"])


def test_no_novel_type_reaches_train_val_or_test_not_even_pasted(bench):
    ds, _ = bench
    assert ds.meta["novel_types"] == sorted(NOVEL) and ds.meta["protocol"] == "percs"
    for r in ds.images:
        types = set(r.instance_types)
        if r.split == "novel":
            assert types <= set(NOVEL)
        else:
            assert not types & set(NOVEL), r.name
    assert {t for r in ds.in_split("novel") for t in r.instance_types} == set(NOVEL)
    seen = {"Kc167", "macrophagocyte", "fluo_small_256"}
    for split in ("train", "val", "test"):  # every seen type in every seen split (3 images per type)
        assert {t for r in ds.in_split(split) for t in r.instance_types} >= seen
    assert all(len(r.meta.get("pasted", [])) == 0 for r in ds.in_split("train"))


def test_pasted_cells_keep_a_gap_stay_in_their_group_and_leave_native_cells_alone(bench):
    ds, root = bench
    by_source = {}
    for r in ds.images:
        by_source.setdefault(r.name.rsplit("/mix", 1)[0], []).append(r)
    n_pasted = 0
    for r in ds.images:
        if r.split == "train":
            continue
        assert r.name.endswith(("/mix0", "/mix1", "/mix2")) and r.meta["pasted"], r.name
        labels, image = ds.read_labels(r), ds.read_image(r)
        source, source_record = _source(root, r)
        source_labels, source_image = source.read_labels(source_record), source.read_image(source_record)
        native_types = set(source_record.instance_types)
        near_pasted = np.zeros(labels.shape, bool)
        assert len(r.meta["pasted"]) <= r.meta["pasted_requested"] == int(np.floor(0.5 * r.meta["native_cells"] + 0.5))
        boxes = ndimage.find_objects(labels)
        for label, donor, donor_label in r.meta["pasted"]:
            ys, xs = boxes[label - 1]
            assert ys.start > 0 and xs.start > 0 and ys.stop < labels.shape[0] and xs.stop < labels.shape[1]
            box = (slice(ys.start - 1, ys.stop + 1), slice(xs.start - 1, xs.stop + 1))
            cell = labels[box] == label
            near = ndimage.binary_dilation(cell, SQUARE)
            assert not (near & (labels[box] > 0) & ~cell).any()  # >= 1 px of background to any other cell
            assert not source_labels[box][cell].any()  # pasted onto background only
            cell_type = r.type_of(label)
            assert cell_type not in native_types and ds.modality_of(cell_type) == "fluorescence"
            assert {d.split for d in by_source[donor]} == {r.split}  # donors come from the same split
            near_pasted[box] |= near
            n_pasted += 1
        assert np.array_equal(labels > 0, (source_labels > 0) | np.isin(labels, [p[0] for p in r.meta["pasted"]]))
        assert np.array_equal(image[~near_pasted], source_image[~near_pasted])
    assert n_pasted > 300


def _native_types(record) -> set[str]:
    pasted = {p[0] for p in record.meta.get("pasted", [])}
    return {record.type_of(label) for label in range(1, record.n_instances + 1) if label not in pasted}


def _whole_native_cells(ds, record, cell_type) -> list[tuple[int, int]]:
    """(area, label) of the whole (not border-touching) native cells of a type, sorted."""
    labels = ds.read_labels(record)
    pasted = {p[0] for p in record.meta.get("pasted", [])}
    boxes = ndimage.find_objects(labels)
    H, W = labels.shape
    cells = []
    for label in record.labels_of_type(cell_type):
        ys, xs = boxes[label - 1]
        if label not in pasted and ys.start > 0 and xs.start > 0 and ys.stop < H and xs.stop < W:
            cells.append((int((labels[boxes[label - 1]] == label).sum()), label))
    return sorted(cells)


def test_queries_cover_every_type_present_with_the_documented_reference(bench):
    ds, _ = bench
    source_of = {r.name: r.name.rsplit("/mix", 1)[0] for r in ds.images}
    for r in ds.images:
        queries = [q for q in ds.queries if q.image == r.name]
        if r.split == "train":
            assert not queries
            continue
        assert sorted(q.target_type for q in queries) == sorted(set(r.instance_types))
        for q in queries:
            assert q.origin == ("native" if q.target_type in _native_types(r) else "pasted")
            reference = ds.record(q.reference_image)
            assert reference.split == r.split and reference.type_of(q.reference_label) == q.target_type
            others = sorted({source_of[x.name] for x in ds.in_split(r.split)
                             if q.target_type in _native_types(x) and source_of[x.name] != source_of[r.name]})
            if not others:
                assert q.reference_image == r.name
                continue
            # the next source image of that type after the query's (cyclic, name order), its first variant
            later = [s for s in others if s > source_of[r.name]]
            assert source_of[q.reference_image] == (later or others)[0] and q.reference_image.endswith("/mix0")
            cells = _whole_native_cells(ds, reference, q.target_type)
            assert q.reference_label in [label for _, label in cells]
            if not any(p[1] == source_of[q.reference_image] for p in r.meta["pasted"]):
                assert q.reference_label == cells[(len(cells) - 1) // 2][1]  # median area, ties by label
    assert {q.origin for q in ds.queries} == {"native", "pasted"}


def test_build_is_deterministic_and_the_seed_matters(synthetic, tmp_path):
    config = BuildConfig(novel_types=("granular",), seed=4, name="b")
    a = build_benchmark([synthetic], tmp_path / "a", config)
    b = build_benchmark([synthetic], tmp_path / "b", config)
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest_a == manifest_b and a.queries == b.queries
    c = build_benchmark([synthetic], tmp_path / "c", BuildConfig(novel_types=("granular",), seed=5, name="b"))
    assert [r.meta.get("pasted") for r in c.images] != [r.meta.get("pasted") for r in a.images]
    assert [(q.reference_image, q.reference_label) for q in c.queries] != [
        (q.reference_image, q.reference_label) for q in a.queries]


def test_novel_types_all_or_drawn_by_seed(synthetic, tmp_path):
    everything = build_benchmark([synthetic], tmp_path / "all", BuildConfig(novel_types="all"))
    assert {r.split for r in everything.images} == {"novel"}
    assert {q.origin for q in everything.queries} == {"native", "pasted"}
    drawn = build_benchmark([synthetic], tmp_path / "drawn", BuildConfig(novel_count=2, seed=7))
    novel = choose_novel_types(["blob", "elongated", "granular", "ring", "round"], (), 2, 7)
    assert tuple(drawn.meta["novel_types"]) == novel and len(novel) == 2
    assert {t for r in drawn.in_split("novel") for t in r.instance_types} == set(novel)
    assert choose_novel_types(["a", "b", "c", "d", "e", "f"], (), 3, 1) != choose_novel_types(
        ["a", "b", "c", "d", "e", "f"], (), 3, 2)


def test_plan_splits_rules():
    images = [SplitInput(f"t{k}/{i}", frozenset({f"t{k}"}), None, f"t{k}/g{i // 2}") for k in range(3)
              for i in range(10)]
    images += [SplitInput("mixed", frozenset({"t0", "t2"}), None, "mixed"),
               SplitInput("kept", frozenset({"t1"}), "test", "kept")]
    plan = plan_splits(images, ["t2"], True, 0.2, 0.2, seed=0)
    assert plan.excluded[0]["image"] == "mixed" and "mixed" not in plan.splits
    assert plan.splits["kept"] == "test"
    for k in range(3):
        splits = [plan.splits[f"t{k}/{i}"] for i in range(10)]
        if k == 2:
            assert set(splits) == {"novel"}
            continue
        assert all(splits[i] == splits[i + 1] for i in range(0, 10, 2))  # groups never straddle splits
        assert sorted(splits[::2]) == ["test", "train", "train", "train", "val"]
    carved = plan_splits([SplitInput(f"a/{i}", frozenset({"a"}), "train", f"g{i}") for i in range(10)]
                         + [SplitInput("b", frozenset({"a"}), "test", "b")], [], False, 0.2, 0.1, seed=0)
    assert sorted(carved.splits.values()).count("val") == 1 and carved.splits["b"] == "test"
    with pytest.raises(ValueError, match="must be >= 0, sum < 1"):
        plan_splits(images, [], True, 0.6, 0.5, seed=0)


@pytest.mark.parametrize("reference", ["another-image", "same-image"])
def test_pannuke_protocol_on_consep(tmp_path, reference):
    source = import_consep_subset(tmp_path)
    config = BuildConfig(distractor_types=("other",), group_pattern=r"^(.*)_\d+$", reference=reference)
    ds = build_benchmark([source], tmp_path / "bench", config)
    assert ds.meta["protocol"] == "pannuke"
    assert {r.name.split("/")[1] for r in ds.in_split("test")} == {"test"}
    val_tiles = {r.name.rsplit("_", 1)[0] for r in ds.in_split("val")}  # a whole tile carved out of train
    assert len(val_tiles) == 1 and len(ds.in_split("val")) == 3 and val_tiles.pop().startswith("consep/train/")
    src = load_dataset(source, verify=False)
    for r in ds.images:  # no pasting: files copied byte for byte
        original = src.record(r.meta["source_image"])
        assert (ds.root / r.image).read_bytes() == (src.root / original.image).read_bytes()
    for r in ds.in_split("val") + ds.in_split("test"):
        queries = [q for q in ds.queries if q.image == r.name]
        assert sorted(q.target_type for q in queries) == sorted(set(r.instance_types) - {"other"})
        for q in queries:
            assert q.origin == "native"
            tile, own_tile = q.reference_image.rsplit("_", 1)[0], r.name.rsplit("_", 1)[0]
            other_tiles = {x.name.rsplit("_", 1)[0] for x in ds.in_split(r.split)
                           if q.target_type in x.instance_types} - {own_tile}
            if reference == "same-image" or not other_tiles:  # val holds one tile: the same image it is
                assert q.reference_image == r.name
            else:
                assert tile in other_tiles and ds.record(q.reference_image).split == r.split


def test_stats_and_cli(synthetic, tmp_path, capsys):
    assert main(["data", "build", str(synthetic), "--out", str(tmp_path / "b"), "--novel-types",
                 "granular,elongated", "--variants", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    ds = load_dataset(tmp_path / "b")
    stats = {s.split: s for s in split_stats(ds)}
    assert stats["novel"].images == 2 * 8 and stats["novel"].types == ("elongated", "granular")
    assert sum(s.images for s in stats.values()) == len(ds.images)
    assert sum(s.native_queries + s.pasted_queries for s in stats.values()) == len(ds.queries)
    assert sum(s.pasted_cells for s in stats.values()) == sum(len(r.meta.get("pasted", [])) for r in ds.images)
    assert main(["data", "stats", str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    row = f"| test | {stats['test'].images} | {stats['test'].cells} | {stats['test'].pasted_cells} |"
    assert row in table and row in printed


def test_errors_name_the_file(synthetic, tmp_path, capsys):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nothing' / 'manifest.json'}: no manifest"):
        build_benchmark([tmp_path / "nothing"], tmp_path / "out")
    ds = load_dataset(synthetic)
    copy = tmp_path / "copy"
    build_benchmark([synthetic], copy, BuildConfig(variants=0))
    victim = copy / load_dataset(copy).images[0].labels
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=f"{victim}: sha256"):
        build_benchmark([copy], tmp_path / "out")
    assert main(["data", "build", str(copy), "--out", str(tmp_path / "out2")]) == 1
    assert str(victim) in capsys.readouterr().err and not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match=r"novel types \['nope'\] have no images"):
        build_benchmark([synthetic], tmp_path / "out", BuildConfig(novel_types=("nope",)))
    with pytest.raises(ValueError, match="a source named 'synthetic' was already given"):
        build_benchmark([synthetic, synthetic], tmp_path / "out")
    with pytest.raises(ValueError, match="distractor types"):
        build_benchmark([synthetic], tmp_path / "out", BuildConfig(distractor_types=("nope",)))
    with pytest.raises(ValueError, match="pannuke protocol keeps every class"):
        build_benchmark([synthetic], tmp_path / "out", BuildConfig(protocol="pannuke", novel_types=("ring",)))
    with pytest.raises(ValueError, match="gap"):
        build_benchmark([synthetic], tmp_path / "out", BuildConfig(gap=0))
    assert ds.name == "synthetic" and not (tmp_path / "out").exists()


# building imported data without code: --overwrite, progress, per-source groups, stats, negative images

def test_build_refuses_an_existing_benchmark_unless_overwrite_and_shows_progress(synthetic, tmp_path, capsys):
    out = tmp_path / "b"
    build = ["data", "build", str(synthetic), "--novel-types", "granular", "--variants", "1", "--out", str(out)]
    assert main(build) == 0
    assert "writing images: 100%" in capsys.readouterr().err
    first = (out / "manifest.json").read_bytes()
    assert main([*build, "--seed", "1"]) == 1
    assert f"{out}: output folder exists and is not empty; give --overwrite" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == first
    assert main([*build, "--seed", "1", "--novel-types", "nope", "--overwrite"]) == 1  # a failed build keeps the old
    assert (out / "manifest.json").read_bytes() == first and load_dataset(out).meta["config"]["seed"] == 0
    assert main([*build, "--seed", "1", "--overwrite"]) == 0
    assert load_dataset(out).meta["config"]["seed"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not a dataset")
    assert main([*build[:-1], str(tmp_path / "mine"), "--overwrite"]) == 1
    assert "has no manifest.json; remove it yourself" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").exists()
    assert main([*build[:-1], str(synthetic), "--overwrite"]) == 1
    assert f"is (or holds) the source {synthetic}" in capsys.readouterr().err and load_dataset(synthetic)


def _consep_tiles(root: Path, tiles: dict[str, tuple[int, ...]], rename) -> Path:
    """Three patches of each CoNSeP tile (symlinked), named by `rename(split, tile, k)`; returns the layout root."""
    consep = data_dir("consep")
    for split, numbers in tiles.items():
        for tile in numbers:
            for k in range(3):
                source = f"{split}_{tile}_{k:03d}"
                for folder, suffix in (("images", "jpg"), ("inst", "tif"), ("typemap", "png")):
                    target = root / split / folder / f"{rename(split, tile, k)}.{suffix}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(consep / split / folder / f"{source}.{suffix}")
    return root


def test_sources_with_their_own_group_patterns_build_together(tmp_path):
    classes = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
    tiles = {"train": (1, 2, 3, 4), "test": (1, 2)}
    a = _consep_tiles(tmp_path / "a", tiles, lambda split, tile, k: f"{split}_{tile}_{k:03d}")
    b = _consep_tiles(tmp_path / "b", {"train": (5, 6, 7, 8), "test": (3, 4)},
                      lambda split, tile, k: f"slide{tile}-patch{k}")
    import_typemap(a, tmp_path / "src_a", ImportOptions("tiles_a", "histology", group_pattern=r"^(.*)_\d+$"), classes)
    import_typemap(b, tmp_path / "src_b", ImportOptions("tiles_b", "histology", group_pattern=r"^(.*)-patch\d+$"),
                   classes)
    config = BuildConfig(distractor_types=("other",))
    ds = build_benchmark([tmp_path / "src_a", tmp_path / "src_b"], tmp_path / "bench", config)
    tile_of = {r.name: re.sub(r"(_\d+|-patch\d+)$", "", r.name) for r in ds.images}
    for tile in set(tile_of.values()):  # every tile's patches share a split, in both naming schemes
        assert len({r.split for r in ds.images if tile_of[r.name] == tile}) == 1, tile
    assert len(ds.in_split("val")) == 3  # one whole tile carved out of train
    for q in ds.queries:  # references come from another tile wherever the split has one with the type
        others = {tile_of[r.name] for r in ds.in_split(ds.record(q.image).split) if q.target_type in r.instance_types}
        if others - {tile_of[q.image]}:
            assert tile_of[q.reference_image] != tile_of[q.image]
    plain = import_typemap(a, tmp_path / "plain_a", ImportOptions("tiles_a", "histology"), classes)
    assert "group" not in plain.images[0].meta
    old = build_benchmark([tmp_path / "plain_a"], tmp_path / "old", BuildConfig(distractor_types=("other",),
                                                                                group_pattern=r"^(.*)_\d+$"))
    new = build_benchmark([tmp_path / "src_a"], tmp_path / "new", config)
    assert [(r.name, r.split) for r in old.images] == [(r.name, r.split) for r in new.images]
    assert old.queries == new.queries  # the import's groups are the build pattern's groups


def test_stats_count_types_and_pasted_cells_that_found_no_room(synthetic, tmp_path, capsys):
    assert main(["data", "build", str(synthetic), "--paste-ratio", "6", "--variants", "1", "--out",
                 str(tmp_path / "b")]) == 0
    built = capsys.readouterr().out
    ds = load_dataset(tmp_path / "b")
    requested = sum(r.meta.get("pasted_requested", 0) for r in ds.images)
    placed = sum(len(r.meta.get("pasted", [])) for r in ds.images)
    short = sum(len(r.meta.get("pasted", [])) < r.meta.get("pasted_requested", 0) for r in ds.images)
    assert 0 < placed < requested and short > 0
    line = f"pasted cells: {placed} of {requested} requested placed; {requested - placed} found no room (in {short} "
    assert main(["data", "stats", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert line in printed and line in built
    splits = [s.split for s in split_stats(ds)]
    assert f"| type | modality | images ({' / '.join(splits)}) | cells | pasted cells | queries |" in printed
    for t in ds.cell_types:
        native = {r.name: [label for label in r.labels_of_type(t.name)
                           if label not in {p[0] for p in r.meta.get("pasted", [])}] for r in ds.images}
        images = " / ".join(str(sum(bool(native[r.name]) for r in ds.in_split(s))) for s in splits)
        pasted = sum(r.type_of(p[0]) == t.name for r in ds.images for p in r.meta.get("pasted", []))
        queries = sum(q.target_type == t.name for q in ds.queries)
        cells = sum(len(v) for v in native.values())
        assert f"| {t.name} | {t.modality} | {images} | {cells} | {pasted} | {queries} |" in printed


def _tiny_source(root: Path, name: str, types: dict[str, str], per_type: int, empty: int = 0) -> Path:
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


def test_negative_images_are_split_like_seen_images_and_get_no_query(tmp_path, capsys):
    source = _tiny_source(tmp_path, "tiny", {"a": "fluo", "b": "fluo", "c": "fluo"}, 4, empty=3)
    ds = build_benchmark([source], tmp_path / "bench", BuildConfig(novel_types=("c",), variants=1))
    negatives = [r for r in ds.images if r.name.startswith("tiny/empty/")]
    assert len(negatives) == 3 and {r.split for r in negatives} == {"train", "val", "test"}
    assert all(r.n_instances == 0 for r in negatives) and not any(q.image in {r.name for r in negatives}
                                                                  for q in ds.queries)
    assert {r.split for r in ds.images if "c" in r.instance_types} == {"novel"}
    everything = build_benchmark([source], tmp_path / "all", BuildConfig(novel_types="all", variants=1))
    assert {r.split for r in everything.images} == {"novel"}
    assert main(["data", "stats", str(tmp_path / "bench")]) == 0
    assert "images without cells (negative images): 3" in capsys.readouterr().out
    assert plan_splits([SplitInput("n", frozenset(), None, "n")], ["a"], True, 0.2, 0.1, 0).splits == {"n": "train"}


def test_build_warns_when_unspecified_modalities_are_pasted_together(tmp_path, capsys):
    source = _tiny_source(tmp_path, "tiny", {"a": "unspecified", "b": "unspecified"}, 4)
    assert main(["data", "build", str(source), "--variants", "1", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "percs data build: warning: cell types ['a', 'b'] have modality 'unspecified'" in err
    assert "--modality-of TYPE=GROUP" in err
    assert main(["data", "build", str(source), "--variants", "0", "--out", str(tmp_path / "c")]) == 0
    assert "warning" not in capsys.readouterr().err  # nothing pasted: nothing to warn about
