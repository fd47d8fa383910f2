"""The "percs" method of `percs eval`: a trained PerCS-DINO checkpoint through the sliding-window predictor.

For each query the reference cell is embedded from its own image (`Predictor.embed_reference`) and the
query image predicted with that embedding. The predictor settings are the checkpoint's `predict` section,
each overridable from the command line; `--min-cell-probability` then drops predicted cells whose mean
same-type probability is below it (0: keep all, the paper's rule).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from percs.evaluate.methods import register_method

PREDICTOR_OPTIONS = {  # option -> (PredictorConfig field, type, help)
    "--window": ("window", int, "sliding-window side in pixels (a multiple of 14)"),
    "--stride": ("stride", int, "step between windows in pixels"),
    "--batch-size": ("batch_size", int, "windows per forward pass"),
    "--cellprob-threshold": ("cellprob_threshold", float, "same-type logit above which pixels are followed"),
    "--flow-threshold": ("flow_threshold", float, "largest flow error of a kept mask"),
    "--niter": ("niter", int, "Euler steps of the flow integration"),
    "--min-size": ("min_size", int, "smallest kept mask in pixels"),
    "--flips": ("flips", int, "the network's output averaged over the image and its flips: 1 (none, the paper), "
                              "2 (both axes flipped too) or 4 (each axis too); each view one more network pass"),
    "--reference-diameter": ("reference_diameter", float, "images resized so that the reference cell is this many "
                                                          "px across (0: the image's own scale, the paper)"),
    "--precision": ("precision", str, "the network's arithmetic: auto (bfloat16 on a CPU with AMX or AVX512-BF16, "
                                      "else float32), float32 or bfloat16"),
}
PRECISION_CHOICES = ("auto", "float32", "bfloat16")  # percs.model.precision.PRECISIONS, named without torch


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--checkpoint", help="a `percs train` checkpoint (best.pt / last.pt) or a `percs export-model` "
                                            "file (default: the model shipped with percs)")
    group.add_argument("--backbone-weights", metavar="FILE",
                       help="DINOv2 weights for a model shipped without them (default: "
                            "$PERCS_SHARED/weights/dinov2_vits14_pretrain.pth, else the official download)")
    group.add_argument("--min-cell-probability", type=float, default=0.0,
                       help="drop predicted cells whose mean same-type probability is below this (default 0)")
    group.add_argument("--decision-margin", type=float, metavar="D",
                       help="with an instance-level model: keep the cells whose logit is within D of the image's "
                            "best cell's, instead of those over the model's threshold (docs/type_decision.md)")
    group.add_argument("--expand", type=float, metavar="A",
                       help="with an instance-level model: the weight in [0, 1] of the image's best match as a second "
                            "reference (0: the reference alone; default: the model's, 0.5 for the shipped one, "
                            "whose threshold was chosen with it; docs/type_decision.md)")
    for option, (_, kind, text) in PREDICTOR_OPTIONS.items():
        choices = {"--precision": PRECISION_CHOICES, "--flips": (1, 2, 4)}.get(option)
        group.add_argument(option, type=kind, choices=choices, default=None, help=f"{text} (default: the checkpoint's)")


class PercsMethod:
    """A loaded PerCS-DINO model answering queries (see percs.evaluate.methods.Method) through
    `percs.api.Segmenter`. For a model with an instance-level decision, the found and embedded cells of the
    last `cache_size` query images are kept (`percs.predict.references.find_candidates`): the queries of one
    image, and runs over several reference sets, find them once."""

    def __init__(self, segmenter, name: str, settings: dict, cache_size: int = 4):
        from percs.baselines.common import ImageCache

        self.segmenter, self.name, self.settings = segmenter, name, settings
        self.candidates = ImageCache(self._candidates, cache_size)

    def _candidates(self, image: np.ndarray, scale: float):
        from percs.predict.references import find_candidates

        return find_candidates(self.segmenter.predictor, self.segmenter.instance, image, scale)

    def segment(self, image: np.ndarray, reference_image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
        """(H, W) int32 instances of the reference's type in image (raw arrays as the dataset stores them)."""
        return self.segment_references(image, [(reference_image, reference_mask)], [])

    def segment_references(self, image: np.ndarray, positives: list, negatives: list) -> np.ndarray:
        """(H, W) int32 cells like the positive references [(image, mask)] and unlike the negative ones
        (`Segmenter.segment` with references and negatives)."""
        made = [[self.segmenter.reference(i, m) for i, m in group] for group in (positives, negatives)]
        if self.segmenter.instance is None:
            return self.segmenter.segment(image, references=made[0], negatives=made[1]).labels
        from percs.data.scale import shared_scale
        from percs.predict.references import decide

        candidates = self.candidates(image, shared_scale(r.scale for r in made[0]))
        return decide(self.segmenter.instance, candidates, [r.vectors for r in made[0]],
                      [r.vectors for r in made[1]], self.segmenter.min_cell_probability).labels


