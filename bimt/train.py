"""Training with BIMT: task loss + lambda(t) * connection cost, and a swap pass every S steps.

The five methods of the paper's ablations are presets of one loop:

=========  ==================  ===========  =====
method     cost in gradient    A in grad.   swaps
=========  ==================  ===========  =====
vanilla    no                  -            no
l1         yes                 0            no
l1-local   yes                 A            no
l1-swap    yes                 0            yes (judged with A)
bimt       yes                 A            yes
=========  ==================  ===========  =====

The cost's gradient ``lambda * d * sign(w)`` is added to ``.grad`` directly (see
:meth:`ConnectionCost.add_grad_`); its value is computed only when logged. A run directory
holds the config as used, a checkpoint written atomically every ``checkpoint_every`` steps (so
``resume`` continues exactly where it stopped), ``history.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cost import ConnectionCost
from .fileio import atomic_write_bytes, write_json
from .swap import SWAP_MODES, swap_pass
from .tasks import Data, Task, get_task

__all__ = ["TrainConfig", "TrainResult", "train", "METHODS", "TrainingDiverged", "lambda_at"]

METHODS = ("vanilla", "l1", "l1-local", "l1-swap", "bimt")
LOSSES = ("mse", "ce")
DTYPES = ("float32", "float64")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything a run needs; unset fields (``None``) take the task's defaults."""

    task: str = "two-moons"
    method: str = "bimt"
    seed: int = 0
    steps: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    batch_size: int | None = None  # None: full batch
    loss: str | None = None  # mse | ce
    widths: list[int] | None = None
    lambda_schedule: list[list[float]] | None = None  # [[value, steps], ...]
    lambda_milestones: list[list[float]] | None = None  # [[fraction, factor], ...] on the first value
    A: float | None = None
    y_star: float | None = None
    p: float = 1.0
    reduction: str | None = None  # sum | mean
    last_distance_free: bool | None = None
    bias_free_fraction: float | None = None  # biases uncharged for this fraction of the run
    top_k: int | None = None
    swap_every: int | None = None
    swap_mode: str = "greedy"
    eval_every: int | None = None
    checkpoint_every: int | None = None
    animate: bool = False
    animate_frames: int = 40
    data_dir: str | None = None
    threads: int = 1  # torch threads while training; small networks run fastest on one
    dtype: str = "float32"  # or "float64", as some reference notebooks train

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                f"{', '.join(sorted(names))}"
            )
        return cls(**d)

    def resolved(self, task: Task | None = None) -> TrainConfig:
        """A copy with the task's defaults filled in, rescaled to ``steps``, and checked."""
        task = task or get_task(self.task)
        base = dict(
            steps=1000, lr=1e-3, loss="mse", lambda_schedule=[[1e-3, 1]], A=1.0, y_star=1.0,
            reduction="sum", last_distance_free=False, bias_free_fraction=0.0, top_k=None,
            swap_every=200,
        )
        base.update(task.defaults)
        out = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            if getattr(out, f.name) is None and f.name in base:
                setattr(out, f.name, copy.deepcopy(base[f.name]))
        if out.lambda_milestones is not None:
            out.lambda_schedule = milestone_schedule(out.lambda_schedule[0][0], out.lambda_milestones)
            out.lambda_milestones = None
        if out.eval_every is None:
            out.eval_every = max(1, min(out.steps // 20 or 1, base.get("eval_every", 500)))
        if out.checkpoint_every is None:
            out.checkpoint_every = max(1, min(out.steps, 2000))
        out.validate()
        return out

    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("steps", "batch_size", "top_k", "swap_every", "eval_every",
                     "checkpoint_every", "animate_frames", "threads"):
            positive_int(name)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; allowed: {', '.join(LOSSES)}")
        if self.swap_mode not in SWAP_MODES:
            raise ValueError(f"unknown swap mode {self.swap_mode!r}; allowed: {', '.join(SWAP_MODES)}")
        for name in ("A", "y_star", "lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr is not None and self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.p is not None and self.p < 1:
            raise ValueError(f"p must be >= 1, got {self.p}")
        if self.bias_free_fraction is not None and not 0 <= self.bias_free_fraction <= 1:
            raise ValueError(f"bias_free_fraction must be in [0, 1], got {self.bias_free_fraction}")
        if self.lambda_schedule is not None:
            if not self.lambda_schedule:
                raise ValueError("lambda_schedule must list at least one [value, steps] phase")
            for phase in self.lambda_schedule:
                if len(phase) != 2:
                    raise ValueError(f"each lambda phase is [value, steps], got {phase!r}")
                value, length = phase
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"lambda must be a finite number >= 0, got {value!r}")
                if length <= 0:
                    raise ValueError(f"a lambda phase must last > 0 steps, got {length!r}")


def milestone_schedule(start: float, milestones) -> list[list[float]]:
    """The paper's multiplicative form as phases: ``start``, times ``factor`` from ``fraction`` on.

    ``milestone_schedule(1e-3, [[0.25, 10], [0.75, 0.1]])`` is ``1e-3, 1e-2, 1e-3`` for a quarter,
    a half and a quarter of the run.
    """
    points = sorted((float(f), float(k)) for f, k in milestones)
    for f, k in points:
        if not 0 < f < 1 or not math.isfinite(k) or k < 0:
            raise ValueError(
                f"a lambda milestone is [fraction in (0, 1), factor >= 0], got [{f}, {k}]"
            )
    phases, value, at = [], float(start), 0.0
    for f, k in points:
        if f > at:
            phases.append([value, f - at])
        value, at = value * k, f
    phases.append([value, 1.0 - at])
    return phases


def lambda_at(schedule, step: int, total_steps: int) -> float:
    """Lambda at ``step``; phases are stretched in proportion when they do not sum to the run."""
    span = sum(length for _, length in schedule)
    position = step * span / total_steps
    for value, length in schedule:
        if position < length:
            return float(value)
        position -= length
    return float(schedule[-1][0])


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict
    history: list[dict]
    config: TrainConfig
    data: Data
    run_dir: Path | None = None
    snapshots: list = field(default_factory=list)


# -- the loop ------------------------------------------------------------------------------
def train(
    config: TrainConfig | dict | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    plots: bool = True,
    **overrides,
) -> TrainResult:
    """Train one model; with ``out``, write the run directory there.

    ``bimt.fit(task="two-moons", steps=3000)`` is the shortest call; a ``TrainConfig`` or a
    dict works too, and ``task`` may be a :class:`Task` object (your own task). ``resume=True``
    continues from ``out/checkpoint.pt`` with the config saved there, and gives exactly the
    numbers an uninterrupted run would.
    """
    task = None
    if isinstance(overrides.get("task"), Task):
        task = overrides["task"]
        overrides["task"] = task.name
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    run_dir = Path(out) if out is not None else None
    checkpoint = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory (out=...)")
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
        config = TrainConfig.from_dict(checkpoint["config"])
    task = task or get_task(config.task)
    cfg = config.resolved(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, config, task, run_dir, checkpoint, progress, plots)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, config, task, run_dir, checkpoint, progress, plots) -> TrainResult:
    _seed_everything(cfg.seed)
    data = task.make_data(cfg.seed, cfg.data_dir)
    model = task.make_model(dataclasses.asdict(cfg))
    if cfg.dtype != "float32":
        dtype = getattr(torch, cfg.dtype)
        model = model.to(dtype)
        cast = lambda t: t.to(dtype) if t.is_floating_point() else t
        data.X_train, data.y_train = cast(data.X_train), cast(data.y_train)
        data.X_test, data.y_test = cast(data.X_test), cast(data.y_test)
    if getattr(model, "input_labels", None) is None and data.input_labels is not None:
        model.input_labels = data.input_labels
    if getattr(model, "output_labels", None) is None and data.output_labels is not None:
        model.output_labels = data.output_labels
    _check_top_k(model, cfg)
    optimizer = _optimizer(model, cfg)

    charged = cfg.method != "vanilla"
    grad_A = 0.0 if cfg.method in ("l1", "l1-swap") else cfg.A
    swaps = cfg.method in ("l1-swap", "bimt")
    settings = dict(y_star=cfg.y_star, p=cfg.p, reduction=cfg.reduction,
                    distance_free=_distance_free(model, cfg))
    # what the run is charged (reported as connection_cost), and what its gradient follows
    local_cost = ConnectionCost(model.spec, A=cfg.A, **settings)
    grad_cost = ConnectionCost(model.spec, A=grad_A, **settings)
    grad_cost_no_bias = ConnectionCost(model.spec, A=grad_A, bias=False, **settings)
    # swaps are judged by the full local cost: a distance-free layer only shapes the gradient
    # (as in the reference code, so MNIST's output ring can still rearrange its classes)
    swap_cost = ConnectionCost(model.spec, A=cfg.A, y_star=cfg.y_star, p=cfg.p,
                               reduction=cfg.reduction)
    bias_from = int(round(cfg.bias_free_fraction * cfg.steps))

    loss_fn = nn.MSELoss() if cfg.loss == "mse" else nn.CrossEntropyLoss()
    predict = task.predict or (lambda o: o)
    X_tr, y_tr = data.X_train, _targets(data.y_train, cfg, model)
    n_train = len(X_tr)

    history: list[dict] = []
    step = 0
    snapshots: list = []
    elapsed = 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, history, elapsed = checkpoint["step"], checkpoint["history"], checkpoint["wall_s"]
        snapshots = checkpoint.get("snapshots", [])
        torch.set_rng_state(checkpoint["rng"]["torch"])
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", dataclasses.asdict(config))
    snapshot_every = max(1, cfg.steps // cfg.animate_frames)
    if cfg.animate and step == 0:
        snapshots.append(_snapshot(model, 0))

    bar = _progress(cfg, step, progress)
    start = time.perf_counter() - elapsed
    model.train()
    batch_gen = torch.Generator()
    while step < cfg.steps:
        if cfg.batch_size is None or cfg.batch_size >= n_train:
            xb, yb = X_tr, y_tr
        else:
            batch_gen.manual_seed(cfg.seed * 1_000_003 + step)
            idx = torch.randint(n_train, (cfg.batch_size,), generator=batch_gen)
            xb, yb = X_tr[idx], y_tr[idx]
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(predict(model(xb)), yb)
        loss.backward()
        lam = lambda_at(cfg.lambda_schedule, step, cfg.steps) if charged else 0.0
        if lam:
            (grad_cost if step >= bias_from else grad_cost_no_bias).add_grad_(model, lam)
        optimizer.step()
        step += 1
        if swaps and step % cfg.swap_every == 0:
            swap_pass(model, model.spec, swap_cost, cfg.top_k, cfg.swap_mode, optimizer)
        if cfg.animate and step % snapshot_every == 0:
            snapshots.append(_snapshot(model, step))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            train_loss = float(loss.detach())
            if not math.isfinite(train_loss):
                bar.close()
                raise _diverged(f"the training loss became {train_loss}", step, lam, cfg, run_dir)
            row = _evaluate(model, data, cfg, task, loss_fn, predict, local_cost)
            row.update(step=step, lam=lam, train_loss_batch=train_loss,
                       wall_s=round(time.perf_counter() - start, 3))
            history.append(row)
            bar.set_postfix_str(_postfix(row), refresh=False)
        bar.update(1)
        if run_dir is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            if not _all_finite(model, loss_fn, predict, xb, yb):  # keep the last good one
                bar.close()
                raise _diverged("the parameters are no longer finite, or their loss is not",
                                step, lam, cfg, run_dir)
            save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, step, history,
                            dataclasses.asdict(config), time.perf_counter() - start, snapshots)
    bar.close()
    wall = time.perf_counter() - start
    metrics = final_metrics(model, data, cfg, task, loss_fn, predict, local_cost, wall)
    result = TrainResult(model, metrics, history, cfg, data, run_dir, snapshots)
    if run_dir is not None:
        write_history_csv(run_dir / "history.csv", history)
        if plots:
            write_plots(result)
        write_json(run_dir / "metrics.json", metrics)  # last: it marks the run complete
    return result


@torch.no_grad()
def _all_finite(model, loss_fn, predict, xb, yb) -> bool:
    """Finite parameters whose loss on the last batch is finite too (worth checkpointing)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return False
    return math.isfinite(float(loss_fn(predict(model(xb)), yb)))


def _diverged(what: str, step: int, lam: float, cfg, run_dir) -> TrainingDiverged:
    kept = run_dir / "checkpoint.pt" if run_dir is not None else None
    where = (f"the last good checkpoint is kept at {kept}" if kept is not None and kept.exists()
             else "no checkpoint was written")
    return TrainingDiverged(
        f"{what} at step {step} (lambda={lam:g}, lr={cfg.lr:g}); {where}; try a smaller lr or lambda"
    )


def _targets(y: torch.Tensor, cfg: TrainConfig, model) -> torch.Tensor:
    if cfg.loss == "mse" and not y.is_floating_point():
        n = model.widths[-1] if hasattr(model, "widths") else int(y.max()) + 1
        return nn.functional.one_hot(y, n).to(next(model.parameters()).dtype)
    return y


def _distance_free(model, cfg) -> list[str]:
    if not cfg.last_distance_free:
        return []
    return [model.spec.weights()[-1]]


def _check_top_k(model, cfg) -> None:
    if cfg.top_k is None:
        return
    sizes = [g.size for g in model.spec.groups.values() if not g.frozen]
    if sizes and cfg.top_k > max(sizes):
        raise ValueError(
            f"top_k={cfg.top_k} is larger than every swappable layer (largest: {max(sizes)} "
            "neurons); smaller layers use all their neurons"
        )


def _optimizer(model, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # fused kernels missing on this device / build
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _snapshot(model, step: int):
    return (step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


@torch.no_grad()
def _evaluate(model, data, cfg, task, loss_fn, predict, cost) -> dict:
    model.eval()
    row = {}
    for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
        out = predict(_batched(model, X))
        row[f"{split}_loss"] = float(loss_fn(out, _targets(y, cfg, model)))
        row[f"{split}_acc"] = (
            float((out.argmax(-1) == y).float().mean()) if task.kind == "classification" else None
        )
    row["connection_cost"] = cost.total(model)
    model.train()
    return row


def _batched(model, X, batch: int = 4096):
    if len(X) <= batch:
        return model(X)
    return torch.cat([model(X[i:i + batch]) for i in range(0, len(X), batch)])


def final_metrics(model, data, cfg, task, loss_fn, predict, cost, wall: float) -> dict:
    from .analysis import modularity

    row = _evaluate(model, data, cfg, task, loss_fn, predict, cost)
    params = [p.detach() for p in model.parameters()]
    return {
        "task": cfg.task, "method": cfg.method, "seed": cfg.seed, "steps": cfg.steps,
        "train_loss": row["train_loss"], "test_loss": row["test_loss"],
        "train_acc": row["train_acc"], "test_acc": row["test_acc"],
        "connection_cost": row["connection_cost"], "modularity": modularity(model),
        "n_params": int(sum(p.numel() for p in params)),
        "n_nonzero_params": int(sum((p.abs() > 1e-3 * p.abs().max()).sum() for p in params if p.numel())),
        "wall_s": round(wall, 3), "data_source": data.source,
    }


def _postfix(row: dict) -> str:
    parts = [f"loss {row['train_loss']:.3g}", f"test {row['test_loss']:.3g}"]
    if row.get("test_acc") is not None:
        parts.append(f"acc {row['test_acc']:.3f}")
    parts.append(f"cost {row['connection_cost']:.3g}")
    return ", ".join(parts)


def _progress(cfg, initial, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=initial, disable=not enabled,
                desc=f"{cfg.task} [{cfg.method}, seed {cfg.seed}]", unit="step",
                mininterval=0.5, dynamic_ncols=True)


# -- files ---------------------------------------------------------------------------------
def write_history_csv(path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(history[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write_bytes(path, buf.getvalue().encode())


def save_checkpoint(path, model, optimizer, step, history, config, wall_s, snapshots=()) -> None:
    state = {
        "format": "bimt-checkpoint-1", "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "step": step, "history": history,
        "config": config, "wall_s": wall_s, "rng": {"torch": torch.get_rng_state()},
        "snapshots": list(snapshots),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    """Read a checkpoint without executing anything from it (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable bimt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != "bimt-checkpoint-1":
        raise ValueError(f"{path} is not a bimt checkpoint (missing format marker)")
    return state


def load_model(run_dir: str | os.PathLike) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory, with its resolved config."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(state["config"])
    task = get_task(config.task)
    cfg = config.resolved(task)
    model = task.make_model(dataclasses.asdict(cfg)).to(getattr(torch, cfg.dtype))
    model.load_state_dict(state["model"])
    data_labels = task.make_data(cfg.seed, cfg.data_dir)
    if getattr(model, "input_labels", None) is None:
        model.input_labels = data_labels.input_labels
    if getattr(model, "output_labels", None) is None:
        model.output_labels = data_labels.output_labels
    model.eval()
    return model, cfg


def write_plots(result: TrainResult) -> None:
    """graph.png/svg (3D for grid layers), decision_boundary.png, evolution.gif."""
    from . import viz

    run_dir, model = result.run_dir, result.model
    viz.save_figure(model.plot(), run_dir / "graph", formats=("png", "svg"))
    d = result.data
    two_input_classifier = (
        d.X_train.ndim == 2 and d.X_train.shape[1] == 2 and d.X_train.is_floating_point()
        and not d.y_train.is_floating_point()
    )
    if two_input_classifier:
        fig = viz.plot_decision_boundary(model, d.X_test, d.y_test)
        viz.save_figure(fig, run_dir / "decision_boundary", formats=("png",))
    if result.config.animate and result.snapshots:
        boundary = (d.X_test, d.y_test) if two_input_classifier else None
        viz.write_animation(model, result.snapshots, run_dir / "evolution.gif",
                            decision_boundary_data=boundary)
