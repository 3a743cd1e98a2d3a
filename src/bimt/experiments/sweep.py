"""``bimt sweep TASK``: a grid over TrainConfig fields and seeds, a table and a Pareto plot.

Every grid point and seed is a trial with its own run directory (``OUT/trials/trial-NNN``); a
rerun skips trials whose ``metrics.json`` exists and resumes checkpointed ones. The local
backend trains all trials as stacked models (:mod:`bimt.batched`: points that differ only in
per-run settings such as lambda, ``A`` or the seed share one stack); the ``ray`` backend
(``pip install bimt[ray]``) hands each trial to Ray Tune, retrying a trial whose worker dies.
A Ray trial is a stack of one, so both backends give the same rows (to rounding: a stack of
one and a stack of many may round their batched matmuls differently).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
from pathlib import Path

from ..training.config import TrainConfig
from ..core.fileio import atomic_write_bytes, write_json

__all__ = ["sweep", "parse_grid", "pareto_front", "SWEEP_BACKENDS"]

#: ``local``: trials stacked in this process; ``ray``: one Ray Tune task per trial (``bimt[ray]``).
SWEEP_BACKENDS = ("local", "ray")
METRICS = ("test_loss", "test_acc", "modularity", "connection_cost", "train_loss", "crossings",
           "module_crossings")


def parse_grid(items) -> dict[str, list]:
    """``["A=0.5,1", "lambda=1e-3,1e-2"]`` -> ``{"A": [0.5, 1.0], "lambda_schedule": [...]}``.

    Values are JSON (numbers, strings, lists); ``lambda=V`` is a constant lambda (its
    ``lambda_schedule`` is ``[[V, 1]]``).
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entry {item!r} must read FIELD=V1,V2,... (e.g. A=0.5,1)")
        name = name.strip().replace("-", "_")
        parsed = []
        for text in _split(values):
            try:
                parsed.append(json.loads(text))
            except json.JSONDecodeError:
                parsed.append(text)
        if name == "lambda":
            name, parsed = "lambda_schedule", [[[float(v), 1]] for v in parsed]
        if name not in fields or name in ("task", "seed"):
            raise ValueError(
                f"unknown grid field {name!r}; allowed: lambda and the TrainConfig fields "
                f"{', '.join(sorted(fields - {'task', 'seed'}))} (seeds: --seeds)"
            )
        grid[name] = parsed
    return grid


