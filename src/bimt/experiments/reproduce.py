"""``bimt reproduce``: the paper's Tables 1 and 2, every (task, method, seed) in parallel.

Each run is an ordinary run directory under ``OUT/runs/TASK/METHOD-sSEED``; a run whose
``metrics.json`` exists is skipped and one with only a checkpoint is resumed, so an interrupted
reproduction picks up where it stopped. Workers are separate processes with one torch thread
each; with the default batched backend a worker trains the runs of one MLP task that can share a
stack as one stacked model (:mod:`bimt.batched`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..core.fileio import atomic_write_bytes, write_json

__all__ = ["reproduce", "PAPER_TASKS", "PAPER_TABLE1", "PAPER_TABLE2", "write_tables"]

#: The tasks of the paper's Tables 1 and 2, in their order.
PAPER_TASKS = [
    "symbolic-independence", "symbolic-feature-sharing", "symbolic-compositionality",
    "two-moons", "modular-addition", "permutation-s4", "in-context", "mnist",
]
COLUMN = {
    "symbolic-independence": "Symbolic (a)", "symbolic-feature-sharing": "Symbolic (b)",
    "symbolic-compositionality": "Symbolic (c)", "two-moons": "Two Moon",
    "modular-addition": "Modular Addition", "permutation-s4": "Permutation",
    "in-context": "In-Context", "mnist": "MNIST", "induction": "Induction", "text-lm": "Text LM",
}
METHOD_NAME = {"vanilla": "Vanilla", "l1": "L1 penalty", "l1-local": "L1 + Local",
               "l1-swap": "L1 + Swap", "bimt": "BIMT"}
LOSS_TASKS = {"symbolic-independence", "symbolic-feature-sharing", "symbolic-compositionality",
              "in-context", "regression-fig2", "in-context-singular"}
#: Tasks whose Table 1 entry is another metrics.json key: (key, column label, format).
TABLE1_KEY = {"text-lm": ("test_bpc", "bits/char", "{:.3f} ± {:.3f}")}

#: The paper's Table 1 (test loss, or test accuracy in %): ``{method: {task: (mean, std)}}``.
PAPER_TABLE1 = {
    "vanilla": {"symbolic-independence": (5.2e-3, 1.0e-3), "symbolic-feature-sharing": (1.1e-5, 0.4e-5),
                "symbolic-compositionality": (1.2e-4, 0.5e-4), "two-moons": (100.0, 0.0),
                "modular-addition": (100.0, 0.0), "permutation-s4": (100.0, 0.0),
                "in-context": (7.8e-5, 1.8e-5), "mnist": (98.5, 0.2)},
    "l1": {"symbolic-independence": (7.9e-3, 0.8e-3), "symbolic-feature-sharing": (1.2e-5, 0.3e-5),
           "symbolic-compositionality": (1.8e-4, 0.4e-4), "two-moons": (100.0, 0.0),
           "modular-addition": (100.0, 0.0), "permutation-s4": (100.0, 0.0),
           "in-context": (7.2e-5, 1.0e-5), "mnist": (98.4, 0.3)},
    "bimt": {"symbolic-independence": (7.4e-3, 1.0e-3), "symbolic-feature-sharing": (8.0e-5, 1.5e-5),
             "symbolic-compositionality": (1.3e-3, 0.3e-3), "two-moons": (100.0, 0.0),
             "modular-addition": (100.0, 0.0), "permutation-s4": (100.0, 0.0),
             "in-context": (1.8e-4, 0.4e-4), "mnist": (98.2, 0.3)},
}
#: The paper's Table 2 (modularity), shaped as :data:`PAPER_TABLE1`.
PAPER_TABLE2 = {
    "vanilla": {"symbolic-independence": (0.207, 0.025), "symbolic-feature-sharing": (0.151, 0.015),
                "symbolic-compositionality": (0.145, 0.023), "two-moons": (0.291, 0.032),
                "modular-addition": (0.194, 0.028), "permutation-s4": (0.129, 0.012),
                "in-context": (0.085, 0.014), "mnist": (0.073, 0.005)},
    "l1": {"symbolic-independence": (0.512, 0.042), "symbolic-feature-sharing": (0.456, 0.035),
           "symbolic-compositionality": (0.328, 0.027), "two-moons": (0.289, 0.016),
           "modular-addition": (0.435, 0.028), "permutation-s4": (0.371, 0.031),
           "in-context": (0.083, 0.010), "mnist": (0.099, 0.008)},
    "bimt": {"symbolic-independence": (0.581, 0.042), "symbolic-feature-sharing": (0.543, 0.063),
             "symbolic-compositionality": (0.392, 0.021), "two-moons": (0.338, 0.039),
             "modular-addition": (0.535, 0.027), "permutation-s4": (0.634, 0.043),
             "in-context": (0.161, 0.013), "mnist": (0.238, 0.021)},
}
RESULT_COLUMNS = ["task", "method", "seed", "train_loss", "test_loss", "train_acc", "test_acc",
                  "modularity", "crossings", "module_crossings", "connection_cost", "n_params", "n_nonzero_params", "steps",
                  "wall_s", "data_source"]


def _job_config(job: dict):
    from ..training.config import TrainConfig

    return TrainConfig(task=job["task"], method=job["method"], seed=job["seed"],
                       steps=job.get("steps"), data_dir=job.get("data_dir"))


def _clear_if_stale(job: dict) -> None:
    """Remove a run left by an earlier reproduction with other settings (``--steps``, ...) or
    other task defaults (every value it used, ``resolved_config.json``), so a rerun reuses or
    resumes only runs of exactly the settings asked for."""
    import dataclasses

    from ..training.runs import RUN_FILES

    run_dir = Path(job["run_dir"])
    saved = run_dir / "config.json"
    if not saved.exists():
        return
    as_json = lambda value: json.loads(json.dumps(value, default=str))
    config = _job_config(job)
    try:
        same = json.loads(saved.read_text()) == as_json(dataclasses.asdict(config))
        used = run_dir / "resolved_config.json"
        if same and used.exists():
            same = json.loads(used.read_text()) == as_json(config.resolved().to_dict())
    except ValueError:
        same = False
    if not same:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)


def _run_one(job: dict) -> dict:
    """One (task, method, seed) in a worker process; returns its metrics."""
    import torch

    torch.set_num_threads(1)
    from ..training.loop import fit

    run_dir = Path(job["run_dir"])
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    resume = (run_dir / "checkpoint.pt").exists()
    return fit(_job_config(job), out=run_dir, resume=resume, progress=False,
                 device=job.get("device")).metrics


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the reproduction that started us is gone (even by
    ``kill -9``), instead of training on for nobody and then idling."""
    import threading

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_job(job: dict) -> tuple[list[dict], float]:
    """A job (one run, or a stack of runs of one task): its runs' metrics and its wall time."""
    start = time.perf_counter()
    if "stack" not in job:
        return [_run_one(job)], time.perf_counter() - start
    import torch

    torch.set_num_threads(1)
    from ..training.loop import fit_many

    runs = job["stack"]
    configs = [_job_config(r) for r in runs]
    results = fit_many(configs, out=[r["run_dir"] for r in runs], resume=True, progress=False,
                       device=job.get("device"))
    return [r.metrics for r in results], time.perf_counter() - start


