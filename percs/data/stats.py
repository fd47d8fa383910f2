"""`percs data stats`: images, cells, types and queries per split of a dataset."""

from __future__ import annotations

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
    return "\n".join(lines)
