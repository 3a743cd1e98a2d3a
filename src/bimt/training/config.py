"""What a run is: :class:`TrainConfig` and the lambda schedule, below both the trainer and the
run directories (both read a config; neither needs the other for that)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

from ..core.checks import nonnegative, one_of, positive_int
from ..core.cost import CostSettings
from ..core.swap import swap_modes
from ..tasks import Task, get_task

__all__ = ["TrainConfig", "METHODS", "LOSSES", "DTYPES", "milestone_schedule", "lambda_at"]

METHODS = ("vanilla", "l1", "l1-local", "l1-swap", "bimt", "sernn")
#: ``custom``: a loss function given to :func:`bimt.fit` (not stored; give it again to resume).
LOSSES = ("mse", "ce", "custom")
DTYPES = ("float32", "float64")
#: What a field left ``None`` becomes when neither the task nor its method-specific defaults set it.
GLOBAL_DEFAULTS = dict(
    method="bimt", seed=0, steps=1000, lr=1e-3, weight_decay=0.0, loss="mse",
    lambda_schedule=[[1e-3, 1]], A=1.0, y_star=1.0, p=1.0, reduction="sum", distance_free=[],
    bias_free_fraction=0.0, swap_every=200, swap_mode="greedy", animate=False, animate_frames=40,
    threads=1, dtype="float32",
)


@dataclass
class TrainConfig:
    """Everything a run needs. Every field left ``None`` takes the task's default for this
    method, else the task's default, else the global one (:data:`GLOBAL_DEFAULTS`); the
    resolved config (``resolved_config.json`` in a run directory) holds every value used."""

    task: str = "two-moons"
    method: str | None = None  # None: "bimt"
    seed: int | None = None  # None: 0
    steps: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None  # None: full batch
    loss: str | None = None  # mse | ce
    widths: list[int] | None = None
    lambda_schedule: list[list[float]] | None = None  # [[value, steps], ...]
    lambda_milestones: list[list[float]] | None = None  # [[fraction, factor], ...] on the first value
    A: float | None = None
    swap_A: float | None = None  # A when judging swaps (None: the training A; S4's notebook: 2)
    y_star: float | None = None
    p: float | None = None
    reduction: str | None = None  # sum | mean
    distance_free: list[str] | None = None  # weight names, or ["last"] (the MNIST output layer)
    bias_free_fraction: float | None = None  # biases uncharged for this fraction of the run
    top_k: int | None = None
    swap_every: int | None = None
    swap_mode: str | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    animate: bool | None = None
    animate_frames: int | None = None
    data_dir: str | None = None
    threads: int | None = None  # torch threads while training; small networks run fastest on one
    dtype: str | None = None  # "float32" or "float64", as some reference notebooks train

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        from .configtypes import check_types

        check_types(cls, d)
        d = dict(d)
        if "last_distance_free" in d:  # the name before CostSettings (saved configs)
            d.setdefault("distance_free", ["last"] if d.pop("last_distance_free") else [])
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
        method = self.method or task.defaults.get("method") or GLOBAL_DEFAULTS["method"]
        base = dict(GLOBAL_DEFAULTS)
        base.update(task.defaults)
        base.update(getattr(task, "method_defaults", {}).get(method, {}))
        base["method"] = method
        out = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            if getattr(out, f.name) is None and f.name in base:
                setattr(out, f.name, copy.deepcopy(base[f.name]))
        if out.swap_A is None:
            out.swap_A = out.A
        if out.lambda_milestones is not None:
            out.lambda_schedule = milestone_schedule(out.lambda_schedule[0][0], out.lambda_milestones)
            out.lambda_milestones = None
        if out.eval_every is None:
            out.eval_every = max(1, min(out.steps // 20 or 1, 500))
        if out.checkpoint_every is None:
            out.checkpoint_every = max(1, min(out.steps, 2000))
        out.validate()
        if task.kind == "regression" and out.loss == "ce":
            raise ValueError(f"loss 'ce' (cross-entropy) needs class labels; {out.task} is a "
                             "regression task: use loss 'mse'")
        return out

    def validate(self) -> None:
        from .configtypes import SEED_MAX

        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an integer from 0 to {SEED_MAX}, got {self.seed!r}")
        for name in ("steps", "batch_size", "top_k", "swap_every", "eval_every",
                     "checkpoint_every", "animate_frames", "threads"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        for value, allowed, what in ((self.dtype, DTYPES, "dtype"), (self.method, METHODS, "method"),
                                     (self.loss, LOSSES, "loss"),
                                     (self.swap_mode, swap_modes(), "swap mode")):
            if value is not None:
                one_of(value, allowed, what)
        for name in ("lr", "weight_decay", "swap_A"):
            if getattr(self, name) is not None:
                nonnegative(getattr(self, name), name)
        if self.lr is not None and self.lr == 0:
            raise ValueError("lr must be > 0")
        self.cost_settings()  # every cost setting checked by the one place that owns them
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
                if not math.isfinite(length) or length <= 0:
                    raise ValueError(f"a lambda phase must last > 0 steps, got {length!r}")

    def cost_settings(self, bias: bool = True) -> CostSettings:
        """The run's :class:`CostSettings` (fields left ``None`` take CostSettings' defaults)."""
        given = {k: getattr(self, k) for k in ("A", "y_star", "p", "reduction", "distance_free")}
        return CostSettings(bias=bias, **{k: v for k, v in given.items() if v is not None})


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


