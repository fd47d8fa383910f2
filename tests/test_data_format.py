"""The dataset format: writer, loader, checksums, validation, file reading (16-bit colour PNG included)."""

from __future__ import annotations

import json
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import data_dir
from percs.data.format import (CellType, DatasetError, DatasetWriter, Query, canonical_labels, load_dataset,
                               write_dataset)
from percs.data.io import DataFileError, load_npy, read_image, read_label_file, read_npz, to_label_image
from percs.data.png16 import read_png16
from percs.flows import renumber
from percs.synthetic_labels import scramble_labels, touching_cells

TYPES = (CellType("a", "fluorescence"), CellType("b", "fluorescence"), CellType("c", "histology"))


def _sample(name, image, labels, types, split=None, **extra):
    return dict(name=name, image=image, labels=labels, instance_types=types, split=split, **extra)


def _labels(shape, n, seed):
    return scramble_labels(touching_cells(shape, n, 6.0, seed), seed, max_label=10_000)


def _types_of(labels, seed):
    rng = np.random.default_rng(seed)
    return {int(i): "abc"[rng.integers(3)] for i in np.unique(labels) if i}


def _small_dataset(root: Path, queries=()):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 50), dtype=np.uint8),
              rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
              rng.integers(0, 65535, (30, 20), dtype=np.uint16),
              rng.integers(0, 65535, (30, 20, 3), dtype=np.uint16),
              rng.random((33, 17, 5), dtype=np.float32)]
    samples = []
    for k, image in enumerate(images):
        labels = _labels(image.shape[:2], 6, k)
        samples.append(_sample(f"group/{k}", image, labels, _types_of(labels, k), ("train", "test")[k % 2]))
    return write_dataset(root, "small", TYPES, samples, queries), samples


def test_round_trip_keeps_pixels_and_types_and_canonicalises_labels(tmp_path):
    written, samples = _small_dataset(tmp_path / "ds")
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.images == written.images and loaded.cell_types == TYPES and loaded.name == "small"
    suffixes = [Path(r.image).suffix for r in loaded.images]
    assert suffixes == [".png", ".png", ".png", ".tif", ".tif"]
    for record, sample in zip(loaded.images, samples):
        image = loaded.read_image(record)
        assert image.dtype == sample["image"].dtype and np.array_equal(image, sample["image"])
        labels = loaded.read_labels(record)
        assert labels.dtype == np.int32 and np.array_equal(labels, renumber(sample["labels"]))
        assert record.shape == labels.shape and record.n_instances == labels.max()
        assert record.channels == (1 if image.ndim == 2 else image.shape[2])
        # the type at every pixel is unchanged by the renumbering
        old_types = np.vectorize(lambda i: sample["instance_types"].get(int(i), ""))(sample["labels"])
        new_types = np.array([""] + list(record.instance_types))[labels]
        assert np.array_equal(old_types, new_types)


def test_canonical_labels_match_flows_renumber_on_scrambled_ids():
    for seed in range(8):
        shape = [(1, 1), (7, 3), (64, 48), (5, 90)][seed % 4]
        labels = _labels(shape, seed * 3, seed)
        types = _types_of(labels, seed)
        out, out_types = canonical_labels(labels, types, "x")
        assert out.dtype == np.int32 and np.array_equal(out, renumber(labels))
        assert len(out_types) == out.max()
        for new in range(1, out.max() + 1):
            old = labels[out == new][0]
            assert out_types[new - 1] == types[int(old)]


def test_source_files_are_copied_byte_for_byte(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "src.jpg", quality=80)
    decoded = read_image(tmp_path / "src.jpg")
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 7
    with DatasetWriter(tmp_path / "ds", "x") as writer:
        writer.add_cell_type("a", "m")
        record = writer.add_image("one", decoded, labels, {7: "a"}, source=tmp_path / "src.jpg")
    assert record.image == "images/one.jpg"
    assert (tmp_path / "ds" / record.image).read_bytes() == (tmp_path / "src.jpg").read_bytes()
    assert np.array_equal(load_dataset(tmp_path / "ds").read_image(record), decoded)


