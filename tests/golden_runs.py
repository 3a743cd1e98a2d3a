"""Short pinned trainings whose metrics are recorded in ``tests/data/golden_metrics.json``.

Every setting that a task's defaults could change is pinned here (``swap_mode`` and ``dtype``
too, since task defaults for them now reach the run), so a later change of a task's defaults
does not move these numbers (a change of a task's *data draw*, model or training targets does,
and must update the file: ``python tests/golden_runs.py --write``).

The same code gives results that differ in their last digits on CPUs whose kernels differ (AVX2
and AVX-512 accumulate matrix products in different orders), so the file keeps one set per
kernel family (``torch.backends.cpu.get_cpu_capability()``), ``default`` for any other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN_FILE = Path(__file__).parent / "data" / "golden_metrics.json"
KEYS = ("train_loss", "test_loss", "train_acc", "test_acc", "connection_cost", "modularity")

RUNS = {
    "symbolic-independence": dict(
        widths=[4, 20, 20, 2], steps=400, lr=2e-3, loss="mse",
        lambda_schedule=[[1e-3, 100], [1e-2, 200], [1e-3, 100]], A=1.0, y_star=0.1, p=1.0,
        top_k=5, swap_every=100, bias_free_fraction=0.75, reduction="sum",
        distance_free=[], batch_size=None, eval_every=100, swap_mode="greedy", dtype="float32"),
    "two-moons": dict(
        widths=[2, 20, 20, 2], steps=300, lr=2e-3, loss="ce",
        lambda_schedule=[[1e-3, 75], [1e-2, 150], [1e-3, 75]], A=1.0, y_star=0.2, p=1.0,
        top_k=10, swap_every=100, bias_free_fraction=0.0, reduction="sum",
        distance_free=[], batch_size=None, eval_every=100, swap_mode="greedy", dtype="float32"),
    "modular-addition": dict(
        widths=[64, 50, 50, 59], steps=200, lr=1e-3, loss="ce",
        lambda_schedule=[[0.1, 50], [1.0, 100], [0.1, 50]], A=2.0, y_star=0.5, p=1.0,
        top_k=30, swap_every=100, bias_free_fraction=0.0, reduction="mean",
        distance_free=[], batch_size=None, eval_every=100, swap_mode="greedy", dtype="float32"),
    "in-context": dict(
        widths=[32], steps=100, lr=1e-3, loss="mse", batch_size=64,
        lambda_schedule=[[1e-3, 25], [1e-2, 50], [1e-1, 25]], A=2.0, y_star=0.5, p=1.0,
        top_k=30, swap_every=50, bias_free_fraction=0.0, reduction="mean",
        distance_free=[], eval_every=50, swap_mode="greedy", dtype="float32"),
}


def run(task: str) -> dict:
    import bimt

    result = bimt.fit(task=task, method="bimt", seed=0, progress=False, plots=False, **RUNS[task])
    return {k: result.metrics[k] for k in KEYS}


def capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def golden() -> dict:
    """The recorded metrics for this machine's kernel family."""
    recorded = json.loads(GOLDEN_FILE.read_text())
    return recorded.get(capability(), recorded["default"])


if __name__ == "__main__":
    out = {task: run(task) for task in RUNS}
    print(json.dumps(out, indent=1, sort_keys=True))
    if "--write" in sys.argv:  # this machine's kernel family only
        recorded = json.loads(GOLDEN_FILE.read_text())
        recorded[capability() if capability() in recorded else "default"] = out
        GOLDEN_FILE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
