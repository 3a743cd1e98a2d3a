"""The engine every model shares: positions, permutation specs, the connection cost, swaps.

Nothing here knows a model class: a network is its :class:`~bimt.core.spec.PermutationSpec`.
Submodules load on first use (``bimt.core.geometry``), so the torch-free ones (``settings``,
``checks``) stay light for the command line.
"""

from importlib import import_module as _import_module

_SUBMODULES = ("checks", "communicability", "cost", "crossings", "fileio", "geometry", "progress",
               "recurrent", "settings", "spec", "swap")


def __getattr__(name):
    if name in _SUBMODULES:
        return _import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bimt.core' has no attribute {name!r}")
