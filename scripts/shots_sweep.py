"""AP@0.5 as a function of the number of positive (K) and negative (M) references: `percs eval --shots K
--negatives M` for every (K, M) on one split, in one process, then a table and a plot of several sweeps.

    python scripts/shots_sweep.py run --checkpoint MODEL.pt --data BENCH --split test --out SWEEP/mini-test
    python scripts/shots_sweep.py plot SWEEP/mini-test SWEEP/mini-novel SWEEP/consep-test --out shots.png \
        --table shots.md

`run` writes one ordinary `percs eval` folder per setting (SWEEP/.../k{K}-m{M}: metrics.json, table.md,
predictions), exactly what `percs eval --method percs --checkpoint MODEL.pt --shots K --negatives M` writes;
the method object (and so each query image's found and embedded cells) is shared by the settings, which is
what makes the sweep cost about one evaluation. `plot` needs matplotlib (`pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from percs.data.format import load_dataset
    from percs.evaluate.percs_method import build_percs_method
    from percs.evaluate.runner import EvalConfig, run_eval
    from percs.evaluate.shots import ShotsConfig

    dataset = load_dataset(args.data)
    method_args = argparse.Namespace(checkpoint=args.checkpoint, min_cell_probability=0.0, device=args.device,
                                     window=None, stride=None, batch_size=None, cellprob_threshold=None,
                                     flow_threshold=None, niter=None, min_size=None)
    method = build_percs_method(method_args, dataset)
    method.candidates.size = 1 << 20          # every query image's cells, found once for all settings
    for shots in args.shots:
        for negatives in args.negatives:
            out = Path(args.out) / f"k{shots}-m{negatives}"
            setting = ShotsConfig(shots, negatives, args.seed, args.negatives_from, args.positives_from)
            config = EvalConfig(args.split, worst=0, progress=True, shots=setting)
            metrics = run_eval(method, dataset, out, config, method_key="percs")
            ap = metrics["overall"]["iou"]["0.5"]["mean"]["ap"]
            print(f"K={shots} M={negatives}: AP@0.5 {ap['value']:.3f} [{ap['ci'][0]:.3f}, {ap['ci'][1]:.3f}] "
                  f"({metrics['n_queries']} queries, {metrics['seconds']:.0f} s)", flush=True)


def collect(folders: list[str]) -> list[dict]:
    """One entry per (sweep folder, setting): label, K, M, AP@0.5 mean and interval, P and R."""
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob("k*-m*/metrics.json")):
            metrics = json.loads(path.read_text())
            shots = metrics["shots"] or {"shots": 1, "negatives": 0}
            mean = metrics["overall"]["iou"]["0.5"]["mean"]
            source = " from false positives" if shots.get("negatives_from") == "false-positives" else ""
            rows.append({"sweep": f"{metrics['dataset']['name']} {metrics['split']}", "K": shots["shots"],
                         "M": shots["negatives"], "source": source, "ap": mean["ap"]["value"], "ci": mean["ap"]["ci"],
                         "precision": mean["precision"]["value"], "recall": mean["recall"]["value"],
                         "n_queries": metrics["n_queries"], "method": metrics["method"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| split | K positives | M negatives | AP@0.5 | P@0.5 | R@0.5 | queries |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["sweep"], r["source"], r["M"], r["K"])):
        interval = f"{r['ap']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        lines.append(f"| {r['sweep']} | {r['K']} | {r['M']}{r['source']} | {interval} "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['n_queries']} |")
    return "\n".join(lines) + "\n"


def plot(args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib") from None
    rows = collect(args.folders)
    if not rows:
        raise SystemExit(f"no k*-m*/metrics.json under {args.folders}")
    sweeps = sorted({r["sweep"] for r in rows})
    figure, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), sharey=True, squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        curves = sorted({(r["M"], r["source"]) for r in rows if r["sweep"] == sweep})
        for (negatives, source), style in zip(curves, ("o-", "s--", "^:", "d-.")):
            points = sorted((r for r in rows if r["sweep"] == sweep and (r["M"], r["source"]) == (negatives, source)),
                            key=lambda r: r["K"])
            if negatives == 0 and source:
                continue
            ks = [r["K"] for r in points]
            ax.errorbar(ks, [r["ap"] for r in points], capsize=3, fmt=style, label=f"M = {negatives}{source}",
                        yerr=[[r["ap"] - r["ci"][0] for r in points], [r["ci"][1] - r["ap"] for r in points]])
        ax.set_title(sweep)
        ax.set_xlabel("K positive references")
        ax.set_xticks(sorted({r["K"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AP@0.5 (mean over queries, 95% CI)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    if args.table:
        Path(args.table).write_text(table(rows))
    print(table(rows), end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("run", help="every (K, M) on one split")
    p.add_argument("--checkpoint", required=True, help="a percs model with an instance-level decision")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="new folder; one k{K}-m{M} eval folder per setting")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--negatives", type=int, nargs="+", default=[0, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives-from", choices=("random", "false-positives"), default="random")
    p.add_argument("--positives-from", choices=("other-images", "query-image"), default="other-images")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)
    p = sub.add_parser("plot", help="a PNG (and markdown table) of several sweeps")
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--table", help="also write the markdown table here")
    p.set_defaults(func=plot)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
