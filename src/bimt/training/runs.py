"""Run directories: the one home of what a run leaves on disk and how it is read back.

A run directory holds ``config.json`` (the config as given), ``checkpoint.pt`` (written
atomically; read with ``weights_only=True``, so loading never executes code from the file),
``history.csv``, ``metrics.json`` (written last: it marks the run complete) and the figures.
A run of a user's own module (``bimt.fit(model=...)``) also stores the module's spec, cost
settings and view in the checkpoint, so :func:`load_model` can rebuild its wiring around the
saved weights without the module's code (enough to draw and analyse the graph), or load the
weights into a fresh instance you pass.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
from dataclasses import dataclass
import fcntl
import io
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig, read_config_file
from ..core.settings import COST_FIELDS, CostSettings
from ..core.fileio import atomic_write_bytes, write_json
from ..models.wiring import Wiring, attach, has_wiring, wiring_of
from ..core.spec import Group, PermutationSpec
from ..tasks import get_task

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_model", "write_history_csv", "write_metrics",
    "write_plots", "spec_to_dict", "spec_from_dict", "WeightsOnly", "MODULE_TASK", "targets",
    "analyze_run", "run_evaluator", "claim_run_dir", "adopt_labels", "RunDirBusy", "RUN_FILES",
]

#: The ``task`` of a run that trained a user's module (``bimt.fit(model=...)``).
MODULE_TASK = "module"
FORMAT = "bimt-checkpoint-1"


#: What a run (and ``bimt analyze`` / ``bimt view`` on it) writes into its directory.
RUN_FILES = (
    "config.json", "resolved_config.json", "metrics.json", "history.csv", "checkpoint.pt",
    "graph.png", "graph.svg", "decision_boundary.png", "evolution.gif", "analysis.json",
    "analysis.md", "pruning_frontier.png", "pruning_frontier.csv", "knockout.md", "report.html",
    "circuit.json", "circuit.png",
)
LOCK_NAME = ".bimt.lock"


class RunDirBusy(ValueError):
    """Another process is writing the run directory."""


# -- claiming a run directory -------------------------------------------------------------
@contextlib.contextmanager
def claim_run_dir(run_dir, config: dict, *, resume: bool = False, force: bool = False):
    """Hold ``run_dir`` for one writer while a run writes it.

    An advisory lock (``flock``; the kernel drops it when the holder dies, even by ``kill -9``)
    refuses a second writer, naming the holder. Temporary files a killed writer left behind
    are removed. A fresh (not resumed) run refuses a directory that holds another run or
    files that are not a run's, unless ``force``; the previous run's files are then removed,
    so no stale analysis or figure survives next to the new run. If the run fails before it
    wrote anything, a directory it created is removed again.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the run directory {run_dir} is a file; choose another --out")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise RunDirBusy(f"{run_dir} is being written by {holder}; wait for it to finish "
                             "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        for tmp in run_dir.glob(".*.tmp"):  # left by a writer that was killed mid-write
            tmp.unlink(missing_ok=True)
        if not resume:
            _check_fresh(run_dir, config, force)
        try:
            yield run_dir
        except BaseException:
            if created and not any(p.name != LOCK_NAME for p in run_dir.iterdir()):
                lock_path.unlink(missing_ok=True)
                run_dir.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock


def _check_fresh(run_dir: Path, config: dict, force: bool) -> None:
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if not entries:
        return
    foreign = sorted(p.name for p in entries if p.name not in RUN_FILES)
    previous = None
    if (run_dir / "config.json").exists():
        try:
            previous = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            previous = None
    same = previous == json.loads(json.dumps(config, default=str))
    if not force:
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(f"{run_dir} holds files that are not a bimt run's ({shown}); "
                             "choose another --out, or pass --force (force=True) to write there")
        if not same:
            what = (f"a run of {previous.get('task')} [{previous.get('method')}, seed "
                    f"{previous.get('seed')}]" if isinstance(previous, dict) else "another run")
            raise ValueError(f"{run_dir} already holds {what}; pass --resume to continue it, "
                             "--force (force=True) to replace it, or choose another --out")
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


