"""The two-stream experiment of docs/rnn/README.md: 5 seeds x 4 methods, then, per run, which
output hears which input after pruning (a path of kept weights from input a or b to output 1 or
2; "reach" lists out1<-a, out1<-b, out2<-a, out2<-b), the pruned test loss and the modularity.

Each run is exactly ``bimt train two-stream --method M --seed S --out RUNS/M-sS``.
Usage: python scripts/two_stream_experiment.py [RUNS] [--seeds 5] [--methods vanilla,l1,bimt,sernn]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import bimt
from bimt.analysis import intervene
from bimt.core.fileio import write_json
from bimt.analysis import input_output_paths


#: Pruning thresholds (fraction of each weight tensor's largest |w|): 2% keeps the trained
#: networks' test loss; 10% is find_modules' default.
THRESHOLDS = (0.02, 0.1)


def pruned_masks(model, threshold):
    """Weights below ``threshold * max|W|`` of their tensor, to zero (as find_modules prunes)."""
    masks = {}
    for name in model.spec.weights():
        w = model.get_parameter(name).detach().abs()
        masks[name] = w < threshold * w.max()
    return masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="?", default="runs/two-stream")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", default="vanilla,l1,bimt,sernn")
    ap.add_argument("--out", default="docs/rnn")
    args = ap.parse_args()
    rows = []
    for method in args.methods.split(","):
        for seed in range(args.seeds):
            run = Path(args.runs) / f"{method}-s{seed}"
            if (run / "metrics.json").exists():
                model, cfg = bimt.load_model(run)
                metrics = json.loads((run / "metrics.json").read_text())
            else:
                r = bimt.fit(task="two-stream", method=method, seed=seed, out=run, progress=False)
                model, metrics = r.model, r.metrics
            data = bimt.tasks.get_task("two-stream").make_data(seed, None)
            row = dict(method=method, seed=seed, test_loss=metrics["test_loss"],
                       modularity=metrics["modularity"])
            for th in THRESHOLDS:
                reach = input_output_paths(model, th)
                with torch.no_grad(), intervene(model, zero=pruned_masks(model, th)):
                    pruned = float(torch.nn.functional.mse_loss(model(data.X_test), data.y_test))
                row[f"reach@{th}"] = reach.astype(int).tolist()
                row[f"separated@{th}"] = bool(reach[0, 0] and not reach[0, 1]
                                             and reach[1, 1] and not reach[1, 0])
                row[f"pruned_test_loss@{th}"] = pruned
            rows.append(row)
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / "two-stream.json", rows)
    head = "| method | modularity (mean +- sd) | test MSE (mean) |"
    rule = "|---|---|---|"
    for th in THRESHOLDS:
        head += f" separated @{th} (of {args.seeds}) | pruned test MSE @{th} | reach @{th} per seed |"
        rule += "---|---|---|"
    lines = [head, rule]
    for method in args.methods.split(","):
        rs = [r for r in rows if r["method"] == method]
        q = np.array([r["modularity"] for r in rs])
        line = (f"| {method} | {q.mean():.3f} +- {q.std():.3f} "
                f"| {np.mean([r['test_loss'] for r in rs]):.2e} |")
        for th in THRESHOLDS:
            reach = " ".join("".join(str(v) for row in r[f"reach@{th}"] for v in row) for r in rs)
            line += (f" {sum(r[f'separated@{th}'] for r in rs)} "
                     f"| {np.mean([r[f'pruned_test_loss@{th}'] for r in rs]):.2e} | {reach} |")
        lines.append(line)
    (out / "two-stream-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # seed 0 of every method, side by side
    from matplotlib.figure import Figure

    methods = args.methods.split(",")
    fig = Figure(figsize=(3.2 * len(methods), 5.2))
    for k, method in enumerate(methods):
        model, _ = bimt.load_model(Path(args.runs) / f"{method}-s0")
        r = next(r for r in rows if r["method"] == method and r["seed"] == 0)
        bimt.viz.plot(model, ax=fig.add_subplot(1, len(methods), k + 1),
                   title=f"{method}, seed 0\nQ = {r['modularity']:.2f}")
    fig.tight_layout()
    bimt.viz.save_figure(fig, out / "two-stream-seed0.png", dpi=90)


if __name__ == "__main__":
    main()
