"""A model together with its geometry: the handle that reads its cost and swaps its neurons.

:class:`Wiring` binds a module to a :class:`PermutationSpec`, to :class:`CostSettings` and to
a view for drawing. :func:`attach` puts one on any module, in the way ``torch.nn.utils.prune``
keeps its state on the module: ``module.bimt``. For a plain ``nn.Sequential`` of ``nn.Linear``
layers and elementwise activations it derives the spec itself, and two buffers plus two hooks
keep the input and output order fixed while its neurons move; any other module brings a
hand-written spec, checked against it. :func:`wiring_of` is how every part of bimt finds it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.checks import one_of, positive_int
from ..core.cost import ConnectionCost, CostSettings
from ..core.settings import DEFAULT_SWAP_EVERY
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec, tensor
from ..core.swap import DEFAULT_MODE, SwapReport, apply_permutation, swap_pass
from .drawing import VIEWS, default_view
from .families import derive_spec

__all__ = ["Wiring", "attach", "wiring_of", "has_wiring", "sequential_spec", "default_view", "ELEMENTWISE", "VIEWS"]

#: Layers that act on each neuron alone, so a permutation passes straight through them.
ELEMENTWISE = (
    nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink,
    nn.ReLU6, nn.PReLU, nn.Identity, nn.Dropout, nn.AlphaDropout,
)

#: Per-feature normalisation layers: permutation-equivariant, their parameters and running
#: statistics move with the features they normalise.
NORMS = (nn.BatchNorm1d, nn.LayerNorm)

INPUT_ORDER = "bimt_input_order"
OUTPUT_ORDER = "bimt_output_order"


class Wiring:
    """A module, its permutation spec, its cost settings and how to draw it: bimt's handle.

    Made by :func:`attach` (or by BioMLP / BioTransformer for themselves) and kept on the module
    as ``module.bimt``; :func:`wiring_of` finds it. ``cost()`` is differentiable; ``swap()``
    runs one pass and returns a :class:`SwapReport` (pass your optimizer so its state moves with
    the weights); ``step()`` is the whole BIMT step for a loop of your own; ``export()`` gives
    the plain module back.

    ``view`` names the picture (:data:`bimt.models.drawing.VIEWS`: ``layered``, ``layered3d``,
    ``graph`` for any spec, ``channels``, and the families' ``transformer``, ``rnn``, ...;
    :func:`bimt.viz.plot` draws it). ``probes`` maps a name (``"hidden"``,
    ``"residual_stream"``) to a method of the module that analysis may call with inputs.
    """

    def __init__(self, module: nn.Module, spec: PermutationSpec, settings: CostSettings | None = None,
                 *, view: str | None = None, input_labels: Sequence[str] | None = None,
                 output_labels: Sequence[str] | None = None, probes: dict | None = None,
                 check: bool = True, **cost_settings):
        if check:
            spec.check(module)
        self.module = module
        self.spec = spec
        self.connection_cost = ConnectionCost(spec, settings, **cost_settings)
        self.view = view or default_view(spec)
        one_of(self.view, VIEWS, "view")
        self.input_labels = None if input_labels is None else list(input_labels)
        self.output_labels = None if output_labels is None else list(output_labels)
        self.probes = dict(probes or {})
        self.steps_taken = 0
        self._hooks: tuple[int, ...] = ()  # ids of the order hooks attach() added

    # -- settings ---------------------------------------------------------------------------
    @property
    def settings(self) -> CostSettings:
        return self.connection_cost.settings

    @settings.setter
    def settings(self, value: CostSettings) -> None:
        self.connection_cost = ConnectionCost(self.spec, value)

    def with_cost(self, **changes) -> ConnectionCost:
        """A cost on the same spec with some settings changed (``A=0`` for plain L1, ...)."""
        return ConnectionCost(self.spec, self.settings.replace(**changes))

    # -- what it does ---------------------------------------------------------------------------
    def cost(self) -> torch.Tensor:
        return self.connection_cost.value(self.module)

    def swap(
        self,
        top_k: int | None = None,
        mode: str = DEFAULT_MODE,
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

    def step(self, optimizer, lam: float, *, swap_every: int | None = DEFAULT_SWAP_EVERY, top_k: int | None = None,
             mode: str = DEFAULT_MODE) -> SwapReport | None:
        """One BIMT step for your own loop, after ``loss.backward()``: add ``lam`` times the
        cost's gradient to ``.grad``, ``optimizer.step()``, and every ``swap_every`` calls a swap
        pass that moves the optimizer's state too. Returns the pass's report, else ``None``."""
        positive_int(swap_every, "swap_every", allow_none=True)
        self.connection_cost.add_grad_(self.module, lam)
        optimizer.step()
        self.steps_taken += 1
        if swap_every is not None and self.steps_taken % swap_every == 0:
            return self.swap(top_k, mode, optimizer)
        return None

    def probe(self, name: str, x):
        """Run the module's ``name`` probe (see ``probes``) on ``x``."""
        if name not in self.probes:
            raise TypeError(
                f"the {type(self.module).__name__} offers no {name!r} probe (it offers: "
                f"{', '.join(self.probes) or 'none'}); record the activations yourself "
                "(e.g. with forward hooks) and pass arrays"
            )
        return getattr(self.module, self.probes[name])(x)

    def order(self, group: str) -> torch.Tensor | None:
        """The order buffer of an interface group (slot ``s`` holds feature ``order[s]``)."""
        for name, axes in self.spec.axes.items():
            if axes == (group,) and name not in self.spec.charges:
                t = tensor(self.module, name)
                if not t.is_floating_point():
                    return t
        return None

    def export(self) -> nn.Module:
        """A deep copy in the interface order: every order buffer folded into the weights (so
        it reads ``0..n-1``), and for an attached module its hooks, order buffers and ``bimt``
        handle removed. Its ``state_dict`` loads (strictly) into a fresh instance of the
        module's class and computes the same outputs. BioMLP and BioTransformer stay what they
        are (their orders are part of the class), with identity orders."""
        copy_ = copy.deepcopy(self.module)
        wiring = wiring_of(copy_) if has_wiring(copy_) else Wiring(copy_, self.spec, self.settings,
                                                                    check=False)
        with torch.no_grad():
            for g in self.spec.interface():
                order = wiring.order(g)
                if order is not None:
                    wiring.permute(g, torch.argsort(order).cpu().numpy())
        if self._hooks:
            for hook_id in self._hooks:
                for table in ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                              "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                    vars(copy_).get(table, {}).pop(hook_id, None)
            for name in (INPUT_ORDER, OUTPUT_ORDER):
                copy_._buffers.pop(name, None)
        if not wiring.owned and has_wiring(copy_):
            del copy_.bimt
        return copy_

    @property
    def owned(self) -> bool:
        """Whether the module's class made this wiring itself (BioMLP, BioTransformer)."""
        return isinstance(self.module, WiredModule)

    def __repr__(self) -> str:
        c = self.settings
        groups = ", ".join(f"{n}[{g.size}{'*' if g.frozen else ''}]" for n, g in self.spec.groups.items())
        return f"Wiring({type(self.module).__name__}: {groups}; A={c.A}, y*={c.y_star}, p={c.p:g})"


