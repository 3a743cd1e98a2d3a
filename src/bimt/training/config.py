"""What a run is: every setting declared once, :class:`TrainConfig`, the methods and the lambda
schedule.

Each field of :class:`TrainConfig` is declared by :func:`setting` with its global default, its
type (the annotation), its check, its help text and whether runs that differ in it may share a
stack (:mod:`bimt.training.loop`). The command line's flags, the validation of every config
(built directly, from a dict or JSON file, or from flags), ``bimt train --help`` and the stack's
member fields are all read from these declarations. A field left ``None`` takes the task's
default for the method, else the task's default, else the declared one; the connection-cost
settings declare :class:`~bimt.core.settings.CostSettings`' own defaults.

No torch at import time: the command line reads this module before it knows it will train.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.checks import nonnegative, one_of, positive_int
from ..core.settings import COST_FIELDS, DEFAULT_SWAP_EVERY, DEFAULT_SWAP_MODE, CostSettings

__all__ = ["TrainConfig", "Setting", "SETTINGS", "read_config_file", "METHODS", "Method", "LOSSES", "DTYPES",
           "SEED_MAX", "MEMBER_FIELDS", "milestone_schedule", "lambda_at", "check_seed"]

#: Seeds a run accepts: numpy takes 32-bit seeds (and the batch generator multiplies them).
SEED_MAX = 2**32 - 1
#: Largest magnitude a float setting may have: the training tensors are float32 (or float64),
#: and a setting that overflows float32 (``--lambda 1e308``) would turn the run into infinities.
FLOAT_MAX = 3.4e38
#: ``custom``: a loss function given to :func:`bimt.fit` (not stored; give it again to resume).
LOSSES = ("mse", "ce", "custom")
#: Floating-point types a run may train in (float64: the notebooks' S4 and in-context).
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Method:
    """What a method of the paper's ablations means for training.

    ``charged``: the connection cost's gradient is added; ``local``: with the in-layer scale
    ``A`` (else ``A = 0``: plain L1); ``swaps``: swap passes run (judged with ``A``);
    ``cost``: the cost's kind, ``"connection"`` or ``"communicability"`` (seRNN's term for
    recurrent weights, :mod:`bimt.core.communicability`).
    """

    charged: bool
    local: bool
    swaps: bool
    cost: str = "connection"


#: The paper's ablations (Fig. 2, App. A) and seRNN's regulariser, as one table.
METHODS = {
    "vanilla": Method(charged=False, local=False, swaps=False),
    "l1": Method(charged=True, local=False, swaps=False),
    "l1-local": Method(charged=True, local=True, swaps=False),
    "l1-swap": Method(charged=True, local=False, swaps=True),
    "bimt": Method(charged=True, local=True, swaps=True),
    "sernn": Method(charged=True, local=True, swaps=False, cost="communicability"),
}


# -- the declarations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting: its global default, type, check, help, and whether stack members may differ.

    ``check(value, name)`` returns the value or raises ``ValueError`` naming it; ``flag`` is the
    command line's name (``None``: from the field name), ``choices`` the allowed values to list.
    """

    default: object
    help: str
    check: Callable | None = None
    stack: bool = False
    flag: str | None = None
    choices: Callable | tuple | None = None
    name: str = ""
    type: str = ""

    def allowed(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices or ())


def setting(default, help: str, **kw):
    """A :class:`TrainConfig` field: ``None`` unless set, declared by a :class:`Setting`."""
    return field(default=None, metadata={"setting": Setting(default, help, **kw)})


