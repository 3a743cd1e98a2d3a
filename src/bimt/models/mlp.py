"""BioMLP: the paper's fully connected network, placed in space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.cost import CostSettings
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .wiring import Wiring, WiredModule, _per_layer, restore_order

__all__ = ["BioMLP", "ACTIVATIONS", "make_activation"]

#: Activation names a BioMLP accepts; each acts on one neuron alone, so swaps pass through it.
ACTIVATIONS = {
    "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}


def make_activation(activation) -> nn.Module:
    """An activation module from its name in :data:`ACTIVATIONS`, or the module itself."""
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]()
    raise ValueError(
        f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)} or an nn.Module"
    )


class BioMLP(WiredModule):
    """A fully connected network whose neurons have positions.

    Parameters
    ----------
    widths : neurons per layer, input first, e.g. ``[4, 20, 20, 2]``.
    activation : ``silu`` (default, as the paper), ``relu``, ``gelu``, ``tanh``, ... or a module.
    layout : ``line`` | ``grid`` | ``ring`` | an ``(n, d)`` array, for all layers or one per layer
        (MNIST: ``["grid", "grid", "grid", "ring"]``). For token inputs the first entry places the
        ``widths[0] / n_tokens`` embedding positions.
    vocab_size, n_tokens : token inputs (modular addition): each of the ``n_tokens`` tokens is
        embedded by one trainable ``vocab_size x widths[0]/n_tokens`` table, and the embeddings
        are concatenated; the tokens' embedding neurons are folds sharing one position each.
    bias : linear layers with biases (as ``nn.Linear``).
    freeze_inputs, freeze_outputs : those neurons never move (MNIST pixels).
    settings, **cost_settings : the connection cost's settings (:class:`bimt.CostSettings`, its
        defaults when omitted), with any of its fields given as keywords on top (``A=2.0``,
        ``distance_free=["last"]`` for the MNIST output layer, ``bias=False``).

    The model attaches itself: ``model.bimt`` (also ``model.wiring``) is its
    :class:`bimt.Wiring`.

    Inputs and outputs keep their order whatever the swaps: ``input_order`` and
    ``output_order`` record which input or output each slot holds, and ``forward`` applies them.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation="silu",
        layout="line",
        bias: bool = True,
        vocab_size: int | None = None,
        n_tokens: int = 2,
        freeze_inputs: bool = False,
        freeze_outputs: bool = False,
        settings: CostSettings | None = None,
        input_labels: Sequence[str] | None = None,
        output_labels: Sequence[str] | None = None,
        **cost_settings,
    ):
        super().__init__()
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 layers (input and output), got {widths}")
        try:
            for w in widths:
                positive_int(w, "width")
        except ValueError:
            raise ValueError(f"every width must be a positive integer, got {widths}") from None
        self.widths = widths
        self.activation = make_activation(activation)
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:])
        )
        layouts = _per_layer(layout, len(widths))
        in_slots = widths[0]
        if vocab_size is not None:
            positive_int(vocab_size, "vocab_size")
            if (isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0
                    or widths[0] % n_tokens):
                raise ValueError(
                    f"n_tokens={n_tokens!r} must be a positive integer that divides the input "
                    f"width {widths[0]} (each token's embedding is one fold of the input layer)"
                )
            in_slots = widths[0] // n_tokens
            self.n_tokens = n_tokens
            self.embedding = nn.Parameter(torch.randn(vocab_size, in_slots))
        else:
            self.embedding = None
            self.register_buffer("input_order", torch.arange(widths[0]))
        self.register_buffer("output_order", torch.arange(widths[-1]))

        groups = {}
        for i, (w, kind) in enumerate(zip([in_slots] + widths[1:], layouts)):
            frozen = (i == 0 and freeze_inputs) or (i == len(widths) - 1 and freeze_outputs)
            groups[f"layer{i}"] = Group(f"layer{i}", make_layout(kind, w), frozen=frozen)
        last = f"layer{len(widths) - 1}"
        axes, charges = {"output_order": (last,)}, {}
        if self.embedding is None:
            axes["input_order"] = ("layer0",)
        else:
            axes["embedding"] = (None, "layer0")
            charges["embedding"] = "embedding"
        for i, lin in enumerate(self.linears):
            axes[f"linears.{i}.weight"] = (f"layer{i + 1}", f"layer{i}")
            charges[f"linears.{i}.weight"] = "weight"
            if bias:
                axes[f"linears.{i}.bias"] = (f"layer{i + 1}",)
                charges[f"linears.{i}.bias"] = "bias"
        free = [f"activation.{n}" for n, _ in
                [*self.activation.named_parameters(), *self.activation.named_buffers()]]
        self.spec = PermutationSpec(groups, axes, charges, free=free)
        settings = CostSettings.of(settings, **cost_settings)
        self.bimt = Wiring(self, self.spec, settings, input_labels=input_labels,
                           output_labels=output_labels, probes={"hidden": "hidden"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return restore_order(self._layers(x)[-1], self.output_order)

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of every neuron layer, in slot order (input layer first)."""
        return self._layers(x, keep=True)

    def _layers(self, x: torch.Tensor, keep: bool = False) -> list[torch.Tensor]:
        if self.embedding is not None:
            x = self.embedding[x].flatten(-2)
        else:
            if x.shape[-1] != len(self.input_order):  # index_select would drop or repeat features
                raise ValueError(f"this BioMLP takes {len(self.input_order)} input features, got "
                                 f"inputs of shape {tuple(x.shape)}")
            x = x.index_select(-1, self.input_order)
        layers = [x]
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < last:
                x = self.activation(x)
            if keep:
                layers.append(x)
        return layers if keep else [x]

    def extra_repr(self) -> str:
        tokens = f", vocab={self.embedding.shape[0]}x{self.n_tokens}" if self.embedding is not None else ""
        return f"widths={self.widths}{tokens}"