BACKENDS = ("batched", "processes")


def _stacks(runs: list[dict]) -> list[list[dict]]:
    """A task's runs split into the stacks :func:`bimt.batched.fit_many` would form from them
    (vanilla with its own weight decay is one, say), one job each: a task that needs several
    stacks spreads over the workers, and every stack, so every number, stays as it was."""
    from ..training.loop import stack_key
    from ..tasks import get_task

    stacks: dict[tuple, list[dict]] = {}
    for r in runs:
        cfg = _job_config(r).resolved(get_task(r["task"]))
        stacks.setdefault(stack_key(cfg, 0), []).append(r)
    return list(stacks.values())


def _stackable(task_name: str) -> bool:
    """Whether the task's runs can train as one stacked model."""
    from ..models.stacked import stackable
    from ..tasks import get_task
    from ..training.config import TrainConfig

    task = get_task(task_name)
    return stackable(task.make_model(TrainConfig(task=task_name).resolved(task).to_dict()))


def reproduce(
    tasks=None, methods=("vanilla", "l1", "bimt"), seeds: int = 5, workers: int = 2,
    out: str | os.PathLike = "reproduction", steps: int | None = None, data_dir=None,
    progress: bool = True, backend: str = "batched", device=None,
) -> list[dict]:
    """Run the grid, then write results.csv, table1.md, table2.md and one figure per task.

    ``backend="batched"`` trains an MLP task's runs as stacked models (:mod:`bimt.batched`),
    one stack per job (all its runs, or each group of runs that can share a stack); the
    transformer's runs, and every run with ``backend="processes"``, are one run per worker. ``reproduction.json`` records the wall
    time, ``job_s`` (each task's summed job wall times) and ``run_wall_s`` (the runs' own
    times, from their ``metrics.json``); a resumed reproduction adds its invocation to the
    folder's ``invocations`` and to the totals rather than replacing them.
    """
    from ..core.progress import progress_bar
    from ..tasks import get_task
    from ..training.config import METHODS

    tasks = list(tasks or PAPER_TASKS)
    for t in tasks:
        get_task(t)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; allowed: {', '.join(METHODS)}")
    # seeds: a count (0 .. seeds-1) or the seed numbers themselves, as `train --seed` takes them
    seed_list = list(range(seeds)) if isinstance(seeds, int) else sorted(set(map(int, seeds)))
    if not seed_list or min(seed_list) < 0 or workers <= 0:
        raise ValueError(f"seeds (a count > 0 or seed numbers >= 0) and workers (> 0) are needed, "
                         f"got seeds={seeds}, workers={workers}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    device = None if device is None else str(device)
    out = Path(out)
    runs = [
        dict(task=t, method=m, seed=s, steps=steps, data_dir=data_dir, device=device,
             run_dir=str(out / "runs" / t / f"{m}-s{s}"))
        for t in tasks for m in methods for s in seed_list
    ]
    for r in runs:
        _clear_if_stale(r)
    jobs = []
    for t in tasks:
        mine = [r for r in runs if r["task"] == t]
        if backend == "batched" and _stackable(t):
            jobs.extend(dict(task=t, stack=stack, device=device) for stack in _stacks(mine))
        else:
            jobs.extend(mine)
    # longest first, so the slow tasks do not end up alone at the end
    jobs.sort(key=lambda j: -_expected_cost(j["task"]) * len(j.get("stack", [j])))
    start = time.perf_counter()
    results, job_s = [], {t: 0.0 for t in tasks}
    with progress_bar(total=len(runs), desc="reproduce", unit="run", disable=not progress) as bar:
        def done(job, metrics, seconds):
            results.extend(metrics)
            job_s[job["task"]] += seconds
            what = f"{len(metrics)} runs" if "stack" in job else f"{job['method']} s{job['seed']}"
            bar.set_postfix_str(f"{job['task']} {what}")
            bar.update(len(metrics))

        if workers == 1:
            for job in jobs:
                done(job, *_run_job(job))
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                     initializer=_watch_parent, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_run_job, job): job for job in jobs}
                for future in as_completed(futures):
                    done(futures[future], *future.result())
    wall = time.perf_counter() - start
    results.sort(key=lambda r: (tasks.index(r["task"]), list(methods).index(r["method"]), r["seed"]))
    write_results(out, results, tasks, list(methods))
    # a resumed reproduction adds its own time to the folder's record instead of replacing it
    invocations = _previous_invocations(out / "reproduction.json") + [
        {"wall_s": round(wall, 1), "job_s": {t: round(v, 1) for t, v in job_s.items()}}]
    write_json(out / "reproduction.json", {
        "tasks": tasks, "methods": list(methods), "seeds": seed_list, "workers": workers,
        "steps_override": steps, "wall_s": round(sum(i["wall_s"] for i in invocations), 1),
        "cpu_count": os.cpu_count(), "backend": backend, "device": device or "cpu",
        "job_s": {t: round(sum(i["job_s"].get(t, 0.0) for i in invocations), 1) for t in tasks},
        "run_wall_s": {t: round(sum(float(r.get("wall_s") or 0.0) for r in results if r["task"] == t), 1)
                       for t in tasks},
        "invocations": invocations,
    })
    for t in tasks:
        try:
            task_figure(out, t, list(methods), seed_list[0])
        except Exception as e:  # a figure must not lose the tables
            print(f"could not draw the figure of {t}: {e}")
    return results


