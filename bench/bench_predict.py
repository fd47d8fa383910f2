"""End-to-end seconds per megapixel of `Predictor.predict` with ViT-S/14, and where the time goes.

    pytest bench/bench_predict.py --benchmark-only --benchmark-json=/tmp/predict-bench.json
    python bench/bench_predict.py /tmp/predict-bench.json      # the table of bench/README.md

One real image, cellpose_styles/cytomembrane/290 (512 x 512 RGB, 301 cells), the official ViT-S/14 weights
under a randomly initialised head (seed 0; weights do not change the speed) with the shipped model's decoder
(a detail branch of 32 channels), the default PredictorConfig
(windows 224, stride 168: 9 windows in batches of 8 and 1), the reference the image's largest cell, torch at
the machine's default thread count. Each benchmark is one part of the prediction, timed on its own:

- backbone: `model.backbone` on the predictor's windows, batched as the predictor batches them;
- head: `model.decode_features` (fusion and decoder; in eval mode the decoder takes one window at a time) on
  those windows' backbone features; head_batched, the peer: the same with the decoder decoding each whole
  batch at once, as it did before (its training mode; the ratio head_batched / head is in head's extra_info);
- postprocess: `flows_to_masks` with the predictor's settings on the image's TRUE fields (FLOW_SCALE x
  `masks_to_flows(labels)` and a logit of +5 on cells, -5 on background): a random head's flows are
  meaningless and their post-processing time is not a real one (the masks must reach AP@0.5 >= 0.99);
- postprocess_model_fields: the same on the random model's stitched fields, i.e. what `predict` runs here;
- overhead: `Predictor.fields` on the raw image with a stand-in model that returns the real model's outputs,
  computed beforehand, for each batch: the predictor's own work alone (normalisation, padding, window
  extraction, stitching);
- total: `Predictor.predict` on the raw uint8 image with the real model, its kept backbone features dropped
  before each round (`Predictor.forget_features`);
- total_same_image: `Predictor.predict` again on the image it just predicted (another reference on the same
  image): the backbone's features are reused;
- total_bfloat16, total_auto: `total` with the predictor's precision "bfloat16" and "auto" instead of the
  float32 every other part runs (`percs.model.precision`; extra_info: the speed-up over float32's total, the
  labels' AP@0.5 against float32's, and what "auto" resolves to on this machine).

Each result's extra_info holds s_per_mp (mean and min over rounds), the thread count and the load average
before and after; the total's also holds the overhead by subtraction (total - backbone - head -
postprocess_model_fields), which on a loaded machine is much noisier than the direct measurement. The "cuda"
cases run where a GPU and percs._cuda exist and skip otherwise. Fails instead of skipping under CI=true when
the weights or the data are missing, as the tests do.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import data_dir, read_label_image, requires_cuda, weights_file  # noqa: E402
from torch import nn  # noqa: E402

from percs.data.normalize import normalize_image  # noqa: E402
from percs.flows import FLOW_SCALE, flows_to_masks, masks_to_flows  # noqa: E402
from percs.metrics import evaluate  # noqa: E402
from percs.model.percs_dino import HeadConfig, ModelConfig, PerCSOutput, build_percs_dino  # noqa: E402
from percs.model.precision import resolve_precision  # noqa: E402
from percs.predict import Predictor, PredictorConfig, padded_size, window_starts  # noqa: E402

IMAGE = "cytomembrane/290"
PARTS = ("backbone", "head_batched", "head", "postprocess", "postprocess_model_fields", "overhead", "total",
         "total_same_image", "total_bfloat16", "total_auto")


@dataclass
class Setup:
    """Everything a part needs on one device, and the mean / min seconds of the parts run so far."""

    device: torch.device
    raw: np.ndarray
    labels: np.ndarray
    predictor: Predictor
    embedding: torch.Tensor
    batches: list[torch.Tensor]
    features: list[torch.Tensor]
    outputs: list[PerCSOutput]
    true_fields: tuple[torch.Tensor, torch.Tensor]
    model_fields: tuple[torch.Tensor, torch.Tensor]
    seconds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def megapixels(self) -> float:
        return self.labels.size / 1e6


class ReplayModel(nn.Module):
    """Returns precomputed outputs, one per batch in order, so `Predictor.fields` times only its own work."""

    generic = False

    def __init__(self, outputs: list[PerCSOutput], device: torch.device):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), device=device))  # gives the model a device
        self.outputs = outputs
        self.calls = 0

    def forward(self, images, reference_embedding):
        output = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return output


def predictor_windows(image: torch.Tensor, predictor: Predictor) -> list[torch.Tensor]:
    """The predictor's windows of a (3, H, W) image, in its order and batches: list of (B, 3, window, window)."""
    config = predictor.config
    height, width = image.shape[1:]
    padded = torch.nn.functional.pad(
        image, (0, padded_size(width, config.window) - width, 0, padded_size(height, config.window) - height))
    corners = [(top, left) for top in window_starts(padded.shape[1], config.window, config.stride)
               for left in window_starts(padded.shape[2], config.window, config.stride)]
    windows = torch.stack([padded[:, t : t + config.window, l : l + config.window] for t, l in corners])
    return list(windows.split(config.batch_size))


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=requires_cuda)])
def setup(request) -> Setup:
    device = torch.device(request.param)
    weights = weights_file("dinov2_vits14_pretrain.pth")
    root = data_dir("cellpose_styles")
    from skimage.io import imread

    raw = np.asarray(imread(root / f"{IMAGE}_img.png"))
    labels = read_label_image(root / f"{IMAGE}_masks.png")
    torch.manual_seed(0)
    model = build_percs_dino(ModelConfig(backbone="vits14", head=HeadConfig(detail_channels=32)), weights, device)
    model.eval()
    predictor = Predictor(model, PredictorConfig(precision="float32"))
    image = torch.from_numpy(normalize_image(raw)).to(device)
    embedding = predictor.embed_reference(image, labels == np.bincount(labels.ravel())[1:].argmax() + 1)
    batches = predictor_windows(image, predictor)
    with torch.no_grad():
        features = [model.backbone(batch).features for batch in batches]
        outputs = [model.decode_features(f, embedding[None].expand(len(f), -1), b) for f, b in zip(features, batches)]
    true_flows = torch.from_numpy(FLOW_SCALE * masks_to_flows(labels)).to(device)
    true_logits = torch.from_numpy(np.where(labels > 0, 5.0, -5.0).astype(np.float32)).to(device)
    return Setup(device, raw, labels, predictor, embedding, batches, features, outputs,
                 (true_flows, true_logits), predictor.fields(raw, embedding))


