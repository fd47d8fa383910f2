"""Stage `bench`: seconds per megapixel of the flow kernels, the metrics and the predictor, CPU against CUDA,
and Cellpose's torch GPU path where the carry brought Cellpose.

Inputs: the carry's cellpose_styles label images ("real"), a synthetic image of touching cells
(`percs.synthetic_labels.touching_cells`, seed 0, as bench/bench_flows.py), and bench/bench_predict.py's image
and parts (its Setup, windows, replay model and post-processing are reused; the model is ViT-S/14 with the
carry's weights under a random head, seed 0). Flows -> masks starts from the CPU's unit flows x FLOW_SCALE with
a logit of +5 on cells and -5 outside on both backends, so their masks must be identical; the metrics compare
each image with a copy shifted by 2 px with 5% of its labels dropped (bench/bench_metrics.py's perturbation),
IoU >= 0.3 and 0.5, and both backends must count the same TP / FP / FN. Each CUDA timing waits for the GPU.
"""

from __future__ import annotations

import numpy as np
import torch

import bench_predict as BP
from common import CARRY_STYLES, CARRY_WEIGHTS, PREDICT_IMAGE, Context, Part, cuda_ready, measure
from conftest import read_label_image
from label_noise import perturbed
from percs import _backend
from percs import flows as F
from percs import metrics as M
from percs.data.normalize import normalize_image
from percs.model.percs_dino import ModelConfig, build_percs_dino
from percs.predict import Predictor
from percs.synthetic_labels import touching_cells

THRESHOLDS = (0.3, 0.5)


def timing_row(stats: dict, megapixels: float) -> dict:
    return {**stats, "megapixels": megapixels, "s_per_mp": stats["mean_s"] / megapixels}


