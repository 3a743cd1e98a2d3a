"""The cnn-mnist comparison of docs/cnn/README.md: vanilla and BIMT, seeds 0..S-1.

Each run is exactly ``bimt train cnn-mnist --method M --seed S --out RUNS/M-sS`` (run here if
missing); the script writes the table and the seed-0 channel graphs.
Usage: python scripts/cnn_experiment.py [RUNS] [--seeds 3]
"""

import argparse
import json
from pathlib import Path

import numpy as np

import bimt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="?", default="runs/cnn-mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="docs/cnn")
    args = ap.parse_args()
    out = Path(args.out)
    rows = {}
    for method in ("vanilla", "bimt"):
        for seed in range(args.seeds):
            run = Path(args.runs) / f"{method}-s{seed}"
            if not (run / "metrics.json").exists():
                bimt.fit(task="cnn-mnist", method=method, seed=seed, out=run, progress=False)
            rows[method, seed] = json.loads((run / "metrics.json").read_text())
    lines = ["| method | " + " | ".join(f"seed {s}: test acc, modularity" for s in range(args.seeds))
             + " | mean test acc | mean modularity |",
             "|---|" + "---|" * (args.seeds + 2)]
    for method in ("vanilla", "bimt"):
        ms = [rows[method, s] for s in range(args.seeds)]
        lines.append(f"| {method} | " + " | ".join(f"{m['test_acc']:.3f}, {m['modularity']:.3f}" for m in ms)
                     + f" | {np.mean([m['test_acc'] for m in ms]):.4f} "
                     f"| {np.mean([m['modularity'] for m in ms]):.3f} |")
    (out / "cnn-mnist-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for method in ("vanilla", "bimt"):
        model = bimt.load_model(Path(args.runs) / f"{method}-s0")[0]
        m = rows[method, 0]
        fig = bimt.viz.plot(model, title=f"cnn-mnist, {method}, seed 0: acc {m['test_acc']:.3f}, "
                               f"Q = {m['modularity']:.3f}")
        bimt.viz.save_figure(fig, out / f"cnn-mnist-{method}.png", dpi=70)


if __name__ == "__main__":
    main()
