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
sernn      yes (seRNN's term)  A            no
=========  ==================  ===========  =====

``sernn`` charges recurrent weights with seRNN's ``|W| * D * communicability`` and everything
else as ``bimt`` (see :mod:`bimt.communicability`).

The cost's gradient ``lambda * d * sign(w)`` is added to ``.grad`` directly (see
:meth:`ConnectionCost.add_grad_`); its value is computed only when logged. A run directory
holds the config as used, a checkpoint written atomically every ``checkpoint_every`` steps (so
``resume`` continues exactly where it stopped), ``history.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analysis.graph import count_nonzero, modularity
from ..core.crossings import crossings
from .config import LOSSES, METHODS, TrainConfig, lambda_at, milestone_schedule  # noqa: F401
from ..core.cost import ConnectionCost, CostSettings
from .devices import resolve_device
from ..core.fileio import write_json
from ..models.wiring import attach, has_wiring, wiring_of
from .runs import (  # noqa: F401  (load_model, load_checkpoint: also reachable from here)
    MODULE_TASK, _n_outputs, adopt_labels, claim_run_dir, load_checkpoint, load_model, save_checkpoint,
    say, spec_from_dict, targets, wiring_record,
    write_history_csv, write_metrics, write_plots,
)
from ..core.swap import swap_pass
from ..tasks import Data, Task, get_task

__all__ = ["TrainConfig", "TrainResult", "train", "METHODS", "TrainingDiverged", "lambda_at",
           "load_model"]



class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    *,
    model: nn.Module | None = None,
    data=None,
    tensorboard: str | os.PathLike | None = None,
    force: bool = False,
    device: str | torch.device | None = None,
    **overrides,
) -> TrainResult:
    """Train one model; with ``out``, write the run directory there.

    ``bimt.fit(task="two-moons", steps=3000)`` is the shortest call; a ``TrainConfig`` or a
    dict works too, and ``task`` may be a :class:`Task` object (your own task).

    ``bimt.fit(model=module, data=(X_train, y_train, X_test, y_test), loss="mse", ...)`` trains
    your own module instead (it needs a wiring: :func:`bimt.attach`); ``data`` may also be
    ``(train_loader, test_loader)`` (``DataLoader`` s of ``(x, y)`` batches: one batch a step,
    each epoch's order drawn from the run's seed). ``loss`` is ``"mse"``, ``"ce"`` or a function
    ``loss(output, target)``. The cost settings are the module's (``module.bimt.settings``);
    ``A=...`` and the like given here replace them.

    ``resume=True`` continues from ``out/checkpoint.pt`` with the config saved there (for your
    own module: pass the same ``model`` class, fresh, and ``data`` again), and gives exactly the
    numbers an uninterrupted run would; settings that differ from the saved ones are refused.
    A run directory is held by one writer at a time, and a fresh run refuses a directory that
    holds another run unless ``force=True`` (:func:`bimt.runs.claim_run_dir`).
    ``tensorboard=DIR`` also logs to TensorBoard (:mod:`bimt.tblog`).
    numbers an uninterrupted run would. ``device``: ``cpu`` (default), ``cuda``, ``cuda:1`` or
    ``auto``. Under ``torchrun`` (a process group is running) the run is data-parallel: see
    :mod:`bimt.distributed`.
    """
    task, loss_fn = None, None
    if callable(overrides.get("loss")):
        loss_fn = overrides.pop("loss")
        overrides["loss"] = "custom"
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
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    asked = _asked_for(config, overrides)
    config = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    run_dir = Path(out) if out is not None else None
    checkpoint = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory (out=...)")
        if not run_dir.is_dir():
            raise FileNotFoundError(f"the run directory {run_dir} does not exist; nothing to resume")
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
        saved = TrainConfig.from_dict(checkpoint["config"])
        differ = [f"{k}={getattr(config, k)!r} (the run has {getattr(saved, k)!r})"
                  for k in asked if getattr(config, k) != getattr(saved, k)]
        if differ:
            raise ValueError(f"--resume continues {run_dir} with its saved settings, which differ "
                             f"from the ones given: {'; '.join(differ)}")
        config = saved
        if config.task == MODULE_TASK and model is None:
            raise ValueError(f"{run_dir} trained your own module: resume with fit(model=<a fresh "
                             "instance>, data=<the same data>, out=..., resume=True)")
    if config.loss == "custom" and loss_fn is None:
        raise ValueError("this run uses a loss function of yours: pass it again as loss=fn")
    if model is not None:
        if checkpoint is not None and not has_wiring(model) and "wiring" in checkpoint:
            record = checkpoint["wiring"]  # a fresh instance: the run's own wiring
            attach(model, spec_from_dict(record["spec"]), CostSettings(**record["settings"]),
                   view=record["view"], input_labels=record["input_labels"],
                   output_labels=record["output_labels"])
        wiring = wiring_of(model)
        config = _with_settings_of(config, wiring)
        task = _module_task(model, data, config.loss)
    task = task or get_task(config.task)
    cfg = config.resolved(task)
    if model is not None:
        wiring.settings = cfg.cost_settings(bias=wiring.settings.bias)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        from .distributed import is_main, local_device

        device = local_device(resolve_device(device))
        if run_dir is None or not is_main():  # one rank writes (and holds) the run directory
            return _train(cfg, config, task, run_dir, checkpoint, progress, plots, loss_fn,
                          tensorboard, device)
        with claim_run_dir(run_dir, dataclasses.asdict(config), resume=resume, force=force):
            return _train(cfg, config, task, run_dir, checkpoint, progress, plots, loss_fn,
                          tensorboard, device)
    finally:
        torch.set_num_threads(threads)