def _label_property(which: str) -> property:
    def get(self):
        return getattr(self.bimt, which)

    def set_(self, labels):
        setattr(self.bimt, which, None if labels is None else list(labels))

    return property(get, set_, doc=f"The wiring's {which} (names of the features, interface order).")


class WiredModule(nn.Module):
    """Base of the models that build their spec and attach themselves (BioMLP, BioTransformer):
    the wiring at hand as methods, and its labels as attributes."""

    owns_wiring = True
    wiring = property(lambda self: self.bimt, doc="The model's :class:`Wiring` (``self.bimt``).")
    input_labels = _label_property("input_labels")
    output_labels = _label_property("output_labels")

    def cost(self) -> torch.Tensor:
        """The connection cost (differentiable) under this model's settings."""
        return self.bimt.cost()

    def swap(self, top_k: int | None = None, mode: str = DEFAULT_MODE, optimizer=None, **kw) -> SwapReport:
        """One swap pass over every movable group; see :func:`bimt.swap_pass`."""
        return self.bimt.swap(top_k, mode, optimizer, **kw)


def has_wiring(x) -> bool:
    """Whether ``x`` is a Wiring or a module carrying one (``module.bimt``)."""
    return isinstance(x, Wiring) or (isinstance(x, nn.Module) and isinstance(x.__dict__.get("bimt"), Wiring))


