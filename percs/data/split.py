"""Splits of a benchmark: novel types, then images of seen types into train / val / test.

Rules (docs/dataset_format.md, "Building a benchmark"):
- novel types are named, or `all`, or `count` of them chosen by the seed (uniformly among the types that have
  images, taken in name order before the draw);
- an image whose types are all novel is `novel`; one with no novel type is seen; one mixing both is left out
  (a novel type must never reach train or val, and a novel image must hold novel types only); an image without
  cells is seen, unless every type is novel (then it is novel too);
- seen images keep the split their source gave them (train, val or test); the others are split per stratum
  (the set of their types in the PerCS protocol; one stratum in the PanNuke protocol), by group (images whose
  names give the same `group_pattern` match stay together), in a seeded shuffle: round(n * test_fraction) groups
  to test and round(n * val_fraction) to val, at least one of each when the stratum has 3 groups or more
  (2 groups: one test), the rest to train;
- if no image ended in val (all splits came from the sources) and val_fraction > 0, that fraction of each
  stratum's train groups moves to val the same way.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SplitPlan:
    """The split of every kept image (by name), the novel types, and the images left out with the reason."""

    splits: dict[str, str]
    novel_types: tuple[str, ...]
    excluded: tuple[dict, ...]


def stable_seed(*parts) -> list[int]:
    """Seed material for np.random.default_rng from ints and strings (strings by CRC-32, stable across runs)."""
    return [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]


def choose_novel_types(types: Sequence[str], novel: Sequence[str] | str | None, count: int, seed: int
                       ) -> tuple[str, ...]:
    """The novel types: `novel` (names or "all"), else `count` of `types` drawn with the seed."""
    ordered = sorted(set(types))
    if novel == "all":
        return tuple(ordered)
    if novel:
        unknown = sorted(set(novel) - set(ordered))
        if unknown:
            raise ValueError(f"novel types {unknown} have no images (types with images: {ordered})")
        return tuple(sorted(set(novel)))
    if not 0 <= count <= len(ordered):
        raise ValueError(f"novel count {count} must be between 0 and the number of types ({len(ordered)})")
    rng = np.random.default_rng(stable_seed(seed, "novel-types"))
    return tuple(sorted(ordered[i] for i in rng.choice(len(ordered), count, replace=False)))


def group_of(name: str, pattern: str | None) -> str:
    """The group of an image: the first capture group (or the whole match) of `pattern` in its name, else the name."""
    if pattern is None:
        return name
    match = re.search(pattern, name)
    if match is None:
        return name
    return match.group(1) if match.groups() else match.group(0)


def _counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    n_test = math.floor(n * test_fraction + 0.5)
    n_val = math.floor(n * val_fraction + 0.5)
    if n >= 3:
        n_test, n_val = max(n_test, 1 if test_fraction > 0 else 0), max(n_val, 1 if val_fraction > 0 else 0)
    elif n == 2:
        n_test, n_val = (1 if test_fraction > 0 else 0), 0
    else:
        n_test, n_val = 0, 0
    n_val = max(0, min(n_val, n - 1 - n_test))
    return n_test, n_val


def _deal(groups: list[str], fractions: tuple[float, float], seed_parts, labels=("test", "val")) -> dict[str, str]:
    """group -> split for one stratum's groups (sorted, then shuffled with the seed)."""
    ordered = sorted(groups)
    rng = np.random.default_rng(stable_seed(*seed_parts))
    order = [ordered[i] for i in rng.permutation(len(ordered))]
    n_first, n_second = _counts(len(order), *fractions)
    out = {g: labels[0] for g in order[:n_first]}
    out.update({g: labels[1] for g in order[n_first:n_first + n_second]})
    out.update({g: "train" for g in order[n_first + n_second:]})
    return out


@dataclass(frozen=True)
class SplitInput:
    """What the split needs of one source image: its name, types, source split and group."""

    name: str
    types: frozenset
    source_split: str | None
    group: str


def plan_splits(images: Sequence[SplitInput], novel_types: Sequence[str], stratify: bool, test_fraction: float,
                val_fraction: float, seed: int) -> SplitPlan:
    """Applies the module's rules; `stratify` is True in the PerCS protocol (strata = type sets)."""
    if not (0 <= test_fraction and 0 <= val_fraction and test_fraction + val_fraction < 1):
        raise ValueError(f"test_fraction {test_fraction} and val_fraction {val_fraction} must be >= 0, sum < 1")
    novel = set(novel_types)
    typed = set().union(*(image.types for image in images))
    everything_novel = bool(typed) and typed <= novel
    splits, excluded, todo = {}, [], {}
    for image in images:
        if image.types <= novel and (image.types or everything_novel):
            splits[image.name] = "novel"
        elif image.types & novel:
            excluded.append({"image": image.name, "reason": f"mixes novel types {sorted(image.types & novel)} "
                                                            f"with seen types {sorted(image.types - novel)}"})
        elif image.source_split in ("train", "val", "test"):
            splits[image.name] = image.source_split
        else:
            todo.setdefault(_stratum(image, stratify), []).append(image)
    for stratum, members in sorted(todo.items()):
        dealt = _deal(sorted({m.group for m in members}), (test_fraction, val_fraction), (seed, "split", stratum))
        splits.update({m.name: dealt[m.group] for m in members})
    if val_fraction > 0 and "val" not in splits.values():
        _carve_val(images, splits, stratify, val_fraction, seed)
    return SplitPlan(splits, tuple(sorted(novel)), tuple(excluded))


def _stratum(image: SplitInput, stratify: bool) -> str:
    return ",".join(sorted(image.types)) if stratify else ""


def _carve_val(images: Sequence[SplitInput], splits: dict[str, str], stratify: bool, val_fraction: float,
               seed: int) -> None:
    train: dict[str, list[SplitInput]] = {}
    for image in images:
        if splits.get(image.name) == "train":
            train.setdefault(_stratum(image, stratify), []).append(image)
    for stratum, members in sorted(train.items()):
        dealt = _deal(sorted({m.group for m in members}), (val_fraction, 0.0), (seed, "val", stratum),
                      labels=("val", "val"))
        splits.update({m.name: dealt[m.group] for m in members})
