"""Models with positions: BioMLP, BioRNN, BioCNN, BioTransformer, BioGPT, and the wiring that any module can carry."""

from .conv import BioCNN
from .gpt import BioGPT
from .mlp import ACTIVATIONS, BioMLP
from .rnn import BioRNN
from .transformer import BioTransformer
from .families import register_spec_builder
from .wiring import Wiring, attach, sequential_spec, wiring_of

__all__ = ["BioCNN", "BioGPT", "BioMLP", "BioRNN", "BioTransformer", "Wiring", "attach", "wiring_of",
           "sequential_spec", "ACTIVATIONS", "register_spec_builder"]
