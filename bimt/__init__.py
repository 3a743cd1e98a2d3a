"""bimt: Brain-Inspired Modular Training.

Neurons get positions, every connection costs its length times its strength, and neurons swap
places to shorten the wiring, so trained networks come out sparse and modular.
"""

from . import geometry
from .cost import ConnectionCost
from .models import BioMLP, Wiring, attach
from .spec import Group, PermutationSpec
from .swap import SwapReport, apply_permutation, swap_pass

__version__ = "0.1.0"

__all__ = [
    "BioMLP", "ConnectionCost", "Group", "PermutationSpec", "SwapReport", "Wiring",
    "apply_permutation", "attach", "geometry", "swap_pass",
]
