"""End-to-end seconds per megapixel of `Segmenter.segment` on every image of a split, and where the time goes.

    python scripts/predict_speed.py --data /tmp/percs-mini --split test --weights W --precision auto --out a.json

Each image of the split is segmented once with the reference of its first query (the reference's embedding
is made before the clock starts; the image's kept backbone features are dropped first), by the model shipped
with percs (or --checkpoint). The stages are timed by wrapping, for the whole run: the backbone's forward (the
predictor's windows and the instance scorer's cell windows together), the head (`decode_features`),
`flows_to_masks`, and the instance scorer's `cells` (its backbone passes included). `--precision -` passes no
precision, for a checkout older than the setting (run it with that checkout first on PYTHONPATH): this is how
issue 17's end-to-end ratio was measured against the code before it (docs/large_images.md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict


def timed(owner, name: str, key: str, totals: dict) -> None:
    """Replaces owner.name by a wrapper that adds its wall time to totals[key]."""
    function = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a built benchmark (percs data build)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--weights", required=True, help="the DINOv2 backbone weights")
    parser.add_argument("--checkpoint", help="a model file (default: the one shipped with percs)")
    parser.add_argument("--precision", default="auto", help="auto, float32, bfloat16, or - for none")
    parser.add_argument("--flips", type=int, choices=(1, 2, 4), help="views averaged (default: the model's)")
    parser.add_argument("--out", help="a JSON file to write the result to")
    args = parser.parse_args()

    import torch

    import percs.predict.predictor as predictor_module
    from percs import api
    from percs.data.format import load_dataset

    dataset = load_dataset(args.data)
    settings = {} if args.precision == "-" else {"precision": args.precision}
    if args.flips is not None:
        settings["flips"] = args.flips
    predict = {"predict": settings} if settings else {}
    segmenter = api.Segmenter.from_checkpoint(args.checkpoint, device="cpu", backbone_weights=args.weights, **predict)
    stages: dict[str, float] = defaultdict(float)
    timed(segmenter.model.backbone, "forward", "backbone", stages)
    timed(segmenter.model, "decode_features", "head", stages)
    timed(predictor_module, "flows_to_masks", "flows_to_masks", stages)
    if getattr(segmenter, "instance", None) is not None:
        timed(segmenter.instance, "cells", "instance_cells", stages)

    seen, seconds, megapixels = set(), 0.0, 0.0
    for query in dataset.queries:
        if dataset.record(query.image).split != args.split or query.image in seen:
            continue
        seen.add(query.image)
        image = dataset.read_image(dataset.record(query.image))
        record = dataset.record(query.reference_image)
        reference = segmenter.reference(dataset.read_image(record), labels=dataset.read_labels(record),
                                        label=query.reference_label)
        segmenter.predictor.forget_features()
        start = time.perf_counter()
        segmenter.segment(image, reference)
        seconds += time.perf_counter() - start
        megapixels += image.shape[0] * image.shape[1] / 1e6
    if not seen:
        raise SystemExit(f"split {args.split!r} of {args.data} has no queries")
    result = {"images": len(seen), "megapixels": round(megapixels, 4), "seconds": round(seconds, 3),
              "s_per_mp": round(seconds / megapixels, 4), "threads": torch.get_num_threads(),
              "precision": args.precision,
              "stages_s_per_mp": {key: round(value / megapixels, 4) for key, value in stages.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
