"""The BIMT step cut at a training framework's hooks, shared by every callback.

:meth:`bimt.Wiring.step` is the whole step for a loop of your own: add ``lam`` times the cost's
gradient, step the optimizer, and every ``swap_every`` steps run a swap pass that moves the
optimizer's state. A framework owns the optimizer step, so :class:`BIMTStepper` does the two
halves around it: :meth:`~BIMTStepper.add_cost_grad` once the gradients of a whole optimizer
step are in (after every micro-batch's backward), and :meth:`~BIMTStepper.after_step` once the
optimizer has stepped. The callbacks only say when, with which step number and optimizer.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.amp.grad_scaler import OptState

from ..analysis.graph import modularity
from ..core.checks import one_of, positive_int
from ..core.settings import DEFAULT_SWAP_EVERY, DEFAULT_SWAP_MODE
from ..core.swap import SwapReport, swap_modes
from ..models.wiring import Wiring, has_wiring, wiring_of
from ..training.config import TrainConfig, default_of, lambda_at

__all__ = ["BIMTStepper", "find_wiring", "torch_optimizer", "grad_scale", "lambda_schedule"]

#: Names of the metrics the callbacks hand to a framework's logger.
METRICS = {"cost": "bimt/cost", "lambda": "bimt/lambda", "swaps": "bimt/swaps",
           "modularity": "bimt/modularity"}


def find_wiring(model) -> Wiring:
    """The wiring to train: anything :func:`bimt.wiring_of` accepts, or a module (a
    LightningModule, a Hugging Face model, any wrapper) holding exactly one wired module that
    no other wired module contains."""
    if not isinstance(model, nn.Module) or has_wiring(model):
        return wiring_of(model)
    found = [name for name, m in model.named_modules() if has_wiring(m)]
    outer = [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]
    if len(outer) == 1:
        return wiring_of(model.get_submodule(outer[0]))
    if not outer:
        raise TypeError(
            f"{type(model).__name__} has no bimt wiring, nor does any of its submodules: give the "
            "network one with bimt.attach(net) (BioMLP and BioTransformer have theirs), or pass "
            "the callback the wired network")
    raise ValueError(f"{type(model).__name__} holds {len(outer)} wired modules "
                     f"({', '.join(outer)}); pass the callback the one to train")


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (Lightning's ``LightningOptimizer``,
    accelerate's ``AcceleratedOptimizer``): the object whose ``state`` a swap pass moves."""
    while True:
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            optimizer = inner
        elif isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        else:
            raise TypeError(f"{type(optimizer).__name__} is not a torch optimizer, nor a wrapper "
                            "of one (an object whose .optimizer is one)")