# -- checkpoint ----------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, step, history, config, wall_s, snapshots=(),
                    extra: dict | None = None) -> None:
    """Everything a run needs to continue exactly (weights, optimizer, step, random state), written
    atomically so a crash mid-write leaves the previous checkpoint."""
    state = {
        "format": FORMAT, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "step": step, "history": history,
        "config": config, "wall_s": wall_s, "rng": {"torch": torch.get_rng_state()},
        "snapshots": list(snapshots), **(extra or {}),
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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bimt checkpoint (missing format marker)")
    return state


def wiring_record(wiring: Wiring) -> dict:
    """What a checkpoint keeps of a user module's wiring (plain data: no code)."""
    return {"spec": spec_to_dict(wiring.spec), "settings": wiring.settings.to_dict(),
            "view": wiring.view, "input_labels": wiring.input_labels,
            "output_labels": wiring.output_labels}


# -- specs as plain data ---------------------------------------------------------------------
def spec_to_dict(spec: PermutationSpec) -> dict:
    """A spec as plain data, so a checkpoint of a user's module can be read without its code."""
    def group(g):
        out = {"name": g.name, "coords": g.coords.tolist(), "heads": g.heads,
               "frozen": g.frozen, "labels": g.labels}
        if g.rigid or g.fold_order != "outer":  # written only when set: older files stay as they were
            out.update(rigid=g.rigid, fold_order=g.fold_order)
        return out

    out = {
        "groups": [group(g) for g in spec.groups.values()],
        "axes": {n: list(a) for n, a in spec.axes.items()},
        "charges": dict(spec.charges),
        "free": list(spec.free),
    }
    if spec.transposed:
        out["transposed"] = list(spec.transposed)
    return out


def spec_from_dict(d: dict) -> PermutationSpec:
    """The inverse of :func:`spec_to_dict`."""
    groups = [Group(g["name"], np.asarray(g["coords"], dtype=np.float64), heads=g["heads"],
                    frozen=g["frozen"], labels=g["labels"], rigid=g.get("rigid", False),
                    fold_order=g.get("fold_order", "outer")) for g in d["groups"]]
    return PermutationSpec(groups, d["axes"], d["charges"], free=tuple(d.get("free", ())),
                           transposed=tuple(d.get("transposed", ())))


class WeightsOnly(nn.Module):
    """A module holding saved tensors under their dotted names, with no forward: what a run of a
    user's module reloads to without that module's code (graphs, modularity, pictures)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        # a tied weight (a language model's head sharing the token embedding) is one tensor
        # saved under two names: it stays one parameter, listed once, as in the live module
        seen: dict[tuple, nn.Parameter] = {}
        for name, value in state.items():
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            if value.is_floating_point():
                key = (value.data_ptr(), value.shape, value.stride(), value.dtype)
                if key not in seen or value.numel() == 0:
                    seen[key] = nn.Parameter(value.clone(), requires_grad=False)
                owner.register_parameter(leaf, seen[key])
            else:
                owner.register_buffer(leaf, value.clone())

    def forward(self, *args, **kwargs):
        raise TypeError(
            "this run trained your own module, whose code a run directory does not keep: "
            "pass a fresh instance, bimt.load_model(run_dir, model=MyModule(...)), to run it"
        )


# -- loading: the one way a run directory is read back --------------------------------------
def read_run(run_dir, model: nn.Module | None = None) -> tuple[TrainConfig, dict]:
    """A run directory's saved config and checkpoint, checked against each other.

    Every reader goes through here (``bimt analyze``, ``plot``, ``view``, :func:`load_model`,
    resume). A file of the wrong kind, a checkpoint whose weights do not fit the model its config
    builds, or a ``config.json`` edited to disagree with the checkpoint's own config is refused
    with one line naming the file (the checkpoint's config is the one that trained the weights).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"the run directory {run_dir} does not exist")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    try:
        config = TrainConfig.from_dict(state.get("config"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{run_dir / 'checkpoint.pt'} holds an unreadable config ({e})") from None
    for key, kind in (("model", dict), ("optimizer", dict), ("history", list), ("step", int)):
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{run_dir / 'checkpoint.pt'} is not a complete bimt checkpoint "
                             f"(its {key!r} is missing or of the wrong type)")
    saved = run_dir / "config.json"
    if saved.exists():
        on_disk = read_config_file(saved)
        mine = json.loads(json.dumps(config.to_dict()))
        if on_disk != mine:
            differ = (sorted(k for k in set(on_disk) | set(mine) if on_disk.get(k) != mine.get(k))
                      if isinstance(on_disk, dict) else ["(not a JSON object)"])
            raise ValueError(f"{saved} disagrees with the config its checkpoint was trained with "
                             f"(keys {', '.join(map(str, differ[:5]))}); the checkpoint's is the "
                             "run's: restore config.json, or start a new run from the edited one "
                             "with --config and another --out")
    return config, state


def load_model(run_dir: str | os.PathLike, model: nn.Module | None = None) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory, with its resolved config.

    A run of a built-in task (or a registered one) rebuilds its model. A run of your own module
    loads into ``model`` (a fresh instance of its class; it gets the run's wiring if it has
    none), or, without one, into a :class:`WeightsOnly` module carrying the run's wiring.
    """
    config, state = read_run(run_dir, model)
    where = Path(run_dir) / "checkpoint.pt"
    try:
        return _rebuild(config, state, model, where, run_dir)
    except (TypeError, IndexError, AttributeError, KeyError, RuntimeError) as e:
        # the checkpoint is data from outside: whatever in it does not fit is one line, not a trace
        message = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"{where} cannot be rebuilt into its model ({type(e).__name__}: "
                         f"{message})") from None


def _rebuild(config, state, model, where, run_dir):
    if config.task == MODULE_TASK:
        record = state.get("wiring")
        if record is None:
            raise ValueError(f"{run_dir} trained a module but its checkpoint keeps no wiring")
        if model is None:
            model = WeightsOnly(state["model"])
            # a buffer its module keeps out of the state_dict (Llama's rotary frequencies) was
            # not saved: it is not among the weights to draw or analyse
            spec = record["spec"]
            saved = {**spec, "free": [n for n in spec.get("free", ()) if n in state["model"]]}
            restore_wiring(model, {**record, "spec": saved})
        else:
            if not has_wiring(model):
                restore_wiring(model, record)
            _load_weights(model, state["model"], where)
        cfg = _resolved_module_config(config.cost_settings(wiring_of(model).settings), config)
        model.eval()
        return model, cfg
    task = get_task(config.task)
    cfg = config.resolved(task)
    if model is None:
        model = task.make_model(cfg.to_dict()).to(getattr(torch, cfg.dtype))
    _load_weights(model, state["model"], where)
    wiring = wiring_of(model)
    if wiring.input_labels is None or wiring.output_labels is None:
        adopt_labels(wiring, task.make_data(cfg.seed, cfg.data_dir))
    model.eval()
    return model, cfg


def _load_weights(model: nn.Module, weights: dict, where: Path) -> None:
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{where} does not fit the model its config builds ({first})") from None


def restore_wiring(model: nn.Module, record: dict, check: bool = True) -> None:
    """Give ``model`` the wiring a checkpoint recorded (its spec, settings, view and labels),
    checked against the model's tensors (``check=False`` skips that)."""
    spec, settings = spec_from_dict(record["spec"]), CostSettings(**record["settings"])
    labels = dict(view=record["view"], input_labels=record["input_labels"],
                  output_labels=record["output_labels"])
    if check:
        attach(model, spec, settings, **labels)
    else:
        model.bimt = Wiring(model, spec, settings, check=False, **labels)


def adopt_labels(wiring: Wiring, data) -> None:
    """Name the wiring's inputs and outputs after the data's columns, where it has no names of
    its own and the counts agree (a CNN's input is channels, not the data's pixels)."""
    sizes = {role: sum(wiring.spec.groups[g].size for g, r in wiring.spec.interface().items()
                       if r == role) for role in ("input", "output")}
    for role in ("input", "output"):
        have, given = getattr(wiring, f"{role}_labels"), getattr(data, f"{role}_labels")
        if have is None and given is not None and len(given) == sizes[role]:
            setattr(wiring, f"{role}_labels", list(given))


def _resolved_module_config(settings: CostSettings, config: TrainConfig) -> TrainConfig:
    """A module run's resolved config, with its module's cost settings."""
    from ..tasks import Task

    kind = "classification" if config.loss == "ce" else "regression"  # only what resolving checks
    placeholder = Task(MODULE_TASK, "a user's module", kind, lambda *a: None, lambda c: None)
    given = {k: getattr(settings, k) for k in COST_FIELDS}
    given["distance_free"] = list(given["distance_free"])
    return dataclasses.replace(config, **given).resolved(placeholder)


# -- files ---------------------------------------------------------------------------------
def write_history_csv(path, history: list[dict]) -> None:
    """``history.csv``: one row per evaluation (empty values for ``None``)."""
    if not history:
        return
    keys = list(history[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write_bytes(path, buf.getvalue().encode())


def write_metrics(run_dir, metrics: dict) -> None:
    """``metrics.json``, written last: its presence marks the run complete."""
    write_json(Path(run_dir) / "metrics.json", metrics)


def read_metrics(run_dir) -> dict | None:
    """``metrics.json`` as a dict (``None`` when the run has none), or one line on what is wrong."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must hold a JSON object of metrics, got a {type(metrics).__name__}")
    return metrics


def say(progress: bool, what: str) -> None:
    """One status line on stderr for a phase that takes a while (drawing, analysis)."""
    if progress:
        print(f"bimt: {what}", file=sys.stderr, flush=True)


def write_plots(result, progress: bool = False) -> list[str]:
    """graph.png/svg (in the model's view), decision_boundary.png, evolution.gif; returns the
    files written. A figure that cannot be drawn is a one-line warning naming it, never an
    error: the run's metrics and checkpoint are already on disk."""
    from .. import viz

    run_dir, model, d = result.run_dir, result.model, result.data
    two_input_classifier = (
        d is not None and not isinstance(model, WeightsOnly) and torch.is_tensor(d.X_train)
        and d.X_train.ndim == 2 and d.X_train.shape[1] == 2 and d.X_train.is_floating_point()
        and torch.is_tensor(d.y_train) and not d.y_train.is_floating_point())
    figures = [("graph.png, graph.svg", lambda: viz.save_figure(
        viz.plot(model), run_dir / "graph", formats=("png", "svg")))]
    if two_input_classifier:
        figures.append(("decision_boundary.png", lambda: viz.save_figure(
            viz.plot_decision_boundary(model, d.X_test, d.y_test), run_dir / "decision_boundary",
            formats=("png",))))
    if result.config.animate and result.snapshots and d is not None and not isinstance(model, WeightsOnly):
        boundary = (d.X_test, d.y_test) if two_input_classifier else None
        figures.append(("evolution.gif", lambda: viz.write_animation(
            model, result.snapshots, run_dir / "evolution.gif", decision_boundary_data=boundary,
            progress=progress)))
    written = []
    for name, draw in figures:
        say(progress, f"drawing {run_dir}/{name}")
        try:
            draw()
            written.append(name)
        except Exception as e:  # noqa: BLE001 - a picture never costs the run
            message = " ".join(str(e).split())[:200]
            print(f"bimt: warning: could not draw {run_dir}/{name}: {type(e).__name__}: {message}",
                  file=sys.stderr, flush=True)
    return written


@dataclass
class Objective:
    """How a run's outputs meet its targets: the one builder of the loss and the predictions,
    for training, evaluation and analysis alike."""

    loss: object  # (prediction, target) -> scalar tensor
    predict: object  # model output -> what the reported loss and accuracy compare
    fit_predict: object  # model output -> what the training loss compares (``Data.y_train_fit``)
    loss_name: str
    kind: str  # "regression" or "classification"
    n_out: int | None

    def accuracy(self, out, y) -> float:
        """Share of right classes (class axis 1) of predictions ``out``; targets below 0 (a
        task's ignored positions, cross-entropy's ``ignore_index``) are left out."""
        right = out.argmax(1) == y
        counted = y >= 0
        if bool(counted.all()):
            return float(right.float().mean())
        return float(right[counted].float().mean()) if bool(counted.any()) else float("nan")

    def targets(self, y, model: nn.Module):
        """What the loss compares with: integer classes one-hot under MSE (``n_out`` wide)."""
        if y is not None and self.loss_name == "mse" and not y.is_floating_point():
            n = self.n_out or int(y.max()) + 1
            return nn.functional.one_hot(y, n).to(next(model.parameters()).dtype)
        return y

    @torch.no_grad()
    def check_fits(self, model: nn.Module, data, cfg) -> None:
        """One clear line, before anything is written, when the data cannot train the model:
        empty splits, non-finite values, float targets under cross-entropy, shapes that do not
        fit the model's inputs or outputs."""
        import warnings

        X, y = data.X_train, data.y_train
        if not (torch.is_tensor(X) and torch.is_tensor(y)):  # data loaders: checked as they come
            return
        for split, A in (("training inputs", X), ("training targets", y), ("test inputs", data.X_test),
                         ("test targets", data.y_test)):
            if torch.is_tensor(A) and len(A) == 0:
                raise ValueError(f"the {split} are empty; give at least one sample")
            if torch.is_tensor(A) and A.is_floating_point() and not bool(torch.isfinite(A).all()):
                bad = int((~torch.isfinite(A)).sum())
                raise ValueError(f"the {split} hold {bad} NaN or infinite values; clean the data")
        if self.loss_name == "ce" and y.is_floating_point():
            raise ValueError(f"loss 'ce' (cross-entropy) needs integer class labels, got targets "
                             f"of dtype {str(y.dtype).replace('torch.', '')}; use loss 'mse' for "
                             "regression, or give the classes as integers")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # MSELoss warns, then broadcasts, on a shape mismatch
                out = model(X[:2])  # the models check their inputs' feature count themselves
                self.loss(self.predict(out), self.targets(y[:2], model))
                if data.output_labels is not None and len(data.output_labels) != out.shape[-1]:
                    raise ValueError(f"{out.shape[-1]} outputs for {len(data.output_labels)} targets")
        except (RuntimeError, IndexError, ValueError, UserWarning) as e:
            reason = " ".join(str(e).split())[:200]
            what = f"widths {cfg.widths}" if cfg.widths else type(model).__name__
            raise ValueError(f"the model ({what}) does not fit {cfg.task}'s data (inputs of shape "
                             f"{tuple(X.shape[1:])}, targets of shape {tuple(y.shape[1:])}): "
                             f"{reason}") from None


def objective(task, loss_name: str, wiring, custom=None, data=None) -> Objective:
    """The :class:`Objective` of a task (and its data) under a loss ("mse", "ce" or a function)."""
    predict = task.predict or (lambda o: o)
    fits_more = data is not None and data.y_train_fit is not None
    return Objective(
        loss=custom or (nn.MSELoss() if loss_name == "mse" else nn.CrossEntropyLoss()),
        predict=predict, fit_predict=(task.predict_fit or predict) if fits_more else predict,
        loss_name=loss_name, kind=task.kind, n_out=_n_outputs(wiring))


def targets(y: torch.Tensor, loss: str, model: nn.Module, n_out: int | None = None) -> torch.Tensor:
    """What the loss compares outputs with (see :meth:`Objective.targets`)."""
    return Objective(None, None, None, loss, "", n_out).targets(y, model)


def module_task(model: nn.Module, data, config: TrainConfig, checkpoint: dict | None):
    """``(task, config)`` for training your own module: a :class:`~bimt.tasks.Task` that hands
    out that very module and your data, and the config with the module's cost settings where
    it sets none. A fresh instance resuming a run gets the run's wiring first."""
    from ..tasks import Data, Task

    if checkpoint is not None and not has_wiring(model) and "wiring" in checkpoint:
        restore_wiring(model, checkpoint["wiring"])
    wiring = wiring_of(model)
    have = wiring.settings.to_dict()
    config = dataclasses.replace(config, **{k: have[k] for k in COST_FIELDS if getattr(config, k) is None})
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise ValueError("data must be (X_train, y_train, X_test, y_test) or "
                         f"(train_loader, test_loader), got {type(data).__name__}")
    if len(data) == 2:
        for what, loader in zip(("train", "test"), data):
            if not isinstance(loader, torch.utils.data.DataLoader):
                raise ValueError(f"the {what} loader must be a torch DataLoader, got "
                                 f"{type(loader).__name__}")
        d = Data(data[0], None, data[1], None, "DataLoader")
        kind = "classification" if config.loss == "ce" else "regression"
    else:
        dtype = next(iter(model.parameters())).dtype
        as_t = lambda a: (lambda t: t.to(dtype) if t.is_floating_point() else t)(torch.as_tensor(a))
        d = Data(*(as_t(a) for a in data), "arrays")
        if len(d.X_train) != len(d.y_train) or len(d.X_test) != len(d.y_test):
            raise ValueError(f"{len(d.X_train)} training inputs for {len(d.y_train)} targets, "
                             f"{len(d.X_test)} test inputs for {len(d.y_test)} targets")
        kind = ("classification" if config.loss == "ce" or not d.y_train.is_floating_point()
                else "regression")
    predict = _class_axis_second if config.loss == "ce" else _prediction
    task = Task(MODULE_TASK, f"your {type(model).__name__}", kind, lambda seed, data_dir=None: d,
                lambda cfg: model, predict=predict)
    return task, config


def _prediction(out):
    """A module's output as the tensor the loss compares: a Hugging Face model's ``logits``, the
    first entry of a tuple, else the output itself."""
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    return out


def _class_axis_second(out):
    """For cross-entropy: per-position logits ``(batch, seq, classes)`` of a language model become
    ``(batch, classes, seq)``, the layout the loss takes (targets ``(batch, seq)``)."""
    out = _prediction(out)
    return out.movedim(-1, 1) if out.dim() > 2 else out


# -- a run directory, analysed (``bimt analyze``) ---------------------------------------------
def run_evaluator(run_dir, model: nn.Module | None = None):
    """``(model, config, evaluate, accuracy)`` for a run: ``evaluate(module)`` is the test loss,
    ``accuracy`` the test accuracy of a classifier (else ``None``), both as training measured
    them (the run's :class:`Objective`). A run of your own module keeps no data, so both are
    ``None`` there."""
    model, cfg = load_model(run_dir, model)
    if cfg.task == MODULE_TASK:
        return model, cfg, None, None
    task = get_task(cfg.task)
    data = task.make_data(cfg.seed, cfg.data_dir)
    dtype = next(model.parameters()).dtype  # float64 runs (S4, in-context) get float64 data
    X, y = data.X_test, data.y_test
    X = X.to(dtype) if X.is_floating_point() else X
    y = y.to(dtype) if y.is_floating_point() else y
    obj = objective(task, cfg.loss, wiring_of(model), data=data)
    target = obj.targets(y, model)

    def evaluate(module) -> float:
        return float(obj.loss(obj.predict(module(X)), target))

    def accuracy(module) -> float:
        return obj.accuracy(obj.predict(module(X)), y)

    return model, cfg, evaluate, (accuracy if task.kind == "classification" else None)


def _n_outputs(wiring) -> int | None:
    """How many outputs the module has (one-hot width of integer targets under MSE)."""
    outs = [g for g, role in wiring.spec.interface().items() if role == "output"]
    return sum(wiring.spec.groups[g].size for g in outs) or None


def analyze_run(run_dir, prune: bool = False, knockout: bool = False, echo: bool = True,
                model: nn.Module | None = None, evaluate=None, circuit: bool = False) -> dict:
    """Modularity, modules and active neurons of a run, written to ``analysis.json`` / ``.md``.

    ``prune`` adds ``pruning_frontier.png`` (+ csv); ``knockout`` adds ``knockout.md``, the
    metric after knocking out each module found by ``find_modules`` or, when the network is
    one component (modules that meet only at the output, Fig. 5), each of its ``tree_roots``.
    ``circuit`` (tasks with a probe: the language tasks) adds ``circuit.json`` and
    ``circuit.png``: the heads and MLP neurons that carry the task
    (:func:`bimt.analysis.find_circuit`), highlighted in the graph.

    A run of your own module is analysed from its saved spec and weights (graph, modules,
    active neurons, cost; the test loss from ``metrics.json``); pruning and knock-outs run the
    network, so they need ``model=`` (a fresh instance) and ``evaluate=`` (``module -> float``).
    """
    from .. import viz
    from ..analysis import (
        MODULE_THRESHOLD, find_modules, knockout_table, module_slots, pruning_frontier, summary,
        tree_roots,
    )
    from ..analysis.graph import NONZERO_REL, _letters

    run_dir = Path(run_dir)
    model, cfg, run_evaluate, accuracy = run_evaluator(run_dir, model)
    evaluate = evaluate or run_evaluate
    if (prune or knockout) and evaluate is None:
        raise ValueError(
            f"{run_dir} trained your own module: pruning and knock-outs run it, so call "
            "bimt.runs.analyze_run(run_dir, prune=..., model=<fresh instance>, "
            "evaluate=<module -> test loss>)"
        )
    report = summary(model, evaluate)
    if evaluate is not None:
        report["test_loss"] = report.pop("metric")
    else:
        report["test_loss"] = (read_metrics(run_dir) or {}).get("test_loss")
    report["modules"] = [module_slots(m) for m in find_modules(model)]
    from ..core.crossings import crossings

    wired = wiring_of(model)
    drawn = crossings(wired.module, wired.spec)  # pruned at 5% per layer, as the metric defines it
    report["crossings"], report["module_crossings"] = drawn["crossings"], drawn["module_crossings"]
    test_loss = "n/a" if report["test_loss"] is None else f"{report['test_loss']:.6g}"
    lines = [f"# Analysis of {run_dir.name} ({cfg.task}, {cfg.method}, seed {cfg.seed})", "",
             f"- modularity: {report['modularity']}",
             f"- modules (threshold {MODULE_THRESHOLD} of each tensor's max |w|): {report['n_modules']}"
             f" of sizes {report['module_sizes']}",
             f"- active neurons per layer: {report['active_neurons']}",
             f"- nonzero parameters (above {NONZERO_REL:g} of their tensor's largest |x|): "
             f"{report['n_nonzero_total']} of {report['n_params_total']} (as metrics.json); "
             f"charged by the cost: {report['n_nonzero']} of {report['n_params']}",
             f"- crossing wires (pruned at 5%): {report['crossings']}, between modules: "
             f"{report['module_crossings']}",
             f"- test loss: {test_loss}"]
    if prune:
        frontier = pruning_frontier(model, evaluate)
        report["pruning_frontier"] = [[int(n), float(l)] for n, l in frontier]
        fig = viz.plot_pruning_frontier({f"{cfg.task} {cfg.method}": frontier})
        viz.save_figure(fig, run_dir / "pruning_frontier", formats=("png",))
        csv_text = "n_unpruned,test_loss\n" + "".join(f"{n},{l}\n" for n, l in frontier)
        atomic_write_bytes(run_dir / "pruning_frontier.csv", csv_text.encode())
        lines.append("- pruning frontier: pruning_frontier.png, pruning_frontier.csv")
    if knockout:
        modules = {_letters(i): m for i, m in enumerate(find_modules(model))}
        if len(modules) < 2:  # parallel modules that meet only at the output (Fig. 5): its roots
            roots = tree_roots(model)
            if len(roots) >= 2:
                modules = {r["name"]: r["neurons"] for r in roots}
        metric = accuracy or evaluate
        rows = knockout_table(model, modules, metric)
        report["knockout"] = rows
        name = "test accuracy" if accuracy else "test loss"
        table = [f"| module | neurons | which (layer: slots) | {name} |", "|---|---|---|---|"]
        table += [f"| {r['module']} | {r['n_neurons']} | {_slots_text(modules.get(r['module']))} "
                  f"| {r['metric']:.4g} |" for r in rows]
        atomic_write_bytes(run_dir / "knockout.md", ("\n".join(table) + "\n").encode())
        lines += ["", "## Knock-outs", "", *table]
    if circuit:
        found = _circuit(run_dir, model, cfg)
        report["circuit"] = found
        lines += ["", "## Circuit", "", *_circuit_lines(found)]
    write_json(run_dir / "analysis.json", report)
    atomic_write_bytes(run_dir / "analysis.md", ("\n".join(lines) + "\n").encode())
    if echo:
        print("\n".join(lines))
    return report


def _circuit(run_dir: Path, model, cfg) -> dict:
    """Find the run's circuit on its task's probe; write ``circuit.json`` and ``circuit.png``."""
    from .. import viz
    from ..analysis.circuits import circuit_slots, find_circuit

    task = get_task(cfg.task) if cfg.task != MODULE_TASK else None
    if task is None or task.probe is None:
        raise ValueError(f"{cfg.task} has no circuit probe (the language tasks induction and "
                         "text-lm have one); for your own model call "
                         "bimt.analysis.find_circuit(model, data, metric)")
    data, metric = task.probe(cfg.seed)
    found = find_circuit(model, data, metric)
    out = {"heads": found.heads, "neurons": found.neurons, "baseline": found.baseline,
           "after_knockout": found.baseline - found.set_effect, "set_effect": found.set_effect,
           "after_heads_knockout": found.baseline - found.heads_effect,
           "other_head": found.other_head, "other_effect": found.other_effect,
           "one_module": found.one_module, "module": found.module, "scores": found.scores,
           "effects": found.effects, "slots": circuit_slots(model, found.units)}
    write_json(run_dir / "circuit.json", out)
    fig = viz.plot_graph(model, highlight=out["slots"],
                         title=f"{cfg.task} [{cfg.method}, seed {cfg.seed}]: circuit "
                               f"{', '.join(found.units) or '(none)'}")
    viz.save_figure(fig, run_dir / "circuit", formats=("png",))
    return out


def _circuit_lines(c: dict) -> list[str]:
    def show(x):
        return "n/a" if x is None else f"{x:.4g}"

    scores = [f"| {h} | {show(s.get('previous_token'))} | {show(s.get('induction'))} | "
              f"{show(c['effects'].get(h))} |" for h, s in c["scores"].items()]
    return [f"- heads: {', '.join(c['heads']) or 'none'}; MLP neurons: "
            f"{', '.join(c['neurons']) or 'none'}",
            f"- metric {show(c['baseline'])}, with the circuit knocked out {show(c['after_knockout'])}, "
            f"with only its heads knocked out {show(c.get('after_heads_knockout'))}; "
            f"the largest drop from any other single head: {show(c['other_effect'])} "
            f"({c['other_head'] or 'none'})",
            f"- one spatial module: {'yes' if c['one_module'] else 'no'} (connected: "
            f"{c['module'].get('connected')}, contiguous: {c['module'].get('contiguous')})",
            "", "| head | previous-token score | induction score | knock-out drop |",
            "|---|---|---|---|", *scores]


def _slots_text(neurons) -> str:
    """A module's neurons for a table cell: ``layer1: 0, 3; layer2: 5``."""
    from ..analysis import module_slots

    if not neurons:
        return "-"
    return "; ".join(f"{g}: {', '.join(map(str, slots))}" for g, slots in module_slots(neurons).items())
