"""Ratios from a pytest-benchmark JSON file: for each group, the peer's mean time over percs' mean time.

    python bench/report.py bench/flows.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def ratios(path: str) -> list[tuple[str, dict[str, float]]]:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in json.load(open(path))["benchmarks"]:
        impl = bench["params"].get("impl", bench["name"])
        groups[bench["group"]][impl] = bench["stats"]["mean"]
    return sorted(groups.items())


def main(path: str) -> None:
    print("| group | percs (s) | peer | peer (s) | peer / percs |")
    print("|---|---|---|---|---|")
    for group, times in ratios(path):
        ours = times.get("percs")
        for impl, seconds in sorted(times.items()):
            if impl != "percs" and ours:
                print(f"| {group} | {ours:.3f} | {impl} | {seconds:.3f} | {seconds / ours:.1f}x |")


if __name__ == "__main__":
    main(sys.argv[1])