def _split(text: str) -> list[str]:
    """Split on commas outside brackets, so list values survive."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def sweep(
    task: str,
    grid: dict[str, list],
    seeds=(0,),
    *,
    objective: str = "modularity",
    maximize: bool = True,
    constraint: str | None = None,
    backend: str = "local",
    address: str | None = None,
    out: str | os.PathLike = "sweep",
    progress: bool = True,
    **fixed,
) -> list[dict]:
    """Train every grid point x seed; returns one row per trial (and writes ``sweep.csv``,
    ``sweep.md``, ``pareto.png`` and ``sweep.json`` under ``out``).

    ``objective`` is a metric (``test_loss``, ``test_acc``, ``modularity``, ...) to maximise (or
    minimise); ``constraint`` like ``"test_loss<=0.01"`` marks trials that break it infeasible.
    ``fixed`` are TrainConfig fields for every trial (``steps=3000``).
    """
    from ..tasks import get_task

    get_task(task)
    if backend not in SWEEP_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(SWEEP_BACKENDS)}")
    if objective not in METRICS:
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(METRICS)}")
    check = _constraint(constraint)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    names = list(grid)
    points = list(itertools.product(*(grid[n] for n in names))) if names else [()]
    out = Path(out)
    trials = []
    for point in points:
        for seed in seeds:
            params = dict(zip(names, point))
            config = TrainConfig.from_dict(dict(fixed, task=task, seed=seed, **params))
            config.resolved()  # refuse bad values before anything trains
            trials.append(dict(trial=f"trial-{len(trials):03d}", params=params, seed=seed,
                               config=dataclasses.asdict(config),
                               run_dir=str(out / "trials" / f"trial-{len(trials):03d}")))
    if backend == "local":
        metrics = _run_local(trials, progress)
    else:
        metrics = _run_ray(trials, address, out)
    rows = []
    for t, m in zip(trials, metrics):
        row = dict(trial=t["trial"], seed=t["seed"], **{k: _show(v) for k, v in t["params"].items()})
        row.update({k: m.get(k) for k in METRICS})
        row["feasible"] = check(m)
        rows.append(row)
    _write(out, rows, names, objective, maximize, constraint, backend)
    return rows


def _show(v):
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], list) and len(v[0]) == 2:
        return v[0][0]  # a constant lambda schedule reads as its value
    return v


def _constraint(text):
    if not text:
        return lambda m: True
    for op in ("<=", ">="):
        name, sep, bound = text.partition(op)
        if sep:
            name = name.strip()
            if name not in METRICS:
                raise ValueError(f"constraint {text!r}: unknown metric {name!r}; allowed: {', '.join(METRICS)}")
            try:
                b = float(bound)
            except ValueError:
                raise ValueError(f"constraint {text!r}: {bound.strip()!r} is not a number") from None
            if op == "<=":
                return lambda m: m.get(name) is not None and m[name] <= b
            return lambda m: m.get(name) is not None and m[name] >= b
    raise ValueError(f"constraint {text!r} must read METRIC<=NUMBER or METRIC>=NUMBER")


def _run_local(trials, progress) -> list[dict]:
    from ..training.loop import fit_many

    results = fit_many([TrainConfig.from_dict(t["config"]) for t in trials],
                       out=[t["run_dir"] for t in trials], resume=True, progress=progress,
                       plots=False)
    return [r.metrics for r in results]


def _ray_trial(trial: dict) -> dict:
    """One trial on a Ray worker: a stack of one, resumed from its run directory if any."""
    import torch

    torch.set_num_threads(1)
    from ..training.loop import fit_many

    result = fit_many([TrainConfig.from_dict(trial["config"])], out=[trial["run_dir"]],
                      resume=True, progress=False, plots=False)[0]
    return {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) or v is None}


def _run_ray(trials, address, out: Path) -> list[dict]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ValueError("the ray backend needs Ray Tune: pip install 'bimt[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    by_name = {t["trial"]: t for t in trials}

    def trainable(space):
        return _ray_trial(space["trial"])

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search([by_name[n] for n in sorted(by_name)])},
        run_config=tune.RunConfig(
            name="bimt-sweep", storage_path=str((out / "ray").resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),  # a dead worker's trial reruns
        ),
    )
    grid = tuner.fit()
    found = {}
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"a Ray trial failed: {result.error}")
        found[result.config["trial"]["trial"]] = result.metrics
    return [found[t["trial"]] for t in trials]


def pareto_front(rows, x="test_loss", y="modularity") -> list[int]:
    """Indices of the feasible rows no other feasible row beats on both lower ``x`` and higher
    ``y`` (a row without a ``feasible`` entry counts as feasible)."""
    ok = [r for r in rows if r.get(x) is not None and r.get(y) is not None and r.get("feasible", True)]
    front = []
    for i, r in enumerate(rows):
        if not any(r is o for o in ok):
            continue
        dominated = any(
            o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in ok
        )
        if not dominated:
            front.append(i)
    return front


def _write(out: Path, rows, names, objective, maximize, constraint, backend) -> None:
    cols = ["trial", "seed", *names, *METRICS, "feasible"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode())
    feasible = [r for r in rows if r["feasible"] and r.get(objective) is not None]
    best = (max if maximize else min)(feasible, key=lambda r: r[objective]) if feasible else None
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        mark = " **best**" if r is best else ""
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + mark + " |")
    head = (f"# Sweep: {'max' if maximize else 'min'} {objective}"
            + (f" subject to {constraint}" if constraint else "") + f" ({backend} backend)\n\n")
    atomic_write_bytes(out / "sweep.md", (head + "\n".join(lines) + "\n").encode())
    write_json(out / "sweep.json", {"objective": objective, "maximize": maximize,
                                    "constraint": constraint, "backend": backend,
                                    "best": best and best["trial"], "rows": rows})
    _pareto_plot(out, rows)


def _pareto_plot(out: Path, rows) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    from ..viz._io import Figure, save_figure

    shown = [r for r in rows if r.get("test_loss") is not None and r.get("modularity") is not None
             and math.isfinite(r["test_loss"])]
    if not shown:
        return
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for feasible, style in ((True, dict(s=18, color="0.45", label="trials")),
                            (False, dict(s=22, marker="x", color="0.7", label="infeasible (constraint)"))):
        pts = [(r["test_loss"], r["modularity"]) for r in shown if bool(r.get("feasible", True)) == feasible]
        if pts:
            ax.scatter(*zip(*pts), **style)
    front = sorted((rows[i]["test_loss"], rows[i]["modularity"]) for i in pareto_front(rows))
    if front:
        ax.plot(*zip(*front), "o-", color="C3", label="Pareto front (feasible)")
    losses = [r["test_loss"] for r in shown]
    if min(losses) > 0 and max(losses) / min(losses) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overprinted minor labels
    ax.set_xlabel("test loss")
    ax.set_ylabel("modularity")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "pareto.png")
