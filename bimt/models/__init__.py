"""Models with positions: BioMLP, BioTransformer, and the wiring that any module can carry."""

from .mlp import ACTIVATIONS, BioMLP
from .transformer import BioTransformer
from .wiring import Wiring, attach, sequential_spec, wiring_of

__all__ = ["BioMLP", "BioTransformer", "Wiring", "attach", "wiring_of", "sequential_spec",
           "ACTIVATIONS"]