def wiring_of(x) -> Wiring:
    """The one way from "a thing" to its :class:`Wiring`: a Wiring, a module with a ``bimt``
    handle (attached, BioMLP, BioTransformer, ...) or a ``(module, spec)`` pair. A run
    directory is loaded first: ``bimt.load_model(run_dir)`` gives its model."""
    if isinstance(x, Wiring):
        return x
    if has_wiring(x):
        return x.__dict__["bimt"]
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], PermutationSpec):
        return Wiring(x[0], x[1], check=False)
    if isinstance(x, (str, os.PathLike)):
        raise TypeError(f"{str(x)!r} is a path, not a model: load a run directory's model with "
                        "bimt.load_model(path) (it returns the model and its config)")
    raise TypeError(
        f"{type(x).__name__} has no bimt wiring: pass a module given one by bimt.attach(module, "
        "spec) (BioMLP and BioTransformer have theirs) or a Wiring"
    )


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
    linears, free, norms = [], [], []
    for i, layer in enumerate(module):
        if isinstance(layer, nn.Linear):
            linears.append((f"{prefix}{i}", layer))
        elif isinstance(layer, NORMS):
            norms.append((f"{prefix}{i}", layer, len(linears)))  # normalises layer len(linears)
        elif isinstance(layer, ELEMENTWISE):
            free += [f"{prefix}{i}.{n}" for n, _ in layer.named_parameters()]
            if isinstance(layer, nn.PReLU) and layer.num_parameters != 1:
                raise ValueError(
                    f"layer {i} (PReLU with {layer.num_parameters} parameters) is per-neuron, "
                    "not elementwise; use PReLU() with one shared parameter"
                )
        else:
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) cannot be handled: bimt derives specs for "
                "nn.Linear, BatchNorm1d, LayerNorm and elementwise activations "
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
    for name, norm, layer in norms:
        free += _norm_axes(axes, name, norm, f"layer{layer}", widths[layer])
    if input_order:
        axes[input_order] = ("layer0",)
    if output_order:
        axes[output_order] = (f"layer{len(widths) - 1}",)
    return PermutationSpec(groups, axes, charges, free=free)