def test_queries_round_trip_and_record_helpers(tmp_path):
    ds, _ = _small_dataset(tmp_path / "probe")
    target = ds.images[1]  # split test
    label = target.labels_of_type(target.instance_types[0])[0]
    query = Query(target.name, target.instance_types[0], target.name, label, "native")
    written, _ = _small_dataset(tmp_path / "ds", [query])
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.queries == (query,) == written.queries
    assert loaded.record(target.name).type_of(label) == query.target_type
    assert loaded.modality_of("c") == "histology"
    assert [r.name for r in loaded.in_split("test")] == ["group/1", "group/3"]
    with pytest.raises(ValueError, match="label 0 is not an instance"):
        target.type_of(0)


@pytest.mark.parametrize("change, message", [
    (dict(image="nope"), "names an image that is not in the dataset"),
    (dict(image="group/0"), "is in split 'train'"),
    (dict(reference_label=999), "reference label 999 is not an instance"),
    (dict(target_type="zzz"), "target type 'zzz' is not in the vocabulary"),
    (dict(origin="imagined"), "origin 'imagined'"),
])
def test_bad_queries_are_rejected(tmp_path, change, message):
    ds, _ = _small_dataset(tmp_path / "probe")
    target = ds.images[1]
    query = dict(image=target.name, target_type=target.instance_types[0], reference_image=target.name,
                 reference_label=1, origin="native")
    query.update(change)
    with pytest.raises(DatasetError, match=message):
        _small_dataset(tmp_path / "ds", [Query(**query)])


def test_query_reference_of_another_type_is_rejected(tmp_path):
    ds, _ = _small_dataset(tmp_path / "probe")
    target = ds.images[1]
    other = next(t for t in "abc" if t != target.instance_types[0])
    with pytest.raises(DatasetError, match="reference cell is of type"):
        _small_dataset(tmp_path / "ds", [Query(target.name, other, target.name, 1)])


def test_tampered_file_is_named(tmp_path):
    ds, _ = _small_dataset(tmp_path / "ds")
    victim = tmp_path / "ds" / ds.images[2].labels
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"{victim}: sha256 .* differs"):
        load_dataset(tmp_path / "ds")
    assert load_dataset(tmp_path / "ds", verify=False).images == ds.images


def test_missing_file_is_named(tmp_path):
    ds, _ = _small_dataset(tmp_path / "ds")
    victim = tmp_path / "ds" / ds.images[0].image
    victim.unlink()
    with pytest.raises(DatasetError, match=f"{victim}: file named in the manifest is missing"):
        load_dataset(tmp_path / "ds")


def _edit_manifest(root: Path, edit) -> Path:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=99), "format version 99"),
    (lambda m: m.update(format="other"), "not a percs-dataset manifest"),
    (lambda m: m["images"][0].pop("shape"), "malformed manifest"),
    (lambda m: m["images"][0].update(image="../../etc/passwd"), "must be relative"),
    (lambda m: m["images"][0].update(instance_types=[77]), "malformed manifest"),
    (lambda m: m["images"][0].update(split="holdout"), "split 'holdout'"),
    (lambda m: m["files"].pop(m["images"][0]["labels"]), "has no checksum"),
    (lambda m: m["images"].append(m["images"][0]), "image names repeat"),
    (lambda m: m["cell_types"].append(m["cell_types"][0]), "names repeat in the vocabulary"),
])
def test_inconsistent_manifest_is_rejected_naming_it(tmp_path, edit, message):
    _small_dataset(tmp_path / "ds")
    path = _edit_manifest(tmp_path / "ds", edit)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(tmp_path / "ds")
    assert str(path) in str(error.value)


def test_labels_of_another_shape_than_the_manifest_says_are_named(tmp_path):
    ds, _ = _small_dataset(tmp_path / "ds")
    _edit_manifest(tmp_path / "ds", lambda m: m["images"][0].update(shape=[3, 3]))
    loaded = load_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'ds' / ds.images[0].labels}: labels are \\(40, 50\\)"):
        loaded.read_labels(loaded.images[0])


