"""The "percs-instance" method's command-line options, registered with `percs eval`.

Kept apart from `percs.evaluate.instance_method` (torch, DINOv2) so that building the `percs eval` parser
imports neither. The generic masks come from `--generic-checkpoint`, the option the filter method registers.
"""

from __future__ import annotations

import argparse

from percs.evaluate.methods import deferred, register_method


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The --scorer* options of `percs eval --method percs-instance`."""
    group.add_argument("--scorer", metavar="FILE",
                       help="a cell scorer written by `percs train-scorer` (with --generic-checkpoint: the model "
                            "whose masks it scores; its frozen backbone must be the one the scorer was trained on)")
    group.add_argument("--scorer-threshold", type=float,
                       help="keep cells whose same-type probability is >= this (default: chosen on the val split; "
                            "-1 keeps every cell)")
    group.add_argument("--scorer-expand", type=float, default=0.0, metavar="A",
                       help="weight in [0, 1] of the image's best match as a second reference, averaged into each "
                            "cell's logit (default 0: the reference alone; docs/type_decision.md)")
    group.add_argument("--scorer-val-queries", type=int, default=0, metavar="N",
                       help="choose the threshold on the first N val queries (default 0: all)")


register_method("percs-instance", "PerCS-DINO's instance-level decision: every cell from a generic percs model "
                "(--generic-checkpoint), each scored against the reference by a learned scorer (--scorer), "
                "threshold chosen on val", add_arguments)(deferred("percs.evaluate.instance_method", "build_instance"))
