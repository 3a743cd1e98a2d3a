"""bimt: Brain-Inspired Modular Training.

Neurons get positions, every connection costs its length times its strength, and neurons swap
places to shorten the wiring, so trained networks come out sparse and modular.

The core (geometry, spec, cost, swap, models) is imported here; ``bimt.fit`` (``bimt.train``),
``bimt.runs``, ``bimt.tasks``, ``bimt.analysis`` and ``bimt.viz`` load on first use. Any module
gets its geometry with ``bimt.attach(module, spec)``, which keeps the handle on it
(``module.bimt``); ``bimt.wiring_of(x)`` finds it.
"""

import importlib

from . import geometry
from .cost import ConnectionCost, CostSettings
from .models import BioMLP, BioTransformer, Wiring, attach, wiring_of
from .spec import Group, PermutationSpec
from .swap import SOLVERS, SwapReport, apply_permutation, register_solver, swap_pass

__version__ = "0.1.0"

_LAZY_MODULES = ("analysis", "batched", "bench", "reproduce", "runs", "tasks", "train", "viz")
_LAZY_NAMES = {"TrainConfig": "config", "load_model": "runs", "Task": "tasks", "task_from_arrays": "tasks",
               "task_from_function": "tasks", "register_task": "tasks"}

__all__ = [
    "BioMLP", "BioTransformer", "ConnectionCost", "CostSettings", "Group", "PermutationSpec",
    "SwapReport", "Wiring", "apply_permutation", "attach", "wiring_of", "geometry", "swap_pass",
    "register_solver", "SOLVERS", "fit", "fit_many", "TrainConfig", "load_model", "Task", "task_from_arrays",
    "task_from_function", "register_task", "analysis", "viz", "tasks", "runs",
]


def __getattr__(name):
    if name == "fit":  # ``bimt.fit(task=..., steps=...)``: the trainer (with ``seeds=[...]``, batched)
        return importlib.import_module(".batched", __name__).fit
    if name == "fit_many":
        return importlib.import_module(".batched", __name__).fit_many
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'bimt' has no attribute {name!r}")