def check_seed(value, name="seed"):
    """``value`` if it is a seed numpy accepts (an int from 0 to :data:`SEED_MAX`), else one error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"{name} must be an integer from 0 to {SEED_MAX}, got {_short(value)}")
    return value


def _float(value, name):
    number = nonnegative(value, name)
    if number > FLOAT_MAX:
        raise ValueError(f"{name} must be at most {FLOAT_MAX:g} (it must fit a float32), got {value!r}")
    return number


def _positive_float(value, name):
    if _float(value, name) == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _fraction(value, name):
    if not 0 <= _float(value, name) <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _widths(value, name):
    for w in value:
        positive_int(w, f"every entry of {name}")
        if w > MAX_WIDTH:
            raise ValueError(f"{name} entry {w} is larger than {MAX_WIDTH:,} neurons, the most a "
                             "layer may have here (its weights would not fit in memory)")
    return value


#: Most neurons a layer of ``widths`` may have: a 10^5 x 10^5 float32 weight is already 40 GB.
MAX_WIDTH = 100_000


def _phases(value, name):
    if not value:
        raise ValueError(f"{name} must list at least one [value, steps] phase")
    for v, length in value:
        _float(v, "lambda")
        if not math.isfinite(length) or length <= 0:
            raise ValueError(f"a lambda phase must last a finite number of steps > 0, got {length!r}")
    return value


def _milestones(value, name):
    for fraction, factor in value:
        if not 0 < fraction < 1 or not math.isfinite(factor) or factor < 0:
            raise ValueError(f"a lambda milestone is [fraction in (0, 1), factor >= 0], got "
                             f"[{fraction}, {factor}]")
    return value


def _one_of(choices):
    return lambda value, name: one_of(value, choices() if callable(choices) else choices, name)


def _swap_modes():
    from ..core.swap import swap_modes  # the solver registry (users may add solvers)

    return swap_modes()


def _cost_settings_check(value, name):
    """Checked by :class:`~bimt.core.settings.CostSettings` itself, the one owner of these settings."""
    if _number(value) and math.isfinite(value):
        _float(value, name)
    CostSettings(**{name: value})
    return value


def _int(value, name):
    return positive_int(value, name)


@dataclass
class TrainConfig:
    """Everything a run needs (``bimt.fit(config)`` takes one, a dict, or keywords).

    Every field left ``None`` takes the task's default for this method, else the task's
    default, else the declared one; ``resolved_config.json`` in a run directory holds every
    value used. Each field's help is its declaration's (``bimt train --help`` prints them).
    """

    task: str = "two-moons"
    method: str | None = setting("bimt", "vanilla | l1 | l1-local | l1-swap | bimt | sernn (RNNs)",
                                 check=_one_of(tuple(METHODS)), choices=tuple(METHODS), stack=True)
    seed: int | None = setting(0, f"seed number, 0 to {SEED_MAX}", check=check_seed, stack=True)
    steps: int | None = setting(1000, "training steps", check=_int)
    lr: float | None = setting(1e-3, "AdamW learning rate", check=_positive_float)
    weight_decay: float | None = setting(0.0, "AdamW weight decay", check=_float)
    batch_size: int | None = setting(None, "batch size; full batch when unset", check=_int)
    loss: str | None = setting("mse", "mse | ce (cross-entropy)", check=_one_of(LOSSES), choices=LOSSES)
    widths: list[int] | None = setting(None, "neurons per layer, input first (4,20,20,2)", check=_widths)
    lambda_schedule: list[list[float]] | None = setting(
        [[1e-3, 1]], "constant (0.01) or phases value:steps,... stretched to the run", check=_phases,
        stack=True, flag="lambda")
    lambda_milestones: list[list[float]] | None = setting(
        None, "multiply the first lambda at fractions of the run: 0.25:10,0.75:0.1",
        check=_milestones, stack=True)
    A: float | None = setting(CostSettings.A, "in-layer scale, locality (0: plain L1)", check=_cost_settings_check,
                              stack=True)
    swap_A: float | None = setting(None, "in-layer scale when judging swaps (default: A)",
                                   check=_float, stack=True)
    y_star: float | None = setting(CostSettings.y_star, "layer gap", check=_cost_settings_check, stack=True)
    p: float | None = setting(CostSettings.p, "distance norm: 1 = L1, 2 = L2, inf", check=_cost_settings_check,
                              stack=True)
    reduction: str | None = setting(CostSettings.reduction, "sum | mean (each tensor's mean, summed)",
                                    check=_cost_settings_check, stack=True)
    distance_free: list[str] | None = setting(
        list(CostSettings.distance_free), "weights charged |w| * y_star whatever their length (last: the output layer)",
        check=_cost_settings_check, stack=True)
    bias_free_fraction: float | None = setting(0.0, "biases uncharged for this fraction of the run",
                                               check=_fraction, stack=True)
    top_k: int | None = setting(None, "neurons per layer tried in a swap pass (all when unset)",
                                check=_int, stack=True)
    swap_every: int | None = setting(DEFAULT_SWAP_EVERY, "steps between swap passes", check=_int,
                                     stack=True)
    swap_mode: str | None = setting(
        DEFAULT_SWAP_MODE, "greedy (the paper's) | exact (linear assignment) | untangle (modules "
        "side by side)", check=_one_of(_swap_modes), choices=_swap_modes, stack=True)
    eval_every: int | None = setting(None, "steps between evaluations (steps/20, at most 500)",
                                     check=_int)
    checkpoint_every: int | None = setting(None, "steps between checkpoints (at most 2000)",
                                           check=_int, stack=True)
    animate: bool | None = setting(False, "store snapshots for evolution.gif and the report's slider",
                                   stack=True)
    animate_frames: int | None = setting(40, "snapshots stored with animate", check=_int, stack=True)
    data_dir: str | None = setting(None, "MNIST IDX files or a torchvision MNIST folder "
                                   "(default: the built-in 5k subset)", stack=True)
    threads: int | None = setting(1, "torch threads while training (small networks: 1 is fastest)",
                                  check=_int)
    dtype: str | None = setting("float32", "float32 | float64 (as some notebooks train)",
                                check=_one_of(DTYPES), choices=DTYPES)

    def __post_init__(self):
        """The one validation path, however the config was built (keywords, dict, flags)."""
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a task name (a string), got {_short(self.task)}")
        for s in SETTINGS:
            value = getattr(self, s.name)
            if value is None:
                continue
            _check_type(s, value)
            if s.check is not None:
                s.check(value, s.name)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from plain data (a JSON file), refusing unknown keys by name."""
        if not isinstance(d, dict):
            raise ValueError(f"a config is a JSON object of keys and values, got a {type(d).__name__}")
        d = dict(d)
        if "last_distance_free" in d:  # the name before CostSettings (saved configs)
            d.setdefault("distance_free", ["last"] if d.pop("last_distance_free") else [])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - names))
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                             f"{', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self, task=None) -> TrainConfig:
        """A copy with the task's defaults filled in, rescaled to ``steps``, and checked."""
        from ..tasks import get_task

        task = task or get_task(self.task)
        method = self.method or task.defaults.get("method") or default_of("method")
        base = {s.name: default_of(s.name) for s in SETTINGS}
        base.update(task.defaults)
        base.update(task.method_defaults.get(method, {}))
        base["method"] = method
        out = dataclasses.replace(self)
        for s in SETTINGS:
            if getattr(out, s.name) is None and base.get(s.name) is not None:
                setattr(out, s.name, copy.deepcopy(base[s.name]))
        if out.swap_A is None:
            out.swap_A = out.A
        if out.lambda_milestones is not None:
            out.lambda_schedule = milestone_schedule(out.lambda_schedule[0][0], out.lambda_milestones)
            out.lambda_milestones = None
        if out.eval_every is None:
            out.eval_every = max(1, min(out.steps // 20 or 1, 500))
        if out.checkpoint_every is None:
            out.checkpoint_every = max(1, min(out.steps, 2000))
        out = dataclasses.replace(out)  # checked again, now complete
        if task.kind == "regression" and out.loss == "ce":
            raise ValueError(f"loss 'ce' (cross-entropy) needs class labels; {out.task} is a "
                             "regression task: use loss 'mse'")
        return out

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    def cost_settings(self, base: CostSettings | None = None) -> CostSettings:
        """The run's :class:`~bimt.core.settings.CostSettings`: ``base`` (a module's own, or the
        defaults) with every cost setting this config sets."""
        given = {k: getattr(self, k) for k in COST_FIELDS if getattr(self, k) is not None}
        return (base or CostSettings()).replace(**given)


def _check_type(s: Setting, value) -> None:
    ok, what = _TYPES[s.type]
    if not ok(value):
        raise ValueError(f"config key {s.name!r} must be {what} or null, got {_short(value)}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (
        isinstance(x, float) and math.isnan(x))


_TYPES = {
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    "float": (_number, "a number"),
    "str": (lambda x: isinstance(x, str), "a string"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "list[int]": (lambda x: isinstance(x, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in x), "a list of integers"),
    "list[str]": (lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x),
                  "a list of strings"),
    "list[list[float]]": (lambda x: isinstance(x, list) and all(
        isinstance(v, list) and len(v) == 2 and all(
            isinstance(u, (int, float)) and not isinstance(u, bool) for u in v) for v in x),
        "a list of [number, number] pairs"),
}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _declarations() -> list[Setting]:
    out = []
    for f in dataclasses.fields(TrainConfig):
        s = f.metadata.get("setting")
        if s is not None:
            kind = str(f.type).split("|")[0].strip()
            out.append(dataclasses.replace(s, name=f.name, type=kind))
    return out


#: Every setting, in declaration order.
SETTINGS: list[Setting] = _declarations()
#: The settings that runs of one stack may differ in (everything else splits them into stacks).
MEMBER_FIELDS = frozenset(s.name for s in SETTINGS if s.stack)


def default_of(name: str):
    """The declared global default of a setting."""
    return copy.deepcopy(next(s.default for s in SETTINGS if s.name == name))


#: Largest config file read: a config is a few hundred bytes; this refuses garbage early.
MAX_CONFIG_BYTES = 1_000_000


def read_config_file(path) -> dict:
    """A config file's JSON object, refusing (with one line) what cannot be a config: a missing,
    huge, deeply nested, undecodable or non-object file."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path} nests too deeply to be a config (a config is one JSON object "
                         "of keys and values)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of config keys, got a {type(data).__name__}")
    return data


# -- the lambda schedule -----------------------------------------------------------------------
def milestone_schedule(start: float, milestones) -> list[list[float]]:
    """The paper's multiplicative form as phases: ``start``, times ``factor`` from ``fraction`` on.

    ``milestone_schedule(1e-3, [[0.25, 10], [0.75, 0.1]])`` is ``1e-3, 1e-2, 1e-3`` for a quarter,
    a half and a quarter of the run.
    """
    points = sorted((float(f), float(k)) for f, k in _milestones(milestones, "lambda_milestones"))
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