def synchronized(function, device: torch.device):
    """function, waiting for the GPU before it returns, so that its time is the GPU's too."""
    def run(*args):
        result = function(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result
    return run


def measure(benchmark, setup: Setup, part: str, function, rounds: int):
    """Times function (one warm-up round), records its seconds in setup and its s/MP in extra_info."""
    benchmark.group = f"predict ViT-S/14 {IMAGE} {setup.device.type}"
    benchmark.extra_info["load_before"] = os.getloadavg()[0]
    result = benchmark.pedantic(synchronized(function, setup.device), rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["load_after"] = os.getloadavg()[0]
    if benchmark.stats is not None:  # None under --benchmark-disable
        mean, best = benchmark.stats.stats.mean, benchmark.stats.stats.min
        setup.seconds[part] = (mean, best)
        benchmark.extra_info.update(part=part, megapixels=setup.megapixels, threads=torch.get_num_threads(),
                                    s_per_mp=mean / setup.megapixels, s_per_mp_min=best / setup.megapixels)
    return result


def fraction_of_backbone(setup: Setup, seconds: float) -> float | None:
    return seconds / setup.seconds["backbone"][0] if "backbone" in setup.seconds else None


def test_backbone(benchmark, setup):
    def run():
        with torch.no_grad():
            return [setup.predictor.model.backbone(batch).features for batch in setup.batches]

    measure(benchmark, setup, "backbone", run, rounds=3)


def test_head_batched(benchmark, setup):
    """The peer of `head`: the decoder in training mode (no gradient), which decodes each batch at once."""
    model, embedding = setup.predictor.model, setup.embedding

    def run():
        model.decoder.train()
        try:
            with torch.no_grad():
                return [model.decode_features(f, embedding[None].expand(len(f), -1), b)
                        for f, b in zip(setup.features, setup.batches)]
        finally:
            model.decoder.eval()

    outputs = measure(benchmark, setup, "head_batched", run, rounds=3)
    for batched, one_by_one in zip(outputs, setup.outputs):
        torch.testing.assert_close(batched.flows, one_by_one.flows, rtol=1e-4, atol=1e-4)


def test_head(benchmark, setup):
    model, embedding = setup.predictor.model, setup.embedding

    def run():
        with torch.no_grad():
            return [model.decode_features(f, embedding[None].expand(len(f), -1), b)
                    for f, b in zip(setup.features, setup.batches)]

    measure(benchmark, setup, "head", run, rounds=3)
    if {"head", "head_batched"} <= set(setup.seconds):
        benchmark.extra_info["speedup_over_batched"] = setup.seconds["head_batched"][0] / setup.seconds["head"][0]


def postprocess(setup: Setup, flows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    config = setup.predictor.config
    return flows_to_masks(flows, logits, cellprob_threshold=config.cellprob_threshold,
                          flow_threshold=config.flow_threshold, niter=config.niter, min_size=config.min_size)


def test_postprocess(benchmark, setup):
    masks = measure(benchmark, setup, "postprocess", lambda: postprocess(setup, *setup.true_fields), rounds=5)
    ap50 = evaluate(setup.labels, masks.cpu().numpy(), 0.5)[0].pooled.ap
    benchmark.extra_info["ap50_vs_truth"] = ap50
    assert ap50 >= 0.99


def test_postprocess_model_fields(benchmark, setup):
    measure(benchmark, setup, "postprocess_model_fields", lambda: postprocess(setup, *setup.model_fields), rounds=3)


def test_overhead(benchmark, setup):
    replay = ReplayModel(setup.outputs, setup.device)
    predictor = Predictor(replay, setup.predictor.config)

    def run():
        replay.calls = 0
        return predictor.fields(setup.raw, setup.embedding)

    flows, _ = measure(benchmark, setup, "overhead", run, rounds=5)
    assert torch.equal(flows, setup.model_fields[0])
    if "overhead" in setup.seconds:
        benchmark.extra_info["fraction_of_backbone"] = fraction_of_backbone(setup, setup.seconds["overhead"][0])


def predict_afresh(setup: Setup):
    """A whole prediction, backbone included: the setup already predicted this image, so the predictor's kept
    backbone features are dropped first (else `total` would time a second reference on the same image)."""
    setup.predictor.forget_features()
    return setup.predictor.predict(setup.raw, setup.embedding)


def test_total(benchmark, setup):
    prediction = measure(benchmark, setup, "total", lambda: predict_afresh(setup), rounds=3)
    assert prediction.labels.shape == setup.labels.shape
    parts = ("backbone", "head", "postprocess_model_fields", "total")
    if all(part in setup.seconds for part in parts):
        backbone, head, post, total = (setup.seconds[part][0] for part in parts)
        benchmark.extra_info["overhead_by_subtraction_s"] = total - backbone - head - post
        benchmark.extra_info["overhead_by_subtraction_fraction_of_backbone"] = \
            fraction_of_backbone(setup, total - backbone - head - post)


def test_total_same_image(benchmark, setup):
    """Another reference on the image just predicted (one query per cell type of an image, as `percs eval`
    runs them): the backbone's window features are reused, so this is the head, post-processing and overhead."""
    setup.predictor.predict(setup.raw, setup.embedding)
    prediction = measure(benchmark, setup, "total_same_image",
                         lambda: setup.predictor.predict(setup.raw, setup.embedding), rounds=3)
    assert prediction.labels.shape == setup.labels.shape


@pytest.mark.parametrize("precision", ["bfloat16", "auto"])
def test_total_precision(benchmark, setup, precision):
    """`total` at another precision; the float32 labels (`setup.model_fields` post-processed) are the reference."""
    from dataclasses import replace

    predictor = Predictor(setup.predictor.model, replace(setup.predictor.config, precision=precision))

    def run():
        predictor.forget_features()
        return predictor.predict(setup.raw, setup.embedding)

    prediction = measure(benchmark, setup, f"total_{precision}", run, rounds=3)
    exact = postprocess(setup, *setup.model_fields).cpu().numpy()
    benchmark.extra_info["ap50_vs_float32"] = evaluate(exact, prediction.labels.cpu().numpy(), 0.5)[0].pooled.ap
    benchmark.extra_info["resolves_to"] = resolve_precision(precision, setup.device)
    part = f"total_{precision}"
    if {"total", part} <= set(setup.seconds):
        benchmark.extra_info["speedup_over_float32"] = setup.seconds["total"][0] / setup.seconds[part][0]


def table(path: str) -> None:
    """Prints a pytest-benchmark JSON file of this bench as bench/README.md's table, one block per group."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in json.load(open(path))["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["part"]] = bench
    notes = {"speedup_over_batched": "{:.2f}x the batched head", "speedup_over_float32": "{:.2f}x float32's total",
             "ap50_vs_float32": "AP@0.5 {:.3f} against float32's labels", "resolves_to": "runs {}"}
    for group, runs in groups.items():
        backbone = runs["backbone"]["stats"]["mean"] if "backbone" in runs else None
        print(f"\n{group}\n\n| part | rounds | mean s | s/MP (mean) | s/MP (min) | % of backbone | notes |")
        print("|---|---|---|---|---|---|---|")
        for part in PARTS:
            if part in runs:
                stats, info = runs[part]["stats"], runs[part]["extra_info"]
                share = f"{100 * stats['mean'] / backbone:.1f}" if backbone else "-"
                said = "; ".join(text.format(info[key]) for key, text in notes.items() if key in info)
                print(f"| {part} | {stats['rounds']} | {stats['mean']:.3f} | {info['s_per_mp']:.3f} "
                      f"| {info['s_per_mp_min']:.3f} | {share} | {said} |")
        if "overhead_by_subtraction_s" in runs.get("total", {}).get("extra_info", {}):
            info = runs["total"]["extra_info"]
            print(f"\noverhead by subtraction: {info['overhead_by_subtraction_s']:.3f} s "
                  f"({100 * info['overhead_by_subtraction_fraction_of_backbone']:.1f}% of backbone)")


if __name__ == "__main__":
    table(sys.argv[1])