def _previous_invocations(path: Path) -> list[dict]:
    """The invocations an earlier ``reproduction.json`` in this folder recorded (one for a file
    written before invocations were listed); none when there is no readable one."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    listed = old.get("invocations")
    if isinstance(listed, list):
        return [i for i in listed if isinstance(i, dict) and isinstance(i.get("wall_s"), (int, float))
                and isinstance(i.get("job_s"), dict)]
    if isinstance(old.get("wall_s"), (int, float)) and isinstance(old.get("job_s"), dict):
        return [{"wall_s": old["wall_s"], "job_s": old["job_s"]}]
    return []


def _expected_cost(task: str) -> float:
    """Seconds of one worker per run, as measured in the committed reproduction (job_s / runs),
    to start the longest jobs first."""
    return {"modular-addition": 190, "in-context": 200, "in-context-singular": 200, "mnist": 75,
            "permutation-s4": 50, "text-lm": 600, "induction": 300}.get(task, 3)


def write_results(out: Path, results: list[dict], tasks: list[str], methods: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RESULT_COLUMNS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    t1, t2 = write_tables(results, tasks, methods)
    atomic_write_bytes(out / "table1.md", t1.encode())
    atomic_write_bytes(out / "table2.md", (t2 + "\n" + crossings_table(results, tasks, methods)).encode())


def _mean_std(values):
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))],
                 dtype=float)
    if len(v) == 0:
        return None
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _fmt(task: str, ms, table: int) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    if table == 2:
        return f"{mean:.3f} ± {std:.3f}"
    if task in TABLE1_KEY:
        return TABLE1_KEY[task][2].format(mean, std)
    if task in LOSS_TASKS:
        exp = math.floor(math.log10(abs(mean))) if mean else 0
        return f"({mean / 10**exp:.1f} ± {std / 10**exp:.1f})e{exp}"
    return f"({mean:.1f} ± {std:.1f})%"


def write_tables(results: list[dict], tasks: list[str], methods: list[str]) -> tuple[str, str]:
    """Markdown Tables 1 and 2 in the paper's layout, ours beside the paper's."""
    def table(n: int) -> str:
        head = "| method | " + " | ".join(COLUMN.get(t, t) for t in tasks) + " |"
        metric = "| metric | " + " | ".join(
            (TABLE1_KEY[t][1] if t in TABLE1_KEY else "loss" if t in LOSS_TASKS else "accuracy")
            if n == 1 else "modularity" for t in tasks
        ) + " |"
        lines = [head, "|" + "---|" * (len(tasks) + 1), metric]
        paper = PAPER_TABLE1 if n == 1 else PAPER_TABLE2
        for m in methods:
            cells = []
            for t in tasks:
                rows = [r for r in results if r["task"] == t and r["method"] == m]
                if n == 2:
                    vals = [r["modularity"] for r in rows]
                elif t in TABLE1_KEY:
                    vals = [r.get(TABLE1_KEY[t][0]) for r in rows]
                elif t in LOSS_TASKS:
                    vals = [r["test_loss"] for r in rows]
                else:
                    vals = [None if r["test_acc"] is None else 100 * r["test_acc"] for r in rows]
                cells.append(_fmt(t, _mean_std(vals), n))
            lines.append(f"| {METHOD_NAME.get(m, m)} (ours) | " + " | ".join(cells) + " |")
            if m in paper and any(t in paper[m] for t in tasks):  # no row of dashes
                lines.append(f"| {METHOD_NAME.get(m, m)} (paper) | " + " | ".join(
                    _fmt(t, paper[m].get(t), n) if t in paper[m] else "-" for t in tasks) + " |")
        n_seeds = max((sum(1 for r in results if r["task"] == t and r["method"] == methods[0])
                       for t in tasks), default=0)
        what = "test loss (regression) or test accuracy" if n == 1 else "modularity (Newman, NetworkX)"
        source = (f"; the paper's rows are copied from its Table {n}" if any(
            t in paper.get(m, {}) for m in methods for t in tasks) else " (tasks beyond the paper)")
        return (f"# Table {n}: {what}\n\nMean ± standard deviation over {n_seeds} seeds{source}."
                "\n\n" + "\n".join(lines) + "\n")

    return table(1), table(2)


def crossings_table(results: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Table 2's companion: seeds whose modules are drawn side by side, and the crossings."""
    lines = ["## Readability: crossing wires after pruning at 5%", "",
             "Per cell: seeds with `module_crossings` = 0 / seeds, then the mean `crossings` and "
             "`module_crossings` (pairs of drawn wires that cross; between modules). `-`: not a "
             "chain of line layers.", "",
             "| method | " + " | ".join(COLUMN.get(t, t) for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    for m in methods:
        cells = []
        for t in tasks:
            rows = [r for r in results if r["task"] == t and r["method"] == m
                    and r.get("module_crossings") is not None]
            if not rows:
                cells.append("-")
                continue
            zero = sum(r["module_crossings"] == 0 for r in rows)
            cells.append(f"{zero}/{len(rows)}: {np.mean([r['crossings'] for r in rows]):.1f}, "
                         f"{np.mean([r['module_crossings'] for r in rows]):.1f}")
        lines.append(f"| {METHOD_NAME.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def task_figure(out: Path, task: str, methods: list[str], seed: int = 0) -> Path | None:
    """The graphs of one seed for every method, side by side: ``OUT/figures/TASK.png``."""
    from .. import viz
    from ..viz._io import Figure
    from ..models import wiring_of
    from ..models.drawing import drawing_of
    from ..training.runs import load_model

    shown = [m for m in ("vanilla", "l1", "bimt") if m in methods] or methods
    models = []
    for m in shown:
        run = out / "runs" / task / f"{m}-s{seed}"
        if (run / "checkpoint.pt").exists():
            models.append((m, load_model(run)[0]))
    if not models:
        return None
    three_d = drawing_of(wiring_of(models[0][1])).three_d
    fig = Figure(figsize=(5.5 * len(models), 6 if not three_d else 5.5))
    for i, (m, model) in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1, projection="3d" if three_d else None)
        viz.plot(model, ax=ax, title=f"{METHOD_NAME.get(m, m)}")
    fig.suptitle(f"{task}: seed {seed}")
    path = out / "figures" / f"{task}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    viz.save_figure(fig, path.with_suffix(""), formats=("png",))
    return path
