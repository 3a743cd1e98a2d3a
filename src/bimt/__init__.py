"""bimt: Brain-Inspired Modular Training.

Neurons get positions, every connection costs its length times its strength, and neurons swap
places to shorten the wiring, so trained networks come out sparse and modular.

Every name loads on first use (``bimt.BioMLP`` imports torch then), so ``import bimt`` and
``bimt --help`` stay fast. Any module gets its geometry with ``bimt.attach(module, spec)``, which
keeps the handle on it (``module.bimt``); ``bimt.wiring_of(x)`` finds it.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Subpackages reachable as ``bimt.NAME`` (see docs/ARCHITECTURE.md for the layers).
_SUBPACKAGES = ("core", "models", "tasks", "training", "analysis", "viz", "experiments")
#: Public names and the module that defines each.
_NAMES = {
    "fit": "training.loop", "fit_many": "training.loop", "TrainConfig": "training.config",
    "TrainResult": "training.loop", "load_model": "training.runs",
    "Task": "tasks", "task_from_arrays": "tasks", "task_from_function": "tasks", "register_task": "tasks",
    "ConnectionCost": "core.cost", "CostSettings": "core.cost", "Group": "core.spec",
    "PermutationSpec": "core.spec", "SOLVERS": "core.swap", "SwapReport": "core.swap",
    "apply_permutation": "core.swap", "register_solver": "core.swap", "swap_pass": "core.swap",
    "BioMLP": "models", "BioRNN": "models", "BioCNN": "models", "BioTransformer": "models", "BioGPT": "models",
    "Wiring": "models", "attach": "models", "wiring_of": "models", "register_spec_builder": "models",
}

__all__ = sorted(_NAMES) + ["analysis", "viz", "tasks"]

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors (never run)
    from . import analysis, core, experiments, models, tasks, training, viz
    from .core.cost import ConnectionCost, CostSettings
    from .core.spec import Group, PermutationSpec
    from .core.swap import SOLVERS, SwapReport, apply_permutation, register_solver, swap_pass
    from .models import (
        BioCNN, BioGPT, BioMLP, BioRNN, BioTransformer, Wiring, attach, register_spec_builder, wiring_of,
    )
    from .tasks import Task, register_task, task_from_arrays, task_from_function
    from .training.config import TrainConfig
    from .training.loop import TrainResult, fit, fit_many
    from .training.runs import load_model


def __getattr__(name):
    if name in _SUBPACKAGES:
        return _import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(_import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'bimt' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(_SUBPACKAGES) | {"__version__"})
