"""bimt: Brain-Inspired Modular Training.

Neurons get positions, every connection costs its length times its strength, and neurons swap
places to shorten the wiring, so trained networks come out sparse and modular.

Every name loads on first use (``bimt.BioMLP`` imports torch then), so ``import bimt`` and
``bimt --help`` stay fast. Any module gets its geometry with ``bimt.attach(module, spec)``, which
keeps the handle on it (``module.bimt``); ``bimt.wiring_of(x)`` finds it.
"""

import importlib

__version__ = "0.1.0"

_LAZY_MODULES = ("analysis", "batched", "bench", "geometry", "reproduce", "runs", "tasks", "train", "view", "viz")
_LAZY_NAMES = {"TrainConfig": "config", "load_model": "runs", "Task": "tasks", "task_from_arrays": "tasks",
               "task_from_function": "tasks", "register_task": "tasks",
               "ConnectionCost": "cost", "CostSettings": "cost", "BioMLP": "models", "BioRNN": "models", "BioCNN": "models",
               "BioTransformer": "models", "BioGPT": "models", "Wiring": "models", "attach": "models",
               "wiring_of": "models", "Group": "spec", "PermutationSpec": "spec",
               "SOLVERS": "swap", "SwapReport": "swap", "apply_permutation": "swap",
               "register_solver": "swap", "swap_pass": "swap"}

__all__ = [
    "BioCNN", "BioGPT", "BioMLP", "BioRNN", "BioTransformer", "ConnectionCost", "CostSettings", "Group", "PermutationSpec",
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


def __dir__():
    return sorted(set(globals()) | set(__all__))
