"""Training with BIMT: task loss + lambda(t) * connection cost, and a swap pass every S steps.

One loop owns the schedule (lambda and its bias phase, swaps, snapshots, evaluation,
checkpoints, batch seeds) for one run or for a stack of runs; an *engine* owns the arithmetic:

* :class:`_Single` - one model with autograd (data-parallel under ``torchrun``); any model
  family, including your own module (``bimt.fit(model=..., data=...)``);
* :class:`_Stack` - runs of one BioMLP shape as one :class:`~bimt.models.stacked.StackedMLP`
  (seeds and methods side by side, every kernel shared, one fused AdamW for all).

Each member of a stack gets exactly the data, initialisation, lambda, bias phase, swaps and
checkpoints its single run would get; the two engines round differently (a stacked matmul is
not a single one), so a seed trained alone and inside a stack agree to float rounding, amplified
over a long run, and each engine reproduces itself exactly. The methods (vanilla, l1, ...) are
the table :data:`bimt.training.config.METHODS`. The cost's gradient ``lambda * d * sign(w)`` is
added to ``.grad`` directly (:meth:`ConnectionCost.add_grad_`); its value is computed only when
logged. A run directory holds the config as given and as used, a checkpoint written atomically
every ``checkpoint_every`` steps (``resume`` continues exactly), ``history.csv``,
``metrics.json`` and the figures (drawn last: a figure that fails is a warning, never a lost run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, overload

import numpy as np
import torch
from torch import nn

from ..analysis.graph import count_nonzero, modularity
from ..core.communicability import CommunicabilityCost
from ..core.cost import ConnectionCost
from ..core.crossings import crossings
from ..core.spec import fold_index
from ..core.swap import swap_pass
from ..models import wiring_of
from ..models.stacked import StackedMLP, member_losses, stackable
from ..tasks import Data, Task, get_task
from .config import TrainConfig, check_seed, lambda_at
from .devices import resolve_device
from ..core.fileio import write_json
from .runs import (
    MODULE_TASK, adopt_labels, claim_run_dir, load_model, module_task, objective, read_run,
    save_checkpoint, say, wiring_record, write_history_csv, write_metrics, write_plots,
)

__all__ = ["fit", "fit_many", "TrainResult", "TrainingDiverged", "build_run"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run returns: the trained model, its final metrics, its evaluations, the config it
    ran with, its data and its run directory (``None`` when nothing was written)."""

    model: nn.Module
    metrics: dict
    history: list[dict]
    config: TrainConfig
    data: Data
    run_dir: Path | None = None
    snapshots: list = field(default_factory=list)