def _norm_axes(axes: dict, name: str, norm: nn.Module, group: str, width: int) -> list[str]:
    """Axes of a BatchNorm1d / LayerNorm over ``width`` features of ``group``; returns its
    tensors that no group indexes (BatchNorm's step counter)."""
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (width,):
            raise ValueError(
                f"layer {name} (LayerNorm{tuple(norm.normalized_shape)}) must normalise the "
                f"{width} features of {group}, and only them"
            )
    elif norm.num_features != width:
        raise ValueError(f"layer {name} (BatchNorm1d({norm.num_features})) follows {width} features")
    free = []
    for t, value in [*norm.named_parameters(), *norm.named_buffers()]:
        if value.dim() == 1:
            axes[f"{name}.{t}"] = (group,)
        else:
            free.append(f"{name}.{t}")
    return free


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
    module: nn.Module,
    spec: PermutationSpec | None = None,
    settings: CostSettings | None = None,
    *,
    layout: str | Sequence = "line",
    freeze_inputs: bool = False,
    freeze_outputs: bool = False,
    view: str | None = None,
    input_labels: Sequence[str] | None = None,
    output_labels: Sequence[str] | None = None,
    **cost_settings,
) -> Wiring:
    """Give ``module`` a geometry: returns the :class:`Wiring`, also kept as ``module.bimt``.

    ``spec=None`` derives it: for a module of a registered family (GPT-2, Llama, torchvision
    ResNet, or any class given :func:`bimt.models.families.register_spec_builder`) from its
    builder, with ``layout`` (one kind, or ``{group: kind}``); for an ``nn.Sequential`` of
    ``nn.Linear`` and elementwise layers
    (``layout``, ``freeze_inputs`` and ``freeze_outputs`` shape it); the Sequential keeps its class
    and its forward and gains two buffers (``bimt_input_order``, ``bimt_output_order``) and two
    hooks that apply them, so its inputs and outputs keep their order while input and output
    neurons move (attaching twice reuses them). Any other module brings its own
    :class:`PermutationSpec`, checked against it (see :meth:`PermutationSpec.check`).
    ``cost_settings`` are :class:`CostSettings` fields (``A``, ``y_star``, ``p``, ``bias``,
    ``reduction``, ``distance_free``), applied on top of ``settings``.
    """
    labels = dict(view=view, input_labels=input_labels, output_labels=output_labels)
    if spec is None and not isinstance(module, nn.Sequential):  # a registered family's builder
        derived = derive_spec(module, layout)
        spec = derived.spec
        labels = dict(view=view or derived.view, input_labels=input_labels or derived.input_labels,
                      output_labels=output_labels or derived.output_labels, probes=derived.probes)
    elif spec is None:
        spec = sequential_spec(module, layout, freeze_inputs, freeze_outputs)
    ConnectionCost(spec, settings, **cost_settings)  # refuse bad settings before the module is touched
    hooks = ()
    if isinstance(module, nn.Sequential) and (INPUT_ORDER in spec.axes or OUTPUT_ORDER in spec.axes):
        hooks = _order_hooks(module)
    wiring = Wiring(module, spec, settings, **labels, **cost_settings)
    wiring._hooks = hooks
    module.bimt = wiring
    return wiring


def _order_hooks(module: nn.Sequential) -> tuple[int, ...]:
    """The order buffers and hooks that keep an attached Sequential's interface order while its
    input and output neurons move (added once: attaching again, or a saved spec, reuses them)."""
    linears = [m for m in module if isinstance(m, nn.Linear)]
    first, last = linears[0], linears[-1]
    old = module.__dict__.get("bimt")
    if hasattr(module, INPUT_ORDER):
        sizes = (getattr(module, INPUT_ORDER).numel(), getattr(module, OUTPUT_ORDER).numel())
        if sizes != (first.in_features, last.out_features):
            raise ValueError(
                f"this Sequential was attached with {sizes[0]} inputs and {sizes[1]} outputs, "
                f"but now has {first.in_features} inputs and {last.out_features} outputs; "
                "attach a fresh module after changing its interface"
            )
        return old._hooks if isinstance(old, Wiring) else ()
    device = first.weight.device
    module.register_buffer(INPUT_ORDER, torch.arange(first.in_features, device=device))
    module.register_buffer(OUTPUT_ORDER, torch.arange(last.out_features, device=device))
    return (module.register_forward_pre_hook(_order_inputs).id,
            module.register_forward_hook(_order_outputs).id)


def _order_inputs(module, args):
    x, order = args[0], getattr(module, INPUT_ORDER)
    if x.shape[-1] != order.numel():  # index_select would quietly drop or repeat features
        raise ValueError(f"this {type(module).__name__} was attached with {order.numel()} inputs, "
                         f"got inputs of shape {tuple(x.shape)} ({x.shape[-1]} features)")
    return (x.index_select(-1, getattr(module, INPUT_ORDER)),) + tuple(args[1:])


def _order_outputs(module, args, output):
    return restore_order(output, getattr(module, OUTPUT_ORDER))


def restore_order(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Outputs by slot -> outputs in the interface order (slot ``s`` holds output ``order[s]``)."""
    return torch.zeros_like(y).index_copy(-1, order, y)