def on(device: str, arrays: list[np.ndarray]) -> list:
    return arrays if device == "cpu" else [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def as_numpy(values: list) -> list[np.ndarray]:
    return [v.cpu().numpy() if isinstance(v, torch.Tensor) else v for v in values]


def cellprob_of(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


def ap50(true: list[np.ndarray], pred: list[np.ndarray]) -> float:
    return float(M.evaluate(true, pred, 0.5)[0].pooled.ap)


def datasets(ctx: Context) -> dict[str, list[np.ndarray]]:
    profile = ctx.profile
    paths = sorted(ctx.path(CARRY_STYLES).glob("*/*_masks.png"))
    real = [F.renumber(read_label_image(p)) for p in paths[: profile.real_masks or None]]
    synthetic = [F.renumber(touching_cells(profile.synthetic_shape, profile.synthetic_cells, 26.0, seed=0))]
    return {"real": real, "synthetic": synthetic}


def rounds(ctx: Context, device: str) -> int:
    return ctx.profile.rounds_cpu if device == "cpu" else ctx.profile.rounds_cuda


def bench_flows(ctx: Context, part: Part, name: str, images: list[np.ndarray], devices: list[str]) -> None:
    megapixels = sum(x.size for x in images) / 1e6
    unit, masks = {}, {}
    for device in devices:
        inputs = on(device, images)
        stats, flows = measure(lambda: [F.masks_to_flows(x) for x in inputs], rounds(ctx, device), device != "cpu")
        unit[device] = as_numpy(flows)
        part.put(("flows", name, "masks_to_flows", device), timing_row(stats, megapixels))
    for device in devices:
        fields = on(device, [F.FLOW_SCALE * u for u in unit["cpu"]])
        cellprob = on(device, [cellprob_of(x) for x in images])
        stats, out = measure(lambda: [F.flows_to_masks(f, c) for f, c in zip(fields, cellprob)],
                             rounds(ctx, device), device != "cpu")
        masks[device] = as_numpy(out)
        part.put(("flows", name, "flows_to_masks", device), {**timing_row(stats, megapixels),
                                                             "ap50_vs_truth": ap50(images, masks[device])})
    if "cuda" in devices:
        difference = max(float(np.abs(a - b).max(initial=0)) for a, b in zip(unit["cpu"], unit["cuda"]))
        part.put(("flows", name, "masks_to_flows", "cuda_max_abs_difference"), difference)
        part.put(("flows", name, "flows_to_masks", "cuda_equals_cpu"),
                 all(np.array_equal(a, b) for a, b in zip(masks["cpu"], masks["cuda"])))


def bench_metrics(ctx: Context, part: Part, images: list[np.ndarray], devices: list[str]) -> None:
    megapixels = sum(x.size for x in images) / 1e6
    predicted = perturbed(images)
    counts = {}
    for device in devices:
        true, pred = on(device, images), on(device, predicted)
        stats, result = measure(lambda: M.evaluate(true, pred, THRESHOLDS, iou_rule="ge"), rounds(ctx, device),
                                device != "cpu")
        counts[device] = [[int(s.tp), int(s.fp), int(s.fn)] for s in result]
        part.put(("metrics", "real", device), {**timing_row(stats, megapixels), "tp_fp_fn": counts[device]})
    if "cuda" in devices:
        part.put(("metrics", "real", "cuda_equals_cpu"), counts["cpu"] == counts["cuda"])


def bench_cellpose(ctx: Context, part: Part, data: dict[str, list[np.ndarray]]) -> None:
    """Cellpose's own torch GPU path on the same inputs, one timed round after one warm-up image."""
    try:
        import cellpose
        from cellpose import dynamics
    except ImportError as error:
        part.put(("cellpose",), f"skipped: cellpose is not importable ({error})")
        return
    device = torch.device("cuda")
    part.put(("cellpose", "version"), getattr(cellpose, "version", "?"))
    for name, images in data.items():
        megapixels = sum(x.size for x in images) / 1e6
        dynamics.masks_to_flows_gpu(images[0], device=device)  # warm-up: kernels, allocator
        stats, _ = measure(lambda: [dynamics.masks_to_flows_gpu(x, device=device)[0] for x in images], 1, True, 0)
        part.put(("cellpose", name, "masks_to_flows"), timing_row(stats, megapixels))
        unit = [F.masks_to_flows(x) for x in images]  # percs' flows, as bench_flows.py gives both
        stats, masks = measure(lambda: [dynamics.compute_masks(F.FLOW_SCALE * u, cellprob_of(x), niter=200,
                                                               cellprob_threshold=0.0, flow_threshold=0.4,
                                                               min_size=15, device=device)
                                        for u, x in zip(unit, images)], 1, True, 0)
        part.put(("cellpose", name, "flows_to_masks"), {**timing_row(stats, megapixels),
                                                        "ap50_vs_truth": ap50(images, list(masks))})


def predictor_setup(ctx: Context, device: torch.device, raw: np.ndarray, labels: np.ndarray) -> BP.Setup:
    """bench_predict.py's setup fixture, on the carry's weights and image."""
    torch.manual_seed(0)
    model = build_percs_dino(ModelConfig(backbone="vits14"), ctx.path(CARRY_WEIGHTS), device).eval()
    predictor = Predictor(model)
    image = torch.from_numpy(normalize_image(raw)).to(device)
    embedding = predictor.embed_reference(image, labels == np.bincount(labels.ravel())[1:].argmax() + 1)
    batches = BP.predictor_windows(image, predictor)
    with torch.no_grad():
        features = [model.backbone(batch).features for batch in batches]
        outputs = [model.decode_features(f, embedding[None].expand(len(f), -1), b) for f, b in zip(features, batches)]
    true_flows = torch.from_numpy(F.FLOW_SCALE * F.masks_to_flows(labels)).to(device)
    true_logits = torch.from_numpy(cellprob_of(labels)).to(device)
    return BP.Setup(device, raw, labels, predictor, embedding, batches, features, outputs,
                    (true_flows, true_logits), predictor.fields(raw, embedding))


def predictor_parts(setup: BP.Setup) -> dict:
    """bench_predict.py's parts as functions of no argument."""
    model, embedding = setup.predictor.model, setup.embedding
    replay = BP.ReplayModel(setup.outputs, setup.device)
    replay_predictor = Predictor(replay, setup.predictor.config)

    def backbone():
        with torch.no_grad():
            return [model.backbone(batch).features for batch in setup.batches]

    def head():
        with torch.no_grad():
            return [model.decode_features(f, embedding[None].expand(len(f), -1), b)
                    for f, b in zip(setup.features, setup.batches)]

    def overhead():
        replay.calls = 0
        return replay_predictor.fields(setup.raw, setup.embedding)

    return {"backbone": backbone, "head": head, "postprocess": lambda: BP.postprocess(setup, *setup.true_fields),
            "overhead": overhead, "total": lambda: BP.predict_afresh(setup),
            "total_same_image": lambda: setup.predictor.predict(setup.raw, setup.embedding)}


def bench_predictor(ctx: Context, part: Part, devices: list[str]) -> None:
    from skimage.io import imread

    root = ctx.path(CARRY_STYLES)
    raw = np.asarray(imread(root / f"{PREDICT_IMAGE}_img.png"))
    labels = read_label_image(root / f"{PREDICT_IMAGE}_masks.png")
    side = ctx.profile.predict_crop
    if side:
        raw, labels = raw[:side, :side], F.renumber(labels[:side, :side])
    part.put(("predictor", "image"), f"{PREDICT_IMAGE} {raw.shape[0]} x {raw.shape[1]}")
    for device in devices:
        setup = predictor_setup(ctx, torch.device(device), raw, labels)
        for name, function in predictor_parts(setup).items():
            stats, result = measure(function, rounds(ctx, device), device != "cpu")
            row = timing_row(stats, setup.megapixels)
            if name == "postprocess":
                row["ap50_vs_truth"] = ap50([labels], [result.cpu().numpy()])
            part.put(("predictor", device, name), row)
        if device == "cuda":
            bench_predictor_cuda_extras(ctx, part, setup)
        del setup


def bench_predictor_cuda_extras(ctx: Context, part: Part, setup: BP.Setup) -> None:
    """The whole prediction under bfloat16 autocast, and on a large image (the 512 image tiled)."""
    def bf16():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return BP.predict_afresh(setup)

    stats, _ = measure(bf16, ctx.profile.rounds_cuda, True)
    part.put(("predictor", "cuda", "total_bf16_autocast"), timing_row(stats, setup.megapixels))
    tiles = ctx.profile.predict_tiles
    if tiles:
        large = np.tile(setup.raw, (tiles, tiles, 1) if setup.raw.ndim == 3 else (tiles, tiles))

        def total_large():
            setup.predictor.forget_features()
            return setup.predictor.predict(large, setup.embedding)

        stats, _ = measure(total_large, max(ctx.profile.rounds_cuda // 3, 1), True)
        part.put(("predictor", "cuda", f"total_{large.shape[0]}x{large.shape[1]}"),
                 timing_row(stats, large.shape[0] * large.shape[1] / 1e6))


def run(ctx: Context, part: Part) -> None:
    ready, why = cuda_ready()
    devices = ["cpu", "cuda"] if ready and not ctx.dry_run else ["cpu"]
    part.put(("devices",), devices)
    part.put(("threads",), {"torch": torch.get_num_threads(), "percs_openmp": _backend.cpu.max_threads()})
    data = datasets(ctx)
    for name, images in data.items():
        bench_flows(ctx, part, name, images, devices)
    bench_metrics(ctx, part, data["real"], devices)
    bench_predictor(ctx, part, devices)
    if "cuda" in devices:
        bench_cellpose(ctx, part, data)
        part.finish("passed")
    else:
        part.finish("passed" if ctx.dry_run else "failed", f"CPU path only; CUDA skipped: {why or 'dry run'}")
