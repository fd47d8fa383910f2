"""`percs data stats`: images, cells, types and queries per split and per type of a dataset, and the pasted cells
that found no room."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from percs.data.format import SPLITS, Dataset


@dataclass(frozen=True)
class SplitStats:
    """One split: images, cells (pasted ones included), pasted cells, cell types present, queries by origin."""

    split: str
    images: int
    cells: int
    pasted_cells: int
    types: tuple[str, ...]
    native_queries: int
    pasted_queries: int


def split_stats(dataset: Dataset) -> list[SplitStats]:
    """Stats of every split that has images, in the order train, val, test, novel, then unassigned (None)."""
    out = []
    for split in (*SPLITS, None):
        records = dataset.in_split(split)
        if not records:
            continue
        names = {r.name for r in records}
        queries = [q for q in dataset.queries if q.image in names]
        out.append(SplitStats(str(split), len(records), sum(r.n_instances for r in records),
                              sum(len(r.meta.get("pasted", [])) for r in records),
                              tuple(sorted({t for r in records for t in r.instance_types})),
                              sum(q.origin == "native" for q in queries), sum(q.origin == "pasted" for q in queries)))
    return out


@dataclass(frozen=True)
class TypeStats:
    """One cell type: its modality group, images holding native cells of it per split (str(split) -> count, None
    as "None"), its native cells, its pasted cells and the queries targeting it."""

    name: str
    modality: str
    images: dict[str, int]
    cells: int
    pasted_cells: int
    queries: int


def type_stats(dataset: Dataset) -> list[TypeStats]:
    """Stats of every cell type, in vocabulary order (a cell is native unless its label is in meta["pasted"])."""
    images: dict[str, Counter] = {t.name: Counter() for t in dataset.cell_types}
    cells, pasted = Counter(), Counter()
    for r in dataset.images:
        pasted_labels = {p[0] for p in r.meta.get("pasted", [])}
        native = Counter(t for label, t in enumerate(r.instance_types, 1) if label not in pasted_labels)
        cells.update(native)
        pasted.update(r.instance_types[label - 1] for label in pasted_labels)
        for t in native:
            images[t][str(r.split)] += 1
    queries = Counter(q.target_type for q in dataset.queries)
    return [TypeStats(t.name, t.modality, dict(images[t.name]), cells[t.name], pasted[t.name], queries[t.name])
            for t in dataset.cell_types]


@dataclass(frozen=True)
class PasteStats:
    """Pasted cells over the images that asked for some: requested, placed, and the images where some found
    no room (dense images)."""

    requested: int
    placed: int
    images_short: int

    @property
    def no_room(self) -> int:
        return self.requested - self.placed


def paste_stats(dataset: Dataset) -> PasteStats:
    """From each image's meta (pasted_requested, pasted) as percs data build writes them."""
    asked = [(int(r.meta["pasted_requested"]), len(r.meta.get("pasted", []))) for r in dataset.images
             if "pasted_requested" in r.meta]
    return PasteStats(sum(a for a, _ in asked), sum(p for _, p in asked), sum(p < a for a, p in asked))


def format_type_stats(dataset: Dataset) -> list[str]:
    """Lines of a Markdown table of type_stats, images per split in the columns of the splits present."""
    splits = [str(s.split) for s in split_stats(dataset)]
    lines = [f"| type | modality | images ({' / '.join(splits)}) | cells | pasted cells | queries |",
             "|---|---|---|---|---|---|"]
    for t in type_stats(dataset):
        per_split = " / ".join(str(t.images.get(s, 0)) for s in splits)
        lines.append(f"| {t.name} | {t.modality} | {per_split} | {t.cells} | {t.pasted_cells} | {t.queries} |")
    return lines


def format_stats(dataset: Dataset) -> str:
    """A Markdown table of split_stats, then the types of each split."""
    protocol = dataset.meta.get("protocol")
    lines = [f"{dataset.name}: {len(dataset.images)} images, {len(dataset.cell_types)} cell types"
             + (f", {protocol} protocol" if protocol else ""), "",
             "| split | images | cells | pasted cells | types | queries (native + pasted) |",
             "|---|---|---|---|---|---|"]
    stats = split_stats(dataset)
    for s in stats:
        lines.append(f"| {s.split} | {s.images} | {s.cells} | {s.pasted_cells} | {len(s.types)} | "
                     f"{s.native_queries + s.pasted_queries} ({s.native_queries} + {s.pasted_queries}) |")
    lines.append("")
    lines += [f"{s.split} types: {', '.join(s.types)}" for s in stats]
    distractors = dataset.meta.get("distractor_types")
    if distractors:
        lines.append(f"distractor types (never targets): {', '.join(distractors)}")
    paste = paste_stats(dataset)
    if paste.requested:
        lines.append(f"pasted cells: {paste.placed} of {paste.requested} requested placed; {paste.no_room} found no "
                     f"room (in {paste.images_short} dense images)")
    empty = sum(r.n_instances == 0 for r in dataset.images)
    if empty:
        lines.append(f"images without cells (negative images): {empty}")
    return "\n".join(lines + ["", *format_type_stats(dataset)])
