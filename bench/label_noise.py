"""Predictions made from true labels for the metric benchmarks: each image shifted and a few cells dropped.

Kept apart from bench_metrics.py, which needs StarDist and Cellpose to import, so that the GPU check
(bench/gpu/timing.py) scores the same perturbation without them.
"""

from __future__ import annotations

import numpy as np


def perturbed(images: list[np.ndarray], seed: int = 0, shift: int = 2, drop: float = 0.05) -> list[np.ndarray]:
    """Each image shifted right by `shift` px (wrapping), with a fraction `drop` of its labels removed."""
    rng = np.random.default_rng(seed)
    out = []
    for labels in images:
        moved = np.roll(labels, shift, axis=1)
        present = np.unique(moved[moved > 0])
        moved[np.isin(moved, rng.choice(present, size=round(drop * len(present)), replace=False))] = 0
        out.append(moved)
    return out
