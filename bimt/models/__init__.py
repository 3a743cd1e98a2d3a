"""Models with positions: BioMLP, and adapters that wire users' own modules."""

from .mlp import ACTIVATIONS, BioMLP
from .wiring import Wiring, attach, sequential_spec

__all__ = ["BioMLP", "Wiring", "attach", "sequential_spec", "ACTIVATIONS"]