@dataclass
class _Run:
    """One run's settings and state while it trains (alone or as a stack member)."""

    config: TrainConfig  # as given (config.json, checkpoints)
    cfg: TrainConfig  # resolved
    task: Task
    run_dir: Path | None = None
    checkpoint: dict | None = None
    custom_loss: object = None
    model: nn.Module = None
    data: Data = None
    optimizer: torch.optim.Optimizer = None
    objective: object = None
    costs: dict = None
    history: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)

    def prepare(self, device) -> None:
        """The seeded model and data, optimizer, costs, and the checkpoint's state if resuming."""
        self.model, self.data = build_run(self.cfg, self.task, device)
        self.optimizer = _optimizer(self.model, self.cfg)
        self.objective = objective(self.task, self.cfg.loss, wiring_of(self.model), self.custom_loss,
                                   self.data)
        self.objective.check_fits(self.model, self.data, self.cfg)
        self.costs = run_costs(self.model, self.cfg)
        if self.checkpoint is not None:
            try:
                self.model.load_state_dict(self.checkpoint["model"])
                self.optimizer.load_state_dict(self.checkpoint["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"{self.run_dir / 'checkpoint.pt'} does not fit the model its "
                                 f"config builds ({first})") from None
            self.history = list(self.checkpoint["history"])
            self.snapshots = list(self.checkpoint.get("snapshots", []))

    def lam(self, step: int) -> float:
        return lambda_at(self.cfg.lambda_schedule, step, self.cfg.steps) if self.costs["grad"] else 0.0

    def name(self) -> str:
        return f"{self.cfg.task} [{self.cfg.method}, seed {self.cfg.seed}]"


# -- the public calls ------------------------------------------------------------------------
@overload  # one run -> one result
def fit(config=None, out=None, resume: bool = False, progress: bool = True, plots: bool = True, *,
        model: nn.Module | None = None, data=None, tensorboard=None, force: bool = False,
        device=None, seeds: None = None, methods: None = None, **overrides) -> TrainResult: ...
@overload  # seeds= or methods= -> a list (fit_many)
def fit(config=None, out=None, resume: bool = False, progress: bool = True, plots: bool = True, *,
        seeds: Sequence[int], methods: Sequence[str] | None = None, device=None, force: bool = False,
        **overrides) -> list[TrainResult]: ...
@overload
def fit(config=None, out=None, resume: bool = False, progress: bool = True, plots: bool = True, *,
        methods: Sequence[str], seeds: Sequence[int] | None = None, device=None, force: bool = False,
        **overrides) -> list[TrainResult]: ...
def fit(config=None, out=None, resume: bool = False, progress: bool = True, plots: bool = True, *,
        model: nn.Module | None = None, data=None, tensorboard=None, force: bool = False,
        device=None, seeds=None, methods=None, **overrides) -> TrainResult | list[TrainResult]:
    """Train one model; with ``out``, write the run directory there. Returns a :class:`TrainResult`.

    ``bimt.fit(task="two-moons", steps=3000)`` is the shortest call; a ``TrainConfig`` or a
    dict works too, and ``task`` may be a :class:`~bimt.tasks.Task` (your own). With ``seeds``
    or ``methods``: a list of results, trained as stacked models (:func:`fit_many`).

    ``bimt.fit(model=module, data=(X_train, y_train, X_test, y_test), loss="mse", ...)`` trains
    your own module (it needs a wiring: :func:`bimt.attach`); ``data`` may also be
    ``(train_loader, test_loader)`` (``DataLoader`` s of ``(x, y)`` batches: one batch a step,
    each epoch's order drawn from the run's seed). ``loss`` is ``"mse"``, ``"ce"`` or a function
    ``loss(output, target)``. The cost settings are the module's; ``A=...`` and the like here
    replace them.

    ``resume=True`` continues from ``out/checkpoint.pt`` with the config saved there (for your
    own module: pass a fresh instance and the same ``data`` again) and gives exactly the numbers
    an uninterrupted run would; settings that differ from the saved ones are refused. A run
    directory has one writer at a time, and a fresh run refuses a directory holding another run
    unless ``force=True``. ``tensorboard=DIR`` also logs to TensorBoard. ``device``: ``cpu``
    (default), ``cuda``, ``cuda:N`` or ``auto``; under ``torchrun`` the run is data-parallel
    (:mod:`bimt.training.distributed`).
    """
    if seeds is not None or methods is not None:
        if model is not None or tensorboard is not None:
            raise ValueError("seeds=/methods= train built-in tasks side by side; give model= "
                             "and tensorboard= to single runs")
        return fit_many(config, seeds=seeds, methods=methods, out=out, resume=resume,
                        progress=progress, plots=plots, device=device, force=force, **overrides)
    task, custom = None, None
    if callable(overrides.get("loss")):
        custom, overrides["loss"] = overrides["loss"], "custom"
    if isinstance(overrides.get("task"), Task):
        task = overrides["task"]
        overrides["task"] = task.name
    if model is not None:
        if task is not None or "task" in overrides:
            raise ValueError("give fit either task= or model= (with data=), not both")
        if data is None:
            raise ValueError("fit(model=...) needs data=(X_train, y_train, X_test, y_test) or "
                             "data=(train_loader, test_loader)")
        overrides["task"] = MODULE_TASK
    elif data is not None:
        raise ValueError("data= goes with model=; for your own data and a BioMLP use "
                         "bimt.task_from_arrays(...)")
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    asked = _asked_for(config, overrides)
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    run_dir = Path(out) if out is not None else None
    checkpoint = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory (out=...)")
        saved, checkpoint = read_run(run_dir, model)
        differ = [f"{k}={getattr(config, k)!r} (the run has {getattr(saved, k)!r})"
                  for k in asked if getattr(config, k) != getattr(saved, k)]
        if differ:
            raise ValueError(f"--resume continues {run_dir} with its saved settings, which differ "
                             f"from the ones given: {'; '.join(differ)}")
        config = saved
        if config.task == MODULE_TASK and model is None:
            raise ValueError(f"{run_dir} trained your own module: resume with fit(model=<a fresh "
                             "instance>, data=<the same data>, out=..., resume=True)")
    if config.loss == "custom" and custom is None:
        raise ValueError("this run uses a loss function of yours: pass it again as loss=fn")
    if model is not None:
        task, config = module_task(model, data, config, checkpoint)
    task = task or get_task(config.task)
    run = _Run(config, config.resolved(task), task, run_dir, checkpoint, custom)
    if model is not None:  # the module trains with the run's settings
        wiring_of(model).settings = run.cfg.cost_settings(wiring_of(model).settings)
    from . import distributed

    threads = torch.get_num_threads()
    torch.set_num_threads(run.cfg.threads)
    try:
        device = distributed.local_device(resolve_device(device))
        if run_dir is None or not distributed.is_main():  # one rank writes the run directory
            run.run_dir = None
            return _train([run], device, progress, plots, tensorboard)[0]
        with claim_run_dir(run_dir, config.to_dict(), resume=resume, force=force):
            return _train([run], device, progress, plots, tensorboard)[0]
    finally:
        torch.set_num_threads(threads)


def fit_many(configs=None, *, seeds=None, methods=None, out=None, resume: bool = False,
             progress: bool = True, plots: bool = True, device=None, force: bool = False,
             **overrides) -> list[TrainResult]:
    """Train many runs at once; one :class:`TrainResult` per run, in order.

    ``configs``: a list of TrainConfigs or dicts; or one config (or none) expanded over
    ``methods`` x ``seeds`` (``overrides`` apply to every run). ``out``: a directory holding one
    run directory per run, ``METHOD-sSEED``, or a list of run directories. ``resume=True``
    skips runs whose ``metrics.json`` exists and continues those with a checkpoint. Runs of a
    BioMLP task that differ only in per-member settings (seed, method, lambda, ``A``, ...:
    :data:`~bimt.training.config.MEMBER_FIELDS`) train as one stack (``metrics.json`` adds
    ``batched_members``; its ``wall_s`` is the stack's); other runs train one after another.
    Each run directory is held as :func:`fit` holds its own.
    """
    task_obj = overrides.pop("task", None)
    if isinstance(task_obj, str):
        overrides["task"], task_obj = task_obj, None
    elif task_obj is not None:
        if not isinstance(task_obj, Task):
            raise ValueError(f"task must be a task name or a bimt.Task, got {task_obj!r}")
        overrides["task"] = task_obj.name
    configs = _expand(configs, seeds, methods, overrides)
    runs = []
    for config, run_dir in zip(configs, _run_dirs(configs, out)):
        if task_obj is not None and config.task != task_obj.name:
            raise ValueError(f"config names task {config.task!r} but task={task_obj.name!r} was given")
        task = task_obj or get_task(config.task)
        runs.append(_Run(config, config.resolved(task), task, run_dir))
    device = resolve_device(device)
    results: list = [None] * len(runs)
    stacks: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        if resume and r.run_dir is not None and (r.run_dir / "metrics.json").exists():
            results[i] = _finished(r)
            continue
        if resume and r.run_dir is not None and (r.run_dir / "checkpoint.pt").exists():
            saved, r.checkpoint = read_run(r.run_dir)
            if saved != r.config:
                raise ValueError(f"{r.run_dir} holds a run with another config; resume it with "
                                 "bimt.fit(resume=True, out=...) or use a fresh directory")
        start = r.checkpoint["step"] if r.checkpoint else 0
        stacks.setdefault(stack_key(r.cfg, start), []).append(i)
    with contextlib.ExitStack() as held:
        for i in (i for idx in stacks.values() for i in idx):
            if runs[i].run_dir is not None:
                held.enter_context(claim_run_dir(runs[i].run_dir, runs[i].config.to_dict(),
                                                 resume=resume, force=force))
        for idx in stacks.values():
            threads = torch.get_num_threads()
            torch.set_num_threads(runs[idx[0]].cfg.threads)
            try:
                for i, result in zip(idx, _train([runs[i] for i in idx], device, progress, plots,
                                                 stack=True)):
                    results[i] = result
            finally:
                torch.set_num_threads(threads)
    return results


def stack_key(cfg: TrainConfig, start_step: int) -> tuple:
    """Runs with equal keys can share a stack: they differ only in per-member settings."""
    from .config import MEMBER_FIELDS

    return (start_step,) + tuple((k, repr(v)) for k, v in sorted(cfg.to_dict().items())
                                 if k not in MEMBER_FIELDS)


def _asked_for(config, overrides: dict) -> list[str]:
    """The config fields the caller set explicitly (compared with a resumed run's own)."""
    fields = set(overrides) - {"task"} if overrides.get("task") == MODULE_TASK else set(overrides)
    if isinstance(config, TrainConfig):
        default = TrainConfig()
        fields |= {f.name for f in dataclasses.fields(config)
                   if getattr(config, f.name) != getattr(default, f.name)} | {"task"}
    return sorted(fields)


def _expand(configs, seeds, methods, overrides) -> list[TrainConfig]:
    if configs is None or isinstance(configs, (dict, TrainConfig)):
        base = TrainConfig.from_dict(configs) if isinstance(configs, dict) else configs or TrainConfig()
        base = dataclasses.replace(base, **overrides)
        seeds = [base.seed] if seeds is None else [check_seed(s, "seeds") for s in seeds]
        methods = [base.method] if methods is None else list(methods)
        configs = [dataclasses.replace(base, method=m, seed=s) for m in methods for s in seeds]
    else:
        if seeds is not None or methods is not None:
            raise ValueError("give either a list of configs or seeds/methods, not both")
        configs = [dataclasses.replace(TrainConfig.from_dict(c) if isinstance(c, dict) else c,
                                       **overrides) for c in configs]
    if not configs:
        raise ValueError("no runs to train: give at least one seed (or config)")
    return configs


def _run_dirs(configs, out) -> list[Path | None]:
    if out is None:
        return [None] * len(configs)
    if isinstance(out, (list, tuple)):
        if len(out) != len(configs):
            raise ValueError(f"{len(out)} run directories for {len(configs)} runs")
        dirs = [Path(d) for d in out]
    else:
        dirs = [Path(out) / f"{c.method}-s{c.seed}" for c in configs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two runs would share one run directory; give distinct (method, seed) "
                         "pairs or a list of directories")
    return dirs


def _finished(run: _Run) -> TrainResult:
    import json

    model, cfg = load_model(run.run_dir)
    _, state = read_run(run.run_dir)
    data = run.task.make_data(cfg.seed, cfg.data_dir)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    return TrainResult(model, metrics, state["history"], cfg, data, run.run_dir,
                       state.get("snapshots", []))


# -- building a run --------------------------------------------------------------------------
def build_run(cfg: TrainConfig, task: Task, device=None) -> tuple[nn.Module, Data]:
    """The seeded model and data of a resolved config, as every engine starts them: a seed gets
    the same data and initialisation however it is trained. Built in the run's dtype, as the
    float64 notebooks build theirs (a float64 draw is not a float32 draw cast up)."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    data = dataclasses.replace(task.make_data(cfg.seed, cfg.data_dir))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, cfg.dtype))
    try:
        model = task.make_model(cfg.to_dict())
    finally:
        torch.set_default_dtype(previous)
    wiring = wiring_of(model)
    if cfg.dtype != "float32" or device is not None:
        dtype = getattr(torch, cfg.dtype)
        model = model.to(device=device, dtype=dtype)
        cast = lambda t: (t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                          if torch.is_tensor(t) else t)
        for name in ("X_train", "y_train", "X_test", "y_test", "y_train_fit"):
            setattr(data, name, cast(getattr(data, name)))
    adopt_labels(wiring, data)
    if cfg.top_k is not None:
        sizes = [g.size for g in wiring.spec.groups.values() if not g.frozen]
        if sizes and cfg.top_k > max(sizes):
            raise ValueError(f"top_k={cfg.top_k} is larger than every swappable layer (largest: "
                             f"{max(sizes)} neurons); smaller layers use all their neurons")
    return model, data


def run_costs(model, cfg: TrainConfig) -> dict:
    """The costs a run uses, all derived from the model's own settings and the method's row of
    :data:`~bimt.training.config.METHODS`: ``local`` (reported), ``grad`` / ``grad_no_bias``
    (its gradient; ``None`` when uncharged), ``swap`` (judges swaps; ``None`` when the method
    never swaps) and ``bias_from`` (the step biases start paying)."""
    wiring = wiring_of(model)
    method, settings = cfg.method_spec, wiring.settings
    kind = CommunicabilityCost if method.cost == "communicability" else ConnectionCost
    grad = settings if method.local else settings.replace(A=0.0)
    # swaps are judged by the full local cost: a distance-free layer only shapes the gradient
    # (so MNIST's output ring can still rearrange its classes), and with ``swap_A`` (S4's
    # notebook judges swaps with A = 2 while training with A = 1)
    return dict(local=wiring.connection_cost,
                grad=kind(wiring.spec, grad) if method.charged else None,
                grad_no_bias=kind(wiring.spec, grad.replace(bias=False)) if method.charged else None,
                swap=ConnectionCost(wiring.spec, settings.replace(distance_free=(), A=cfg.swap_A))
                if method.swaps else None,
                bias_from=int(round(cfg.bias_free_fraction * cfg.steps)))


def _optimizer(model, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0, fused=True)
    except (RuntimeError, TypeError):  # fused kernels missing on this device / build
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)


def batch_seed(seed: int, step: int) -> int:
    """The seed of a run's batch at ``step`` (of its epoch order, for data loaders): a resumed
    run draws exactly what an uninterrupted one would, and a stack member what its run would."""
    return seed * 1_000_003 + step


# -- the loop --------------------------------------------------------------------------------
def _train(runs: list[_Run], device, progress, plots, tensorboard=None, stack=False) -> list:
    if runs[0].model is None:
        runs[0].prepare(device)
    if len(runs) > 1 and not stackable(runs[0].model):  # one after another
        return [_train([r], device, progress, plots)[0] for r in runs]
    for r in runs[1:]:
        r.prepare(device)
    engine = _Stack(runs) if stack else _Single(runs[0], device)
    cfg0 = runs[0].cfg
    step, elapsed = 0, 0.0
    if runs[0].checkpoint is not None:
        step = runs[0].checkpoint["step"]
        elapsed = max(r.checkpoint["wall_s"] for r in runs)
        torch.set_rng_state(runs[0].checkpoint["rng"]["torch"])
    for r in runs:
        if r.run_dir is not None:
            write_json(r.run_dir / "config.json", r.config.to_dict())
            write_json(r.run_dir / "resolved_config.json", r.cfg.to_dict())  # every value used
    for s, r in enumerate(runs):
        if r.cfg.animate and step == 0:
            r.snapshots.append((0, engine.state(s)))
    tb = None
    if tensorboard is not None and engine.main:
        from .tblog import TensorBoardLogger

        tb = TensorBoardLogger(tensorboard)
    from ..core.progress import progress_bar

    bar = progress_bar(total=cfg0.steps, initial=step, disable=not progress, unit="step", mininterval=0.5,
               dynamic_ncols=True,
               desc=runs[0].name() if len(runs) == 1 else f"{cfg0.task} [{len(runs)} runs, batched]")
    start = time.perf_counter() - elapsed
    try:
        while step < cfg0.steps:
            lams = [r.lam(step) for r in runs]
            engine.step(step, lams, [step >= r.costs["bias_from"] for r in runs])
            step += 1
            for s, r in enumerate(runs):
                if r.costs["swap"] is not None and step % r.cfg.swap_every == 0:
                    report = engine.swap(s)
                    if tb is not None:
                        tb.swaps(step, report)
                if r.cfg.animate and step % max(1, r.cfg.steps // r.cfg.animate_frames) == 0:
                    r.snapshots.append((step, engine.state(s)))
            if step % cfg0.eval_every == 0 or step == cfg0.steps:
                losses = engine.train_losses()
                for r, loss, lam in zip(runs, losses, lams):
                    if not math.isfinite(loss):
                        raise _diverged(r, f"the training loss became {loss}", step, lam, len(runs))
                rows = engine.evaluate()
                wall = round(time.perf_counter() - start, 3)
                for r, row, loss, lam in zip(runs, rows, losses, lams):
                    row.update(step=step, lam=lam, train_loss_batch=loss, wall_s=wall)
                    r.history.append(row)
                if tb is not None:
                    tb.evaluation(step, runs[0].history[-1], runs[0].model)
                bar.set_postfix_str(_postfix([r.history[-1] for r in runs]), refresh=False)
            bar.update(1)
            for s, r in enumerate(runs):
                if r.run_dir is not None and (step % r.cfg.checkpoint_every == 0 or step == cfg0.steps):
                    if not engine.finite(s):  # keep the last good checkpoint
                        raise _diverged(r, "the parameters are no longer finite, or their loss is "
                                        "not", step, lams[s], len(runs))
                    engine.sync(s)
                    save_checkpoint(r.run_dir / "checkpoint.pt", r.model, r.optimizer, step,
                                    r.history, r.config.to_dict(), time.perf_counter() - start,
                                    r.snapshots, {"wiring": wiring_record(wiring_of(r.model))})
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    wall = time.perf_counter() - start
    say(progress, "final evaluation and modularity")
    results = []
    for s, r in enumerate(runs):
        engine.sync(s)
        metrics = final_metrics(r, wall)
        if isinstance(engine, _Stack):
            metrics["batched_members"] = len(runs)
        result = TrainResult(r.model, metrics, r.history, r.cfg, r.data, r.run_dir, r.snapshots)
        if r.run_dir is not None:
            write_history_csv(r.run_dir / "history.csv", r.history)
            write_metrics(r.run_dir, metrics)
            if plots:
                write_plots(result, progress)
        results.append(result)
    return results


def _diverged(run: _Run, what: str, step: int, lam: float, n_runs: int) -> TrainingDiverged:
    kept = run.run_dir / "checkpoint.pt" if run.run_dir is not None else None
    where = (f"the last good checkpoint is kept at {kept}" if kept is not None and kept.exists()
             else "no checkpoint was written")
    who = f"run {run.cfg.method} seed {run.cfg.seed}: " if n_runs > 1 else ""
    return TrainingDiverged(f"{who}{what} at step {step} (lambda={lam:g}, lr={run.cfg.lr:g}); "
                            f"{where}; try a smaller lr or lambda")


def _postfix(rows: list[dict]) -> str:
    if len(rows) > 1:
        return f"test loss {min(r['test_loss'] for r in rows):.3g} (best member)"
    row = rows[0]
    parts = [f"loss {row['train_loss']:.3g}", f"test {row['test_loss']:.3g}"]
    if row.get("test_acc") is not None:
        parts.append(f"acc {row['test_acc']:.3f}")
    return ", ".join(parts + [f"cost {row['connection_cost']:.3g}"])


def final_metrics(run: _Run, wall: float) -> dict:
    row = _evaluate(run.model, run.data, run.objective, run.costs["local"])
    params = [p.detach() for p in run.model.parameters()]
    try:
        q = modularity(run.model)
    except ValueError:  # every weight zero
        q = None
    drawn = crossings(run.model, wiring_of(run.model).spec)
    return {
        "task": run.cfg.task, "method": run.cfg.method, "seed": run.cfg.seed, "steps": run.cfg.steps,
        "train_loss": row["train_loss"], "test_loss": row["test_loss"],
        "train_acc": row["train_acc"], "test_acc": row["test_acc"],
        "connection_cost": row["connection_cost"], "modularity": q,
        "crossings": drawn["crossings"], "module_crossings": drawn["module_crossings"],
        "n_params": int(sum(p.numel() for p in params)), "n_nonzero_params": count_nonzero(params),
        "wall_s": round(wall, 3), "data_source": run.data.source,
        **run.task.extra_metrics(row),
    }


@torch.no_grad()
def _evaluate(model, data, obj, cost) -> dict:
    """Losses (and accuracies) on both splits, and the connection cost."""
    model.eval()
    row = {}
    for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
        if split == "train" and data.train_eval_rows is not None and torch.is_tensor(X):
            X, y = X[:data.train_eval_rows], y[:data.train_eval_rows]
        out, y = _outputs(model, X, y)
        out = obj.predict(out)
        row[f"{split}_loss"] = float(obj.loss(out, obj.targets(y, model)))
        row[f"{split}_acc"] = obj.accuracy(out, y) if obj.kind == "classification" else None
    row["connection_cost"] = cost.total(model)
    model.train()
    return row


def _outputs(model, X, y, batch: int = 4096):
    """Outputs on a whole split (tensors, in chunks; or every batch of a DataLoader) and its targets."""
    if isinstance(X, torch.utils.data.DataLoader):
        outs, ys = zip(*[(model(xb), yb) for xb, yb in X])
        return torch.cat(outs), torch.cat(ys)
    if len(X) <= batch:
        return model(X), y
    return torch.cat([model(X[i:i + batch]) for i in range(0, len(X), batch)]), y


# -- the engines -----------------------------------------------------------------------------
class _Single:
    """One model with autograd; data-parallel when a process group runs (:mod:`.distributed`)."""

    def __init__(self, run: _Run, device):
        from . import distributed

        self.run, self.distributed = run, distributed
        self.ddp = distributed.wrap(run.model)  # the model itself unless torch.distributed runs
        self.main = distributed.is_main()
        d, obj = run.data, run.objective
        self.loader = d.X_train if isinstance(d.X_train, torch.utils.data.DataLoader) else None
        self.device = device
        self.y = None if self.loader else obj.targets(d.y_train if d.y_train_fit is None else
                                                      d.y_train_fit, run.model)
        self._gen, self._epoch, self._it = torch.Generator(), None, None
        self.loss = self.xb = self.yb = None
        run.model.train()

    def _batch(self, step: int):
        """The batch of each step, reproducible from (seed, step) alone."""
        cfg, X = self.run.cfg, self.run.data.X_train
        if self.loader is not None:
            epoch, k = divmod(step, len(self.loader))
            if self._epoch != (epoch, k):
                with torch.random.fork_rng(devices=[]):  # each epoch's order from (seed, epoch)
                    torch.manual_seed(batch_seed(cfg.seed, epoch))
                    self._it = iter(self.loader)
                    batch = next(self._it)
                for _ in range(k):
                    batch = next(self._it)
            else:
                batch = next(self._it)
            self._epoch = (epoch, k + 1) if k + 1 < len(self.loader) else None
            xb, yb = batch
            if self.device is not None:  # a DataLoader's batches come on the CPU
                xb, yb = xb.to(self.device), yb.to(self.device)
            return xb, self.run.objective.targets(yb, self.run.model)
        if cfg.batch_size is None or cfg.batch_size >= len(X):
            return X, self.y
        self._gen.manual_seed(batch_seed(cfg.seed, step))
        idx = torch.randint(len(X), (cfg.batch_size,), generator=self._gen).to(X.device)
        return X[idx], self.y[idx]

    def step(self, step: int, lams, bias_on) -> None:
        r = self.run
        xb, yb = self.distributed.shard(*self._batch(step))  # this rank's part of the batch
        r.optimizer.zero_grad(set_to_none=False)
        self.loss = r.objective.loss(r.objective.fit_predict(self.ddp(xb)), yb)
        self.loss.backward()
        if lams[0]:
            r.costs["grad" if bias_on[0] else "grad_no_bias"].add_grad_(r.model, lams[0])
        r.optimizer.step()
        self.xb, self.yb = xb, yb

    def swap(self, s: int):
        r = self.run
        swapper = self.distributed.swap_pass if self.distributed.active() else swap_pass
        return swapper(r.model, wiring_of(r.model).spec, r.costs["swap"], r.cfg.top_k,
                       r.cfg.swap_mode, r.optimizer, costs=False)  # the loop reads no totals

    def state(self, s: int) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.run.model.state_dict().items()}

    def train_losses(self) -> list[float]:
        return [float(self.loss.detach())]

    def evaluate(self) -> list[dict]:
        r = self.run
        return [_evaluate(r.model, r.data, r.objective, r.costs["local"])]

    @torch.no_grad()
    def finite(self, s: int) -> bool:
        """Finite parameters whose loss on the last batch is finite too (worth checkpointing)."""
        r = self.run
        if not all(bool(torch.isfinite(p).all()) for p in r.model.parameters()):
            return False
        return math.isfinite(float(r.objective.loss(r.objective.fit_predict(r.model(self.xb)), self.yb)))

    def sync(self, s: int) -> None:
        """The run's own model and optimizer are the trained ones."""


class _Stack:
    """Runs of one BioMLP shape as one stacked model; swaps, costs and checkpoints per member."""

    main = True

    def __init__(self, runs: list[_Run]):
        self.runs = runs
        self.stack = StackedMLP([r.model for r in runs])
        self.optimizer = _optimizer(self.stack, runs[0].cfg)
        self.optimizer_step = _FusedAdamWStep(self.optimizer)
        if runs[0].checkpoint is not None:
            self.optimizer.load_state_dict(_stack_optimizer_state(
                [r.optimizer.state_dict() for r in runs]))
        self.views = [self.stack.member_views(s) for s in range(len(runs))]
        self.spec = wiring_of(runs[0].model).spec
        target = lambda r, y: r.objective.targets(y, r.model)
        self.X = {split: torch.stack([getattr(r.data, f"X_{split}") for r in runs])
                  for split in ("train", "test")}
        self.y = {split: torch.stack([getattr(r.data, f"y_{split}") for r in runs])
                  for split in ("train", "test")}
        self.target = {split: torch.stack([target(r, getattr(r.data, f"y_{split}")) for r in runs])
                       for split in ("train", "test")}
        self.rows = torch.arange(len(runs), device=self.X["train"].device).unsqueeze(1)
        self.grad_terms = _grad_terms(self.stack, runs)
        self.scaled_cache: dict = {}
        self._gen = torch.Generator()
        self.losses = None

    def step(self, step: int, lams, bias_on) -> None:
        cfg0, X, y = self.runs[0].cfg, self.X["train"], self.target["train"]
        if cfg0.batch_size is not None and cfg0.batch_size < X.shape[1]:
            idx = []
            for r in self.runs:  # each member's own batch, as its single run draws it
                self._gen.manual_seed(batch_seed(r.cfg.seed, step))
                idx.append(torch.randint(X.shape[1], (cfg0.batch_size,), generator=self._gen))
            idx = torch.stack(idx).to(X.device)
            X, y = X[self.rows, idx], y[self.rows, idx]
        self.losses = self.stack.loss_and_grad(X, y, cfg0.loss)
        if any(lams):
            key = (tuple(lams), tuple(bias_on))
            scaled = self.scaled_cache.get(key)
            if scaled is None:
                if len(self.scaled_cache) > 64:
                    self.scaled_cache.clear()
                scaled = self.scaled_cache[key] = _scaled_terms(self.grad_terms, lams, bias_on)
            with torch.no_grad():
                for t, scale in scaled:
                    t.grad.addcmul_(t.sign(), scale)
        self.optimizer_step()

    def swap(self, s: int):
        r = self.runs[s]
        report = swap_pass(self.views[s], self.spec, r.costs["swap"], r.cfg.top_k, r.cfg.swap_mode,
                           costs=False)
        _move_optimizer_state(self.stack, self.optimizer, self.spec, s, report.permutations)
        return report

    def state(self, s: int) -> dict:
        return {k: v.cpu() for k, v in self.stack.member_state(s).items()}

    def train_losses(self) -> list[float]:
        return [float(v) for v in self.losses.detach()]

    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        self.stack.eval()
        rows = [dict() for _ in self.runs]
        for split in ("train", "test"):
            X = self.X[split]
            out = (self.stack(X) if X.shape[1] <= 4096 else torch.cat(
                [self.stack(X[:, i:i + 4096]) for i in range(0, X.shape[1], 4096)], 1))
            losses = member_losses(out, self.target[split], self.runs[0].cfg.loss)
            for s, r in enumerate(self.runs):
                rows[s][f"{split}_loss"] = float(losses[s])
                rows[s][f"{split}_acc"] = (float((out[s].argmax(-1) == self.y[split][s]).float().mean())
                                           if r.objective.kind == "classification" else None)
        self.stack.train()
        for s, r in enumerate(self.runs):
            rows[s]["connection_cost"] = r.costs["local"].total(self.views[s])
        return rows

    def finite(self, s: int) -> bool:
        return True  # a non-finite member stops the stack at its next evaluation

    @torch.no_grad()
    def sync(self, s: int) -> None:
        """Copy member ``s``'s slices into its own model and optimizer."""
        r = self.runs[s]
        r.model.load_state_dict(self.stack.member_state(s))
        state = self.optimizer.state_dict()
        per = {i: {k: (v[s].clone() if torch.is_tensor(v) and v.dim() > 0 else
                       (v.clone() if torch.is_tensor(v) else v)) for k, v in st.items()}
               for i, st in state["state"].items()}
        r.optimizer.load_state_dict({"state": per, "param_groups": state["param_groups"]})


def _stack_optimizer_state(states: list[dict]) -> dict:
    first = states[0]
    stacked = {i: {k: (torch.stack([s["state"][i][k] for s in states])
                       if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
               for i, st in first["state"].items()}
    return {"state": stacked, "param_groups": first["param_groups"]}


def _grad_terms(stack: StackedMLP, runs: list[_Run]) -> list[tuple]:
    """Per charged tensor: the stacked tensor and each member's per-entry scale (bias on/off)."""
    terms = []
    for name, _ in runs[0].costs["local"].terms():
        on, off = [], []
        for r in runs:
            cost, no_bias, like = r.costs["grad"], r.costs["grad_no_bias"], r.model.get_parameter(name)
            kinds = dict(cost.terms()) if cost is not None else {}
            if name in kinds:
                on.append(torch.broadcast_to(torch.as_tensor(
                    cost._scale(r.model, name, kinds[name], like), dtype=like.dtype,
                    device=like.device), like.shape))
            else:
                on.append(torch.zeros_like(like))
            off.append(on[-1] if cost is not None and name in dict(no_bias.terms())
                       else torch.zeros_like(like))
        terms.append((stack.get(name), torch.stack(on), torch.stack(off)))
    return terms


def _scaled_terms(grad_terms, lams, bias_on) -> list[tuple]:
    """``(tensor, lambda_s * scale_s)`` for this step's lambdas and bias phases."""
    out = []
    for t, on, off in grad_terms:
        view = (-1,) + (1,) * (t.dim() - 1)
        lam = torch.tensor(lams, dtype=t.dtype, device=t.device).view(view)
        use = torch.tensor(bias_on, device=t.device).view(view)
        out.append((t, torch.where(use, on, off) * lam))
    return out


@torch.no_grad()
def _move_optimizer_state(stack, optimizer, spec, s: int, permutations: dict) -> None:
    """Permute member ``s``'s slice of every per-parameter state (Adam's moments) and grad."""
    for g, perm in permutations.items():
        perm = torch.as_tensor(perm, dtype=torch.long)
        if torch.equal(perm, torch.arange(len(perm))):
            continue
        for name, dim in spec.axes_of(g):
            if name not in stack.names:
                continue
            p = stack.get(name)
            tensors = [v for v in optimizer.state.get(p, {}).values()
                       if torch.is_tensor(v) and v.shape == p.shape]
            for v in tensors + ([p.grad] if p.grad is not None else []):
                part = v[s]
                part.copy_(part.index_select(dim, fold_index(perm.to(v.device), spec.groups[g].size,
                                                            part.shape[dim])))


class _FusedAdamWStep:
    """``optimizer.step()`` for one fused AdamW group, without the per-call bookkeeping: the
    same fused kernel on the optimizer's own state tensors (so checkpoints and state moves see
    them); anything unusual goes through ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.lists = optimizer, None
        group = optimizer.param_groups[0]
        self.ok = (len(optimizer.param_groups) == 1 and group.get("fused") is True
                   and not any(group.get(k) for k in ("amsgrad", "maximize", "capturable",
                                                      "differentiable"))
                   and group.get("decoupled_weight_decay", True)
                   and getattr(torch, "_fused_adamw_", None) is not None)

    def __call__(self) -> None:
        if not self.ok:
            return self.optimizer.step()
        if self.lists is None:
            params, state = self.optimizer.param_groups[0]["params"], self.optimizer.state
            if any(p not in state or "exp_avg" not in state[p] for p in params):
                return self.optimizer.step()  # the first step creates the state
            self.lists = (params, *([state[p][k] for p in params]
                                    for k in ("exp_avg", "exp_avg_sq", "step")))
        params, exp_avgs, exp_avg_sqs, steps = self.lists
        group = self.optimizer.param_groups[0]
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
                            amsgrad=False, lr=group["lr"], beta1=group["betas"][0],
                            beta2=group["betas"][1], weight_decay=group["weight_decay"],
                            eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
