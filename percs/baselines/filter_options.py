"""The "filter" method's command-line options, registered with `percs eval`.

Kept apart from `percs.baselines.filter` (torch, DINOv2) so that building the `percs eval` parser imports
neither; the registered factory imports that module when the method is built.
"""

from __future__ import annotations

import argparse

from percs.evaluate.methods import deferred, register_method


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The generic-mask and --filter-* options of `percs eval --method filter`."""
    group.add_argument("--generic-checkpoint", metavar="FILE",
                       help="generic masks from a percs train checkpoint trained with model.head.generic=true")
    group.add_argument("--cellpose-model", metavar="FILE",
                       help="generic masks from a Cellpose 4 model file (Cellpose-SAM's cpsam); needs cellpose")
    group.add_argument("--filter-backbone", default="vits14", help="DINOv2 variant of the embeddings (default vits14)")
    group.add_argument("--filter-backbone-weights", metavar="FILE",
                       help="its state dict, e.g. ../shared/weights/dinov2_vits14_pretrain.pth (default: the "
                            "official checkpoint from torch's download cache)")
    group.add_argument("--filter-threshold", type=float,
                       help="keep masks with cosine similarity >= this (default: chosen on the val split)")
    group.add_argument("--filter-val-queries", type=int, default=0, metavar="N",
                       help="choose the threshold on the first N val queries (default 0: all)")


register_method("filter", "a generic segmenter's masks (--generic-checkpoint or --cellpose-model) kept by DINOv2 "
                "similarity to the reference, threshold chosen on val",
                add_arguments)(deferred("percs.baselines.filter", "build_filter"))
