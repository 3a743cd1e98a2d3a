"""Each member of a stacked run against the same seed trained alone: test loss, largest weight
difference, modularity. Run: .venv/bin/python scripts/batched_vs_single.py float32 2000
(dtype, steps, task; methods vanilla, l1, bimt x seeds 0, 1)."""
import sys
import time

import bimt
from bimt.training.loop import train
dtype = sys.argv[1] if len(sys.argv) > 1 else "float64"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
task = sys.argv[3] if len(sys.argv) > 3 else "symbolic-independence"
methods = ["vanilla", "l1", "bimt"]
seeds = [0, 1]
t0 = time.perf_counter()
res = bimt.fit_many(task=task, seeds=seeds, methods=methods, steps=steps, dtype=dtype, progress=False)
tb = time.perf_counter() - t0
t0 = time.perf_counter()
for r in res:
    u = train(task=task, method=r.config.method, seed=r.config.seed, steps=steps, dtype=dtype, progress=False, plots=False)
    a, b = r.metrics["test_loss"], u.metrics["test_loss"]
    diff = max(float((p - q).abs().max()) for p, q in zip(r.model.state_dict().values(), u.model.state_dict().values()))
    print(r.config.method, r.config.seed, a, b, abs(a - b) / abs(b), "max|dw|", diff, r.metrics["modularity"], u.metrics["modularity"])
print("batched", tb, "sequential", time.perf_counter() - t0)