def test_unreadable_or_absent_manifest(tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json: cannot read manifest"):
        load_dataset(tmp_path)


def test_writer_rejects_bad_input(tmp_path):
    image, labels = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.int32)
    labels[1:3, 1:3] = 5
    writer = DatasetWriter(tmp_path / "ds", "x")
    writer.add_cell_type("a", "m")
    with pytest.raises(DatasetError, match="modality 'm', not 'n'"):
        writer.add_cell_type("a", "n")
    with pytest.raises(DatasetError, match="label 5 has no cell type"):
        writer.add_image("i", image, labels, {})
    with pytest.raises(DatasetError, match="cell type 'zz' is not in the vocabulary"):
        writer.add_image("i", image, labels, {5: "zz"})
    with pytest.raises(DatasetError, match="labels have shape"):
        writer.add_image("i", image, labels[:, :7], {5: "a"})
    with pytest.raises(DatasetError, match="labels must be non-negative integers"):
        writer.add_image("i", image, -labels, {-5: "a"})
    with pytest.raises(DatasetError, match="labels must be non-negative integers"):
        writer.add_image("i", image, labels.astype(np.float32), {5: "a"})
    with pytest.raises(DatasetError, match="int64 with 2 dims"):
        writer.add_image("i", image.astype(np.int64), labels, {5: "a"})
    with pytest.raises(DatasetError, match="split 'dev'"):
        writer.add_image("i", image, labels, {5: "a"}, split="dev")
    with pytest.raises(DatasetError, match="must be relative"):
        writer.add_image("../i", image, labels, {5: "a"})
    writer.add_image("i", image, labels, {5: "a"})
    with pytest.raises(DatasetError, match="already added"):
        writer.add_image("i", image, labels, {5: "a"})
    with pytest.raises(DatasetError, match="not empty"):
        DatasetWriter(tmp_path / "ds", "again")


@pytest.mark.parametrize("existed", [False, True])
def test_failed_writer_removes_what_it_wrote(tmp_path, existed):
    if existed:
        (tmp_path / "ds").mkdir()
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", "x") as writer:
            writer.add_cell_type("a", "m")
            writer.add_image("sub/i", np.zeros((4, 4), np.uint8), np.ones((4, 4), np.int32), {1: "a"})
            raise RuntimeError("import failed half way")
    assert (tmp_path / "ds").exists() == existed and not any((tmp_path / "ds").glob("*"))
    unclosed = DatasetWriter(tmp_path / "ds2", "x")
    unclosed.add_cell_type("a", "m")
    with pytest.raises(DatasetError, match="no manifest"):
        load_dataset(tmp_path / "ds2")


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 4), np.int32), "expected a 2-D"),
    (np.zeros((4, 4), bool), "binary mask"),
    (np.full((4, 4), -1, np.int16), "negative"),
    (np.full((4, 4), 0.5), "non-integer"),
    (np.full((4, 4), 2**31, np.int64), "above"),
    (np.zeros((4, 4, 3), np.uint8), "expected a 2-D"),
])
def test_to_label_image_rejects(array, message):
    with pytest.raises(DataFileError, match=f"where.tif: .*{message}"):
        to_label_image(array, "where.tif")


def test_to_label_image_accepts_singleton_axes_and_integral_floats():
    assert to_label_image(np.ones((1, 3, 4), np.uint8), "x").shape == (3, 4)
    assert to_label_image(np.ones((3, 4, 1), np.float32), "x").dtype == np.int64


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 garbage")
    for name in ("broken.png", "broken.tif"):
        with pytest.raises(DataFileError, match=f"{tmp_path / name}: cannot read"):
            read_image(tmp_path / name)
        with pytest.raises(DataFileError, match=f"{tmp_path / name}: cannot read"):
            read_label_file(tmp_path / name)
    with pytest.raises(DataFileError, match="unsupported image suffix"):
        read_image(tmp_path / "x.bmp")



class _Finalised:
    """Garbage whose finaliser runs Python code, so a thread can be switched out in the middle of a header parse
    (what dask's workers do all the time)."""

    def __del__(self):
        sum(range(50))


