"""Whether two built benchmarks evaluate the same way, whatever their train splits hold (for example a build
with train-only sources, `percs data build --train-only`, against the build without them)."""

from __future__ import annotations

import json
from pathlib import Path

from percs.data.format import MANIFEST

EVAL = ("val", "test", "novel")
META = ("protocol", "novel_types", "distractor_types")


def evaluation_differences(base: Path | str, other: Path | str) -> list[str]:
    """What differs between the evaluation parts of two benchmark folders, as messages; empty when none does.

    Compared as stored in the manifests: meta protocol, novel and distractor types; base's cell types must be
    the first of other's (so that instance type indices name the same types); the val, test and novel image
    entries (every field: files, shape, split, instance types, meta) and the sha256 of their files; the
    queries, in order. Files are not read: load_dataset(verify=True) checks them against these sha256.
    """
    a, b = (json.loads((Path(root) / MANIFEST).read_text()) for root in (base, other))
    out = [f"meta {key}: {a['meta'].get(key)!r} != {b['meta'].get(key)!r}"
           for key in META if a["meta"].get(key) != b["meta"].get(key)]
    if b["cell_types"][:len(a["cell_types"])] != a["cell_types"]:
        out.append("cell types: the base's are not the first of the other's, so type indices differ")
    images_a, images_b = (_evaluation_images(m) for m in (a, b))
    for name in sorted(images_a.keys() ^ images_b.keys()):
        out.append(f"image {name!r}: only in {'base' if name in images_a else 'other'}")
    for name in sorted(images_a.keys() & images_b.keys()):
        entry_a, entry_b = images_a[name], images_b[name]
        fields = sorted(k for k in entry_a.keys() | entry_b.keys() if entry_a.get(k) != entry_b.get(k))
        fields += [f"sha256 of {entry_a[k]}" for k in ("image", "labels")
                   if k not in fields and a["files"].get(entry_a[k]) != b["files"].get(entry_b[k])]
        if fields:
            out.append(f"image {name!r}: differs in {', '.join(fields)}")
    if a["queries"] != b["queries"]:
        same = sum(qa == qb for qa, qb in zip(a["queries"], b["queries"]))
        out.append(f"queries: {len(a['queries'])} != {len(b['queries'])} or differ ({same} equal at their index)")
    return out


def _evaluation_images(manifest: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in manifest["images"] if entry["split"] in EVAL}
