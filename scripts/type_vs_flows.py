"""Which half of a PerCS-DINO checkpoint limits it: the same-type decision or the flows
(`percs.evaluate.diagnose`).

    python scripts/type_vs_flows.py CHECKPOINT BENCHMARK [--split val] [--every 1] [--device cpu]
"""

from __future__ import annotations

import argparse

from percs.api import Segmenter
from percs.data.format import load_dataset
from percs.evaluate.diagnose import type_vs_flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("benchmark")
    parser.add_argument("--split", default="val")
    parser.add_argument("--every", type=int, default=1, help="every K-th fixed query")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = type_vs_flows(Segmenter.from_checkpoint(args.checkpoint, args.device), load_dataset(args.benchmark),
                           args.split, args.every)
    print(f"{result.queries} queries of {args.split}: AP@0.5 predicted {result.ap50_predicted:.3f}, "
          f"with the true type {result.ap50_true_type:.3f}; same-type map pixel IoU {result.same_type_pixel_iou:.3f}")


if __name__ == "__main__":
    main()