def test_npy_and_npz_reads_hold_from_several_threads(tmp_path):
    # Unlocked, np.load from four threads fails here within a second on CPython 3.11 with "SystemError: AST
    # constructor recursion depth mismatch" (python/cpython#106905): this failed percs' blockwise CI run.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        arrays = dict(labels=np.arange(12, dtype=np.int32).reshape(3, 4), origin=np.array([5, 7]))
        np.savez_compressed(tmp_path / "a.npz", **arrays)
        np.save(tmp_path / "b.npy", arrays["labels"])
        errors = []

        def read():
            try:
                for _ in range(600):
                    garbage = _Finalised()
                    garbage.cycle = garbage
                    del garbage
                    saved = read_npz(tmp_path / "a.npz")
                    assert saved.keys() == arrays.keys()
                    assert all(np.array_equal(saved[k], arrays[k]) for k in arrays)
                    assert np.array_equal(load_npy(tmp_path / "b.npy"), arrays["labels"])
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert list(read_npz(tmp_path / "a.npz", ("origin",))) == ["origin"]
    with pytest.raises(KeyError, match="a.npz: has no array 'cut'"):
        read_npz(tmp_path / "a.npz", ("origin", "cut"))


# 16-bit colour PNGs, which Pillow reads as 8 bit

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter_rows(raw: np.ndarray, bpp: int, filters: list[int]) -> bytes:
    """Forward PNG filtering of (H, row bytes) uint8 rows, one filter type per row."""
    out = []
    previous = np.zeros(raw.shape[1], np.int64)
    for row, kind in zip(raw.astype(np.int64), filters):
        left = np.r_[np.zeros(bpp, np.int64), row[:-bpp]]
        up_left = np.r_[np.zeros(bpp, np.int64), previous[:-bpp]]
        p = left + previous - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - previous), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, up_left))
        guess = [0, left, previous, (left + previous) // 2, paeth][kind]
        out.append(bytes([kind]) + ((row - guess) % 256).astype(np.uint8).tobytes())
        previous = row
    return b"".join(out)


def write_png16(path: Path, pixels: np.ndarray, filters: list[int]) -> None:
    """A 16-bit RGB (H, W, 3) or RGBA (H, W, 4) PNG with the given filter type per row."""
    H, W, C = pixels.shape
    raw = pixels.astype(">u2").reshape(H, W * C).view(np.uint8).reshape(H, W * C * 2)
    header = struct.pack(">IIBBBBB", W, H, 16, {3: 2, 4: 6}[C], 0, 0, 0)
    data = zlib.compress(_filter_rows(raw, C * 2, filters))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (16, 9, 4), (3, 40, 3)])
def test_png16_decodes_every_filter_type(tmp_path, shape):
    rng = np.random.default_rng(shape[1])
    pixels = rng.integers(0, 65536, shape).astype(np.uint16)
    filters = [int(k) for k in rng.integers(0, 5, shape[0])]
    filters[: min(5, shape[0])] = [0, 1, 2, 3, 4][: min(5, shape[0])]
    write_png16(tmp_path / "x.png", pixels, filters)
    decoded = read_image(tmp_path / "x.png")
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, pixels[..., :3])
    assert np.array_equal(decoded >> 8, np.asarray(Image.open(tmp_path / "x.png"))[..., :3])  # Pillow: high byte


def test_png16_rejects_truncated_data(tmp_path):
    write_png16(tmp_path / "x.png", np.ones((6, 6, 3), np.uint16), [0] * 6)
    data = (tmp_path / "x.png").read_bytes()
    header, rest = data[:33], data[33:]
    body = zlib.compress(zlib.decompress(rest[8:-16])[:20])
    (tmp_path / "cut.png").write_bytes(header + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))
    with pytest.raises(DataFileError, match="cut.png: cannot read image .*truncated"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "nothing.png").write_bytes(b"x" * 40)
    with pytest.raises(ValueError, match="not a PNG"):
        read_png16(tmp_path / "nothing.png")


def test_png16_matches_pillow_on_real_cellpose_images():
    root = data_dir("cellpose_styles")
    for path in sorted(root.glob("*/*_img.png"))[::6]:
        decoded = read_image(path)
        assert decoded.dtype == np.uint16 and decoded.ndim == 3
        assert np.array_equal(decoded >> 8, np.asarray(Image.open(path)))
