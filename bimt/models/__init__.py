"""Models with positions: BioMLP, BioTransformer, and adapters that wire users' own modules."""

from .mlp import ACTIVATIONS, BioMLP
from .transformer import BioTransformer
from .wiring import Wiring, attach, sequential_spec

__all__ = ["BioMLP", "BioTransformer", "Wiring", "attach", "sequential_spec", "ACTIVATIONS"]