def _asked_for(config, overrides: dict) -> list[str]:
    """The config fields the caller set explicitly (compared with a resumed run's own)."""
    fields = set(overrides) - {"task"} if "task" in overrides and overrides["task"] == MODULE_TASK \
        else set(overrides)
    if isinstance(config, TrainConfig):
        default = TrainConfig()
        fields |= {f.name for f in dataclasses.fields(config)
                   if getattr(config, f.name) != getattr(default, f.name)}
        fields.add("task")
    return sorted(fields)


def _with_settings_of(config: TrainConfig, wiring) -> TrainConfig:
    """The config with its unset cost settings taken from the module's wiring."""
    have = wiring.settings.to_dict()
    return dataclasses.replace(config, **{k: have[k] for k in ("A", "y_star", "p", "reduction",
                                                                  "distance_free")
                                          if getattr(config, k) is None})


def _module_task(model: nn.Module, data, loss: str | None) -> Task:
    """A :class:`Task` around the user's module and data (it hands out that very module)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise ValueError("data must be (X_train, y_train, X_test, y_test) or "
                         f"(train_loader, test_loader), got {type(data).__name__}")
    if len(data) == 2:
        for what, loader in zip(("train", "test"), data):
            if not isinstance(loader, torch.utils.data.DataLoader):
                raise ValueError(f"the {what} loader must be a torch DataLoader, got "
                                 f"{type(loader).__name__}")
        d = Data(data[0], None, data[1], None, "DataLoader")
        kind = "classification" if loss == "ce" else "regression"
    else:
        dtype = next(iter(model.parameters())).dtype
        as_t = lambda a: (lambda t: t.to(dtype) if t.is_floating_point() else t)(torch.as_tensor(a))
        d = Data(*(as_t(a) for a in data), "arrays")
        if len(d.X_train) != len(d.y_train) or len(d.X_test) != len(d.y_test):
            raise ValueError(f"{len(d.X_train)} training inputs for {len(d.y_train)} targets, "
                             f"{len(d.X_test)} test inputs for {len(d.y_test)} targets")
        kind = "classification" if loss == "ce" or not d.y_train.is_floating_point() else "regression"
    return Task(MODULE_TASK, f"your {type(model).__name__}", kind, lambda seed, data_dir=None: d,
                lambda config: model)


class _Batches:
    """The batch of each step, reproducible from (seed, step) alone, so a resumed run draws
    exactly what an uninterrupted one would."""

    def __init__(self, X, y, batch_size, seed):
        self.X, self.y, self.batch_size, self.seed = X, y, batch_size, seed
        self.loader = X if isinstance(X, torch.utils.data.DataLoader) else None
        self._it, self._at = None, None
        self._gen = torch.Generator()

    def __call__(self, step: int):
        if self.loader is not None:
            return self._from_loader(step)
        n = len(self.X)
        if self.batch_size is None or self.batch_size >= n:
            return self.X, self.y
        self._gen.manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(n, (self.batch_size,), generator=self._gen)
        idx = idx.to(self.X.device)
        return self.X[idx], self.y[idx]

    def _from_loader(self, step: int):
        per_epoch = len(self.loader)
        epoch, k = divmod(step, per_epoch)
        if self._at != (epoch, k):
            with torch.random.fork_rng(devices=[]):  # each epoch's order from (seed, epoch) only
                torch.manual_seed(self.seed * 1_000_003 + epoch)
                self._it = iter(self.loader)
                batch = next(self._it)
            for _ in range(k):
                batch = next(self._it)
        else:
            batch = next(self._it)
        self._at = (epoch, k + 1) if k + 1 < per_epoch else None
        xb, yb = batch
        return xb, yb


def build_run(cfg: TrainConfig, task: Task, device=None) -> tuple[nn.Module, Data]:
    """The seeded model and data of a resolved config, as the trainer starts them.

    Shared with the batched trainer (``bimt.batched``), so a seed gets the same data and
    initialisation however it is trained.
    """
    _seed_everything(cfg.seed)
    data = dataclasses.replace(task.make_data(cfg.seed, cfg.data_dir))
    # Built in the run's dtype, as the float64 notebooks build theirs (a float64 draw is not a
    # float32 draw cast up), so seed N starts from the notebook's seed-N weights.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, cfg.dtype))
    try:
        model = task.make_model(dataclasses.asdict(cfg))
    finally:
        torch.set_default_dtype(previous)
    wiring = wiring_of(model)
    if cfg.dtype != "float32" or device is not None:
        dtype = getattr(torch, cfg.dtype)
        model = model.to(device=device, dtype=dtype)
        cast = lambda t: (t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                          if torch.is_tensor(t) else t)
        data.X_train, data.y_train = cast(data.X_train), cast(data.y_train)
        data.X_test, data.y_test = cast(data.X_test), cast(data.y_test)
        data.y_train_fit = cast(data.y_train_fit)
    adopt_labels(wiring, data)
    _check_top_k(wiring.spec, cfg)
    return model, data


def run_costs(model, cfg: TrainConfig) -> dict:
    """The costs a run uses, all derived from the model's own settings: ``local`` (reported),
    ``grad`` / ``grad_no_bias`` (its gradient; ``None`` for vanilla), ``swap`` (judges swaps;
    ``None`` when the method never swaps) and ``bias_from`` (the step biases start paying)."""
    wiring = wiring_of(model)
    spec, settings = wiring.spec, wiring.settings
    charged = cfg.method != "vanilla"
    swaps = cfg.method in ("l1-swap", "bimt")
    local_cost = wiring.connection_cost  # what the run is charged (reported as connection_cost)
    grad_settings = settings.replace(A=0.0) if cfg.method in ("l1", "l1-swap") else settings
    cost_class = ConnectionCost
    if cfg.method == "sernn":
        from ..core.communicability import CommunicabilityCost as cost_class
    grad_cost = cost_class(spec, grad_settings)
    grad_cost_no_bias = cost_class(spec, grad_settings.replace(bias=False))
    # swaps are judged by the full local cost: a distance-free layer only shapes the gradient
    # (as in the reference code, so MNIST's output ring can still rearrange its classes)
    # (S4's notebook judges swaps with A = 2 while training with A = 1: ``swap_A``)
    swap_cost = ConnectionCost(spec, settings.replace(distance_free=(), A=cfg.swap_A))
    return dict(local=local_cost, grad=grad_cost if charged else None,
                grad_no_bias=grad_cost_no_bias if charged else None,
                swap=swap_cost if swaps else None,
                bias_from=int(round(cfg.bias_free_fraction * cfg.steps)))


def _train(cfg, config, task, run_dir, checkpoint, progress, plots, custom_loss=None,
           tensorboard=None, device=None) -> TrainResult:
    from . import distributed

    model, data = build_run(cfg, task, device)
    wiring = wiring_of(model)
    optimizer = _optimizer(model, cfg)
    spec = wiring.spec
    costs = run_costs(model, cfg)
    charged, swaps = costs["grad"] is not None, costs["swap"] is not None
    local_cost, grad_cost, grad_cost_no_bias = costs["local"], costs["grad"], costs["grad_no_bias"]
    swap_cost, bias_from = costs["swap"], costs["bias_from"]
    ddp = distributed.wrap(model)  # the model itself unless torch.distributed is running
    if not distributed.is_main():
        run_dir = None  # one rank writes the run directory

    loss_fn = custom_loss or (nn.MSELoss() if cfg.loss == "mse" else nn.CrossEntropyLoss())
    predict = task.predict or (lambda o: o)
    # what the training loss compares: the reported quantity, unless the task trains on more
    # (in-context: both query positions, as its notebook)
    fit = getattr(data, "y_train_fit", None)
    fit_predict = (getattr(task, "predict_fit", None) or predict) if fit is not None else predict
    n_out = _n_outputs(wiring)
    _check_fits(model, data, cfg, loss_fn, predict, n_out)
    batches = _Batches(data.X_train, targets(data.y_train if fit is None else fit, cfg.loss, model,
                                             n_out), cfg.batch_size, cfg.seed)

    history: list[dict] = []
    step = 0
    snapshots: list = []
    elapsed = 0.0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{run_dir / 'checkpoint.pt'} does not fit the model its config "
                             f"builds ({first})") from None
        step, history, elapsed = checkpoint["step"], checkpoint["history"], checkpoint["wall_s"]
        snapshots = checkpoint.get("snapshots", [])
        torch.set_rng_state(checkpoint["rng"]["torch"])
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", dataclasses.asdict(config))
        write_json(run_dir / "resolved_config.json", dataclasses.asdict(cfg))  # every value used
    extra = {"wiring": wiring_record(wiring)} if cfg.task == MODULE_TASK else None
    snapshot_every = max(1, cfg.steps // cfg.animate_frames)
    if cfg.animate and step == 0:
        snapshots.append(_snapshot(model, 0))

    tb = None
    if tensorboard is not None and distributed.is_main():
        from .tblog import TensorBoardLogger

        tb = TensorBoardLogger(tensorboard)
    bar = _progress(cfg, step, progress)
    start = time.perf_counter() - elapsed
    model.train()
    while step < cfg.steps:
        xb, yb = batches(step)
        if batches.loader is not None:
            if device is not None:  # a DataLoader's batches come on the CPU
                xb, yb = xb.to(device), yb.to(device)
            yb = targets(yb, cfg.loss, model, n_out)
        xb, yb = distributed.shard(xb, yb)  # this rank's part of the batch (all of it alone)
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(fit_predict(ddp(xb)), yb)
        loss.backward()
        lam = lambda_at(cfg.lambda_schedule, step, cfg.steps) if charged else 0.0
        if lam:
            (grad_cost if step >= bias_from else grad_cost_no_bias).add_grad_(model, lam)
        optimizer.step()
        step += 1
        if swaps and step % cfg.swap_every == 0:
            swapper = distributed.swap_pass if distributed.active() else swap_pass
            swapped = swapper(model, spec, swap_cost, cfg.top_k, cfg.swap_mode, optimizer)
            if tb is not None:
                tb.swaps(step, swapped)
        if cfg.animate and step % snapshot_every == 0:
            snapshots.append(_snapshot(model, step))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            train_loss = float(loss.detach())
            if not math.isfinite(train_loss):
                bar.close()
                raise _diverged(f"the training loss became {train_loss}", step, lam, cfg, run_dir)
            row = _evaluate(model, data, cfg, task, loss_fn, predict, local_cost, n_out)
            row.update(step=step, lam=lam, train_loss_batch=train_loss,
                       wall_s=round(time.perf_counter() - start, 3))
            history.append(row)
            if tb is not None:
                tb.evaluation(step, row, model)
            bar.set_postfix_str(_postfix(row), refresh=False)
        bar.update(1)
        if run_dir is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            if not _all_finite(model, loss_fn, fit_predict, xb, yb):  # keep the last good one
                bar.close()
                raise _diverged("the parameters are no longer finite, or their loss is not",
                                step, lam, cfg, run_dir)
            save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, step, history,
                            dataclasses.asdict(config), time.perf_counter() - start, snapshots,
                            extra)
    bar.close()
    if tb is not None:
        tb.close()
    wall = time.perf_counter() - start
    say(progress, "final evaluation and modularity")
    metrics = final_metrics(model, data, cfg, task, loss_fn, predict, local_cost, wall, n_out)
    result = TrainResult(model, metrics, history, cfg, data, run_dir, snapshots)
    if run_dir is not None:
        write_history_csv(run_dir / "history.csv", history)
        if plots:
            write_plots(result, progress)
        write_metrics(run_dir, metrics)  # last: it marks the run complete
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


@torch.no_grad()
def _check_fits(model, data, cfg, loss_fn, predict, n_out) -> None:
    """A clear error, before anything is written, when the model does not fit the data."""
    import warnings

    X, y = data.X_train, data.y_train
    if not (torch.is_tensor(X) and torch.is_tensor(y)):  # data loaders: checked as they come
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # MSELoss warns, then broadcasts, on a shape mismatch
            widths = getattr(model, "widths", None)
            if widths and X.is_floating_point() and X.ndim == 2 and widths[0] != X.shape[1]:
                raise ValueError(f"{widths[0]} inputs for data with {X.shape[1]} features")
            out = model(X[:2])
            loss_fn(predict(out), targets(y[:2], cfg.loss, model, n_out))
            if data.output_labels is not None and len(data.output_labels) != out.shape[-1]:
                raise ValueError(f"{out.shape[-1]} outputs for {len(data.output_labels)} targets")
    except (RuntimeError, IndexError, ValueError, UserWarning) as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"the model (widths {cfg.widths}) does not fit {cfg.task}'s data "
                         f"(inputs of shape {tuple(X.shape[1:])}): {reason}") from None


def _check_top_k(spec, cfg) -> None:
    if cfg.top_k is None:
        return
    sizes = [g.size for g in spec.groups.values() if not g.frozen]
    if sizes and cfg.top_k > max(sizes):
        raise ValueError(
            f"top_k={cfg.top_k} is larger than every swappable layer (largest: {max(sizes)} "
            "neurons); smaller layers use all their neurons"
        )


def _optimizer(model, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0, fused=True)
    except (RuntimeError, TypeError):  # fused kernels missing on this device / build
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _snapshot(model, step: int):
    return (step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


@torch.no_grad()
def _evaluate(model, data, cfg, task, loss_fn, predict, cost, n_out=None) -> dict:
    model.eval()
    row = {}
    for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
        out, y = _outputs(model, X, y)
        out = predict(out)
        row[f"{split}_loss"] = float(loss_fn(out, targets(y, cfg.loss, model, n_out)))
        row[f"{split}_acc"] = (
            float((out.argmax(-1) == y).float().mean()) if task.kind == "classification" else None
        )
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


def final_metrics(model, data, cfg, task, loss_fn, predict, cost, wall: float, n_out=None) -> dict:
    row = _evaluate(model, data, cfg, task, loss_fn, predict, cost, n_out)
    params = [p.detach() for p in model.parameters()]
    try:
        q = modularity(model)
    except ValueError:  # every weight zero
        q = None
    return {
        "task": cfg.task, "method": cfg.method, "seed": cfg.seed, "steps": cfg.steps,
        "train_loss": row["train_loss"], "test_loss": row["test_loss"],
        "train_acc": row["train_acc"], "test_acc": row["test_acc"],
        "connection_cost": row["connection_cost"], "modularity": q,
        **{k: v for k, v in crossings(model, wiring_of(model).spec).items() if k != "n_modules"},
        "n_params": int(sum(p.numel() for p in params)),
        "n_nonzero_params": count_nonzero(params),
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