def method_name(model_config, generic: bool) -> str:
    """"PerCS-DINO (vits14)", with what differs from a pretrained full-size backbone said in the parentheses."""
    details = [model_config.backbone]
    if not model_config.backbone_weights:
        details.append("random-init backbone")
    if model_config.backbone_depth:
        details.append(f"depth {model_config.backbone_depth}")
    if model_config.backbone_embed_dim:
        details.append(f"width {model_config.backbone_embed_dim}")
    if generic:
        return f"PerCS-DINO generic ({', '.join(details)}; ignores the reference)"
    return f"PerCS-DINO ({', '.join(details)})"


@register_method("percs", "a trained PerCS-DINO model (--checkpoint; default: the model shipped with percs)",
                 add_arguments)
def build_percs_method(args: argparse.Namespace, dataset) -> PercsMethod:
    """The method of `args.checkpoint` on `args.device`, predictor settings overridden by the options."""
    from percs.api import Segmenter, load_model, resolve_device
    from percs.data.io import sha256
    from percs.model.precision import resolve_precision
    from percs.predict.shipped import default_model, given_weights_file

    if not 0 <= args.min_cell_probability <= 1:
        raise ValueError(f"--min-cell-probability must be in [0, 1], got {args.min_cell_probability}")
    try:
        device = resolve_device(getattr(args, "device", "auto"))
    except ValueError as error:
        raise ValueError(f"--device: {error}") from None
    checkpoint = getattr(args, "checkpoint", None) or None
    weights = given_weights_file(getattr(args, "backbone_weights", None))
    model, config = load_model(checkpoint, device, weights)
    overrides = {key: getattr(args, option[2:].replace("-", "_"), None)
                 for option, (key, _, _) in PREDICTOR_OPTIONS.items()}
    predictor_config = dataclasses.replace(config.predict, **{k: v for k, v in overrides.items() if v is not None})
    path = checkpoint or default_model()
    model_device = next(model.parameters()).device
    settings = {"checkpoint": str(path), "checkpoint_sha256": sha256(path),
                "device": str(model_device), "model": dataclasses.asdict(config.model),
                "predictor": dataclasses.asdict(predictor_config),
                "precision": resolve_precision(predictor_config.precision, model_device),
                "min_cell_probability": args.min_cell_probability}
    segmenter = Segmenter(model, predictor_config, args.min_cell_probability or None)
    instance = getattr(model, "instance", None)
    margin = getattr(args, "decision_margin", None)
    expand = getattr(args, "expand", None)
    for option, value in (("--decision-margin", margin), ("--expand", expand)):
        if value is not None and instance is None:
            raise ValueError(f"{option} needs a model with an instance-level decision (this one decides pixel by "
                             "pixel)")
    if instance is not None:
        try:
            instance.margin = margin
        except ValueError as error:
            raise ValueError(f"--decision-margin: {error}") from None
        if expand is not None:
            try:
                instance.expand = expand
            except ValueError as error:
                raise ValueError(f"--expand: {error}") from None
        settings["instance"] = {"layers": list(instance.layers), "embedding": instance.embedding,
                                "threshold": instance.threshold, "margin": margin, "expand": instance.expand}
        from percs.model.instance import scorer_label

        name = method_name(config.model, False).replace("PerCS-DINO (", "PerCS-DINO instance decision (", 1)
        rule = f"threshold {instance.threshold:g}" if margin is None else f"margin {margin:g} from the best cell"
        if instance.expand:
            rule += f", the image's best match weighted {instance.expand:g}"
        return PercsMethod(segmenter, f"{name[:-1]}; {scorer_label(instance.scorer)}, {rule})", settings)
    return PercsMethod(segmenter, method_name(config.model, model.generic), settings)