def grad_scale(scaler, optimizer) -> float:
    """The factor the gradients of ``optimizer`` carry now: an enabled AMP ``GradScaler``'s
    scale until it has unscaled them (``unscale_``, which frameworks call before clipping),
    else 1. The cost's gradient is added in the same units."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    # GradScaler keeps each optimizer's stage (READY, UNSCALED, STEPPED) under its id; it has
    # no public query for it. A missing entry is READY: nothing unscaled since the last update.
    state = scaler._per_optimizer_states.get(id(torch_optimizer(optimizer)))
    if state is not None and state["stage"] is OptState.UNSCALED:
        return 1.0
    return float(scaler.get_scale())


def lambda_schedule(lam) -> list[list[float]]:
    """``lam`` as phases ``[[value, steps], ...]``: a number is one phase for the whole run;
    ``None`` is the declared default (``bimt train``'s ``--lambda``)."""
    if lam is None:
        return default_of("lambda_schedule")
    if isinstance(lam, (int, float)) and not isinstance(lam, bool):
        phases = [[float(lam), 1.0]]
    elif isinstance(lam, (list, tuple)):
        phases = [list(p) if isinstance(p, (list, tuple)) else p for p in lam]
    else:
        phases = lam
    try:
        TrainConfig(lambda_schedule=phases)  # the setting's one declared check
    except ValueError as e:
        raise ValueError(f"lam must be a number >= 0 or phases [[value, steps], ...] stretched "
                         f"over the run, got {lam!r} ({e})") from None
    return phases


def _crossed(every: int | None, before: int, now: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(before, now]``."""
    return bool(every) and now // every > before // every


class BIMTStepper:
    """What a callback does at a framework's hooks (see the module's docstring).

    ``lam``: a number or phases ``[[value, steps], ...]`` stretched over the run's optimizer
    steps as :func:`bimt.training.config.lambda_at` reads them. ``swap_every``: optimizer steps
    between swap passes (``None``: no swaps); ``top_k`` and ``mode`` as in
    :meth:`bimt.Wiring.swap`. ``log_every``: optimizer steps between logged rows (``None``: the
    framework's own logging cadence). ``modularity_every``: optimizer steps between modularity
    measurements (each builds the weight graph; ``None``: with every swap pass; ``0``: never).
    ``history`` keeps one row per logged step, swap pass or measurement: ``step`` (optimizer
    steps done), ``lambda``, ``cost`` (after any swap pass), ``swaps`` and ``modularity``.
    """

    def __init__(self, model=None, lam=None, *, swap_every: int | None = DEFAULT_SWAP_EVERY,
                 top_k: int | None = None, mode: str = DEFAULT_SWAP_MODE, log_every: int | None = None,
                 modularity_every: int | None = None):
        self.schedule = lambda_schedule(lam)
        self.swap_every = positive_int(swap_every, "swap_every", allow_none=True)
        self.top_k = positive_int(top_k, "top_k", allow_none=True)
        self.mode = one_of(mode, swap_modes(), "swap mode")
        self.log_every = positive_int(log_every, "log_every", allow_none=True)
        if modularity_every is None:
            modularity_every = self.swap_every
        elif modularity_every != 0:
            modularity_every = positive_int(modularity_every, "modularity_every (0: never, None: with the swaps)")
        self.modularity_every = modularity_every
        self.wiring: Wiring | None = None if model is None else find_wiring(model)
        self.history: list[dict] = []
        self.lam: float | None = None  # lambda of the last step
        self.swaps = 0  # swaps made so far
        self.modularity: float | None = None  # the last measurement
        self.last_swap: SwapReport | None = None

    def bind(self, model) -> Wiring:
        """The wiring given at construction, else the one found in ``model``."""
        if self.wiring is None:
            self.wiring = find_wiring(model)
        return self.wiring

    def lam_at(self, step: int, total_steps: float | None) -> float:
        """Lambda for optimizer step ``step`` (0-based) of a run of ``total_steps``."""
        known = total_steps is not None and math.isfinite(total_steps) and total_steps > 0
        if len(self.schedule) > 1 and not known:
            raise ValueError(f"the lambda phases {self.schedule} are stretched over the run's "
                             f"optimizer steps, but this run's length is unknown ({total_steps}); "
                             "give the trainer max_steps (or a dataset of known length)")
        return lambda_at(self.schedule, step, total_steps if known else 1)

    def add_cost_grad(self, step: int, total_steps: float | None, scale: float = 1.0) -> float:
        """Add lambda times the cost's gradient to ``.grad`` (times ``scale``, the factor the
        gradients carry, see :func:`grad_scale`), for optimizer step ``step`` (0-based)."""
        self.lam = self.lam_at(step, total_steps)
        self.wiring.connection_cost.add_grad_(self.wiring.module, self.lam * scale)
        return self.lam

    def after_step(self, step: int, optimizers, log: bool, before: int | None = None) -> dict | None:
        """After the optimizer step that brought the count to ``step`` (from ``before``,
        default ``step - 1``): a swap pass when one is due, moving the state of every optimizer
        in ``optimizers`` (``None`` entries skipped); modularity when due. Returns the logger's
        metrics when ``log``."""
        before = step - 1 if before is None else before
        row = {}
        if _crossed(self.swap_every, before, step):
            moved = [torch_optimizer(o) for o in optimizers if o is not None]
            self.last_swap = self.wiring.swap(self.top_k, self.mode, moved)
            self.swaps += self.last_swap.swaps
            row["swaps"] = self.last_swap.swaps
        if _crossed(self.modularity_every, before, step):
            try:
                self.modularity = row["modularity"] = modularity(self.wiring)
            except ValueError:  # every weight zero: undefined
                pass
        if row or log:
            self._record(step, row)
        return self.log_now(step) if log else None

    def log_now(self, step: int) -> dict:
        """The logger's metrics at ``step`` (optimizer steps done), from its history row (made
        now if there is none): the cost, lambda, swaps so far and the last modularity."""
        if not self.history or self.history[-1]["step"] != step:
            self._record(step, {})
        values = {"cost": self.history[-1]["cost"], "lambda": self.lam, "swaps": self.swaps,
                  "modularity": self.modularity}
        return {METRICS[k]: float(v) for k, v in values.items() if v is not None}

    def _record(self, step: int, row: dict) -> None:
        with torch.no_grad():
            cost = float(self.wiring.cost())
        self.history.append({"step": step, "lambda": self.lam, "cost": cost, **row})
