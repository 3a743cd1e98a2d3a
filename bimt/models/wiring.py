"""A model together with its geometry: the handle that reads its cost and swaps its neurons.

:class:`Wiring` binds a module to a :class:`PermutationSpec` and to cost settings (``A``,
``y_star``, norm, ...). :func:`attach` derives the spec of a plain ``nn.Sequential`` of
``nn.Linear`` layers and elementwise activations, in the way ``torch.nn.utils.prune`` attaches
to any module: the module keeps its class, and two buffers plus two hooks keep its input and
output order fixed while its neurons move.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..cost import ConnectionCost
from ..geometry import layout as make_layout
from ..spec import Group, PermutationSpec
from ..swap import SwapReport, apply_permutation, swap_pass

__all__ = ["Wiring", "attach", "sequential_spec", "ELEMENTWISE"]

#: Layers that act on each neuron alone, so a permutation passes straight through them.
ELEMENTWISE = (
    nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink,
    nn.ReLU6, nn.PReLU, nn.Identity, nn.Dropout, nn.AlphaDropout,
)

INPUT_ORDER = "bimt_input_order"
OUTPUT_ORDER = "bimt_output_order"


class Wiring:
    """A module, its permutation spec and its connection-cost settings.

    ``cost()`` is differentiable; ``swap()`` runs one greedy or exact pass and returns a
    :class:`SwapReport`. Pass your optimizer to ``swap`` so its state moves with the weights.
    """

    def __init__(self, module: nn.Module, spec: PermutationSpec, **cost_settings):
        spec.check(module)
        self.module = module
        self.spec = spec
        self.connection_cost = ConnectionCost(spec, **cost_settings)

    def cost(self) -> torch.Tensor:
        return self.connection_cost.value(self.module)

    def swap(
        self,
        top_k: int | None = None,
        mode: str = "greedy",
        optimizer=None,
        groups: Iterable[str] | None = None,
        cost: ConnectionCost | None = None,
    ) -> SwapReport:
        return swap_pass(
            self.module, self.spec, cost or self.connection_cost, top_k, mode, optimizer, groups
        )

    def permute(self, group: str, perm, optimizer=None) -> None:
        """Apply a permutation by hand: slot ``s`` of ``group`` takes the neuron at ``perm[s]``."""
        apply_permutation(self.module, self.spec, group, perm, optimizer)

    def with_cost(self, **changes) -> ConnectionCost:
        """A cost on the same spec with some settings changed (``A=0`` for plain L1, ...)."""
        c = self.connection_cost
        settings = dict(A=c.A, y_star=c.y_star, p=c.p, bias=c.bias, reduction=c.reduction,
                        distance_free=c.distance_free)
        settings.update(changes)
        return ConnectionCost(self.spec, **settings)

    def __repr__(self) -> str:
        c = self.connection_cost
        groups = ", ".join(f"{n}[{g.size}{'*' if g.frozen else ''}]" for n, g in self.spec.groups.items())
        return f"Wiring({type(self.module).__name__}: {groups}; A={c.A}, y*={c.y_star}, p={c.p:g})"


def sequential_spec(
    module: nn.Sequential,
    layout: str | Sequence = "line",
    freeze_inputs: bool = False,
    freeze_outputs: bool = False,
    input_order: str | None = INPUT_ORDER,
    output_order: str | None = OUTPUT_ORDER,
    prefix: str = "",
) -> PermutationSpec:
    """The spec of a Sequential of ``nn.Linear`` and elementwise layers: one group per layer."""
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential, got {type(module).__name__}")
    linears = []
    for i, layer in enumerate(module):
        if isinstance(layer, nn.Linear):
            linears.append((f"{prefix}{i}", layer))
        elif isinstance(layer, ELEMENTWISE):
            if isinstance(layer, nn.PReLU) and layer.num_parameters != 1:
                raise ValueError(
                    f"layer {i} (PReLU with {layer.num_parameters} parameters) is per-neuron, "
                    "not elementwise; use PReLU() with one shared parameter"
                )
        else:
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) cannot be handled: bimt derives specs for "
                "nn.Linear and elementwise activations "
                f"({', '.join(c.__name__ for c in ELEMENTWISE[:6])}, ...); "
                "write a PermutationSpec for other layers"
            )
    if not linears:
        raise ValueError("the Sequential has no nn.Linear layer to wire")
    for (na, a), (nb, b) in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(
                f"layer {na} gives {a.out_features} features but layer {nb} expects {b.in_features}"
            )
    widths = [linears[0][1].in_features] + [lin.out_features for _, lin in linears]
    layouts = _per_layer(layout, len(widths))
    groups = {}
    for i, (w, kind) in enumerate(zip(widths, layouts)):
        frozen = (i == 0 and freeze_inputs) or (i == len(widths) - 1 and freeze_outputs)
        groups[f"layer{i}"] = Group(f"layer{i}", make_layout(kind, w), frozen=frozen)
    axes, charges = {}, {}
    for i, (name, lin) in enumerate(linears):
        axes[f"{name}.weight"] = (f"layer{i + 1}", f"layer{i}")
        charges[f"{name}.weight"] = "weight"
        if lin.bias is not None:
            axes[f"{name}.bias"] = (f"layer{i + 1}",)
            charges[f"{name}.bias"] = "bias"
    if input_order:
        axes[input_order] = ("layer0",)
    if output_order:
        axes[output_order] = (f"layer{len(widths) - 1}",)
    return PermutationSpec(groups, axes, charges)


def _per_layer(layout, n_layers: int) -> list:
    if isinstance(layout, str):
        return [layout] * n_layers
    if isinstance(layout, (np.ndarray, torch.Tensor)) and layout.ndim <= 2 and (
        layout.dtype.is_floating_point if isinstance(layout, torch.Tensor)
        else np.issubdtype(layout.dtype, np.number)
    ):
        # one (n, d) (or (n,)) array of coordinates: the same layout for every layer; a list
        # (or a 3-D array) gives one layout per layer
        return [layout] * n_layers
    layout = list(layout)
    if len(layout) != n_layers:
        raise ValueError(f"layout lists {len(layout)} layers, but the network has {n_layers}")
    return layout


def attach(
    module: nn.Sequential,
    *,
    A: float = 1.0,
    y_star: float = 1.0,
    p: float = 1.0,
    bias: bool = True,
    reduction: str = "sum",
    layout: str | Sequence = "line",
    freeze_inputs: bool = False,
    freeze_outputs: bool = False,
) -> Wiring:
    """Give a user's ``nn.Sequential`` a geometry; returns the :class:`Wiring` handle.

    The module keeps its class and its forward; it gains two buffers (``bimt_input_order``,
    ``bimt_output_order``) and two hooks that apply them, so its inputs and outputs keep their
    order while input and output neurons move. Attaching twice reuses them.
    """
    spec = sequential_spec(module, layout, freeze_inputs, freeze_outputs)
    settings = dict(A=A, y_star=y_star, p=p, bias=bias, reduction=reduction)
    ConnectionCost(spec, **settings)  # refuse bad settings before the module is touched
    first = next(m for m in module if isinstance(m, nn.Linear))
    last = [m for m in module if isinstance(m, nn.Linear)][-1]
    device = first.weight.device
    if not hasattr(module, INPUT_ORDER):
        module.register_buffer(INPUT_ORDER, torch.arange(first.in_features, device=device))
        module.register_buffer(OUTPUT_ORDER, torch.arange(last.out_features, device=device))
        module.register_forward_pre_hook(_order_inputs)
        module.register_forward_hook(_order_outputs)
    else:
        sizes = (getattr(module, INPUT_ORDER).numel(), getattr(module, OUTPUT_ORDER).numel())
        if sizes != (first.in_features, last.out_features):
            raise ValueError(
                f"this Sequential was attached with {sizes[0]} inputs and {sizes[1]} outputs, "
                f"but now has {first.in_features} inputs and {last.out_features} outputs; "
                "attach a fresh module after changing its interface"
            )
    return Wiring(module, spec, **settings)


def _order_inputs(module, args):
    x = args[0]
    return (x.index_select(-1, getattr(module, INPUT_ORDER)),) + tuple(args[1:])


def _order_outputs(module, args, output):
    return restore_order(output, getattr(module, OUTPUT_ORDER))


def restore_order(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Outputs by slot -> outputs in the interface order (slot ``s`` holds output ``order[s]``)."""
    return torch.zeros_like(y).index_copy(-1, order, y)
