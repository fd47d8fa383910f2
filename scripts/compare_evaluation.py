"""Whether two built benchmarks have the same val, test and novel images and queries (`percs.data.compare`),
for example percs-mini built with and without a train-only source. Exit status 0 when they do, 1 when not.

    python scripts/compare_evaluation.py /tmp/percs-mini /tmp/percs-mini-large
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from percs.data.compare import EVAL, evaluation_differences
from percs.data.format import load_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="a built benchmark folder")
    parser.add_argument("other", help="a built benchmark folder, e.g. the same build with train-only sources")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the sha256 checks of files")
    args = parser.parse_args()
    for root in (args.base, args.other):
        dataset = load_dataset(root, verify=args.verify)
        counts = Counter(r.split for r in dataset.images)
        print(f"{root}: " + ", ".join(f"{s} {counts[s]}" for s in ("train", *EVAL)) + f" images, "
              f"{len(dataset.queries)} queries, {len(dataset.cell_types)} cell types"
              + (", files verified" if args.verify else ""))
    differences = evaluation_differences(args.base, args.other)
    for line in differences:
        print(line)
    print("different val/test/novel images or queries" if differences else
          "identical val/test/novel image entries (files, sha256, instance types, meta) and queries")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
