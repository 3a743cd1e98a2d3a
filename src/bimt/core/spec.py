"""Which neurons may trade places, and which tensor axes move with them.

A :class:`PermutationSpec` is a declarative table, in the spirit of Git Re-Basin: every
permutable set of neurons is a :class:`Group` (one layer of an MLP, one attention layer, the whole
residual stream of a transformer), and every tensor that a group indexes lists, axis by axis,
the group (or ``None``) that indexes it. Permuting a group permutes all of those axes at once,
so the function the network computes never changes. MLPs, token-embedding MLPs, transformers
and user models differ only in their spec.

Conventions:

* a group of ``n`` *slots* (positions); an axis of length ``fold * n`` holds ``fold`` neurons per
  slot, neuron ``f * n + s`` at slot ``s`` (the two concatenated token embeddings, Q/K/V);
* ``heads > 1`` splits the slots into equal blocks: a neuron moves only within its block, and
  whole blocks may trade places; a ``rigid`` group's neurons never leave their place inside
  their head, only whole heads move (rotary position embeddings tie a query/key dimension to
  its place in the head);
* ``fold_order="heads"`` lays an axis out head by head instead: head ``h``'s entries are
  contiguous and hold its ``fold`` blocks of ``d`` neurons, neuron ``h * fold * d + f * d + i``
  at slot ``h * d + i`` (grouped-query attention: the query heads that share one key/value head);
* a weight named in ``PermutationSpec.transposed`` is stored ``(in, out)`` (Hugging Face's
  ``Conv1D``); its axes are listed in storage order, and :meth:`PermutationSpec.weight_groups`
  says which is which;
* a ``frozen`` group never moves (image pixels, anything the user pins);
* an interface group (network input or output) is indexed by an *order buffer* that the model
  applies in ``forward``; permuting it is bookkeeping, so the model's interface never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Group", "PermutationSpec", "CHARGE_KINDS", "FOLD_ORDERS", "fold_index", "fold_sum",
           "tensor"]

#: How a tensor is charged by the connection cost: ``weight`` by ``|w| * length`` (both axes
#: must belong to groups), ``bias`` and ``embedding`` by ``|x| * y_star``.
CHARGE_KINDS = ("weight", "bias", "embedding")

#: How an axis with ``fold`` neurons per slot is laid out (see the module docstring).
FOLD_ORDERS = ("outer", "heads")


@dataclass
class Group:
    """A set of neuron positions whose occupants may be permuted."""

    name: str
    coords: np.ndarray
    heads: int = 1
    frozen: bool = False
    labels: list[str] | None = None
    rigid: bool = False
    fold_order: str = "outer"

    def __post_init__(self):
        self.coords = np.asarray(self.coords, dtype=np.float64)
        if self.coords.ndim == 1:
            self.coords = self.coords[:, None]
        if self.coords.ndim != 2 or self.coords.shape[0] == 0 or self.coords.shape[1] == 0:
            raise ValueError(
                f"group {self.name!r}: coords must have shape (n, d) with n >= 1 and d >= 1, "
                f"got {self.coords.shape}"
            )
        if not np.all(np.isfinite(self.coords)):
            raise ValueError(f"group {self.name!r}: coords must be finite numbers")
        if not isinstance(self.heads, int) or self.heads < 1 or self.size % self.heads:
            raise ValueError(
                f"group {self.name!r}: heads={self.heads!r} must be a positive integer that "
                f"divides its {self.size} neurons"
            )
        if self.fold_order not in FOLD_ORDERS:
            raise ValueError(
                f"group {self.name!r}: unknown fold_order {self.fold_order!r}; allowed: "
                f"{', '.join(FOLD_ORDERS)}"
            )
        self.rigid = bool(self.rigid)
        if self.labels is not None and len(self.labels) != self.size:
            raise ValueError(
                f"group {self.name!r}: {len(self.labels)} labels for {self.size} neurons"
            )

    @property
    def size(self) -> int:
        return self.coords.shape[0]

    @property
    def head_size(self) -> int:
        return self.size // self.heads


@dataclass
class PermutationSpec:
    """Groups, the tensor axes each group indexes, and how each tensor is charged.

    ``axes`` maps a parameter or buffer name (as in ``module.named_parameters()``) to one entry
    per tensor axis: a group name or ``None``. ``charges`` maps parameter names to one of
    :data:`CHARGE_KINDS`; tensors not listed there are permuted but cost nothing. A ``weight`` has
    axes ``(out group, in group)``, or ``(out, in, None, None)`` for a convolution: its kernel
    entries all span the same pair of channels. ``free``
    names the module's parameters and buffers that no group indexes on purpose (a shared
    PReLU slope, a step counter); :meth:`check` refuses any other tensor the table forgets.
    ``transposed`` names charged weights stored ``(in, out)`` (``x @ w``, Hugging Face's
    ``Conv1D``): their axes stay in storage order, and everything that needs to know which
    axis is the output asks :meth:`weight_dims` / :meth:`weight_groups`.
    """

    groups: dict[str, Group]
    axes: dict[str, tuple[str | None, ...]]
    charges: dict[str, str] = field(default_factory=dict)
    free: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.groups, (list, tuple)):
            self.groups = {g.name: g for g in self.groups}
        self.axes = {k: tuple(v) for k, v in self.axes.items()}
        self.free = (self.free,) if isinstance(self.free, str) else tuple(self.free)
        self.transposed = ((self.transposed,) if isinstance(self.transposed, str)
                           else tuple(self.transposed))
        for name in self.transposed:
            if self.charges.get(name) != "weight" or len(self.axes[name]) != 2:
                raise ValueError(
                    f"{name!r} is declared transposed, but only a charged weight with two axes "
                    "(in, out) can be"
                )
        both = sorted(set(self.free) & set(self.axes))
        if both:
            raise ValueError(f"{both} are declared free but also listed in the axes table")
        for name, groups in self.axes.items():
            for g in groups:
                if g is not None and g not in self.groups:
                    raise ValueError(
                        f"tensor {name!r} names group {g!r}, which is not in the spec "
                        f"(groups: {', '.join(self.groups)})"
                    )
        for name, kind in self.charges.items():
            if kind not in CHARGE_KINDS:
                raise ValueError(
                    f"tensor {name!r}: unknown charge {kind!r}; allowed: {', '.join(CHARGE_KINDS)}"
                )
            axes = self.axes.get(name)
            if axes is None:
                raise ValueError(f"charged tensor {name!r} is missing from the axes table")
            if kind == "weight" and (len(axes) < 2 or None in axes[:2]
                                     or any(a is not None for a in axes[2:])):
                raise ValueError(
                    f"tensor {name!r} is charged as a weight, so both of its axes need a group "
                    f"(a convolution's kernel axes, after them, none); got {axes}"
                )

    def axes_of(self, group: str) -> list[tuple[str, int]]:
        """Every ``(tensor name, axis)`` that the group indexes."""
        return [(n, d) for n, gs in self.axes.items() for d, g in enumerate(gs) if g == group]

    def weights(self) -> list[str]:
        return [n for n, k in self.charges.items() if k == "weight"]

    def weight_dims(self, name: str) -> tuple[int, int]:
        """``(output axis, input axis)`` of weight ``name``: ``(0, 1)``, or ``(1, 0)`` if it is
        stored transposed."""
        return (1, 0) if name in self.transposed else (0, 1)

    def weight_groups(self, name: str) -> tuple[str, str]:
        """``(output group, input group)`` of weight ``name``, whatever its storage order."""
        out_dim, in_dim = self.weight_dims(name)
        return self.axes[name][out_dim], self.axes[name][in_dim]

    def oriented(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """``w`` (weight ``name`` or any tensor of its shape) with its output axis first."""
        return w.transpose(0, 1) if name in self.transposed else w

    def to_slots(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """``w`` (weight ``name`` or any tensor of its shape, e.g. ``|w|``) as
        ``(out slots, in slots, *kernel)``: folds summed onto their slots, output axis first."""
        g0, g1 = self.axes[name][:2]
        return self.oriented(name, self.slot_sum(self.slot_sum(w, g0, 0), g1, 1))

    def movable_groups(self) -> list[str]:
        return [n for n, g in self.groups.items() if not g.frozen]

    @torch.no_grad()
    def importance(self, module, group: str, names=None) -> np.ndarray:
        """The paper's neuron score: each slot's summed ``|w|`` over every weight and embedding
        entry it indexes (incoming plus outgoing, folds included; biases left out).
        ``names``: only these tensors (default: every charged one)."""
        from .placement import abs_sums, as_numpy

        n = self.groups[group].size
        score = np.zeros(n)
        for name, kind in self.charges.items():
            if kind == "bias" or (names is not None and name not in names):
                continue
            for dim, g in enumerate(self.axes[name]):
                if g != group:
                    continue
                t = tensor(module, name).detach()
                if t.dim() == 2:  # summed in float64, in chunks, without a float64 copy
                    sums = abs_sums(as_numpy(t), axis=1 - dim)
                else:
                    t = t.cpu()
                    w = np.abs(t.numpy() if t.dtype in (torch.float32, torch.float64)
                               else t.double().numpy())
                    rest = tuple(d for d in range(w.ndim) if d != dim)
                    sums = np.add.reduce(w, axis=rest, dtype=np.float64)
                score += self.slot_sum(torch.from_numpy(np.ascontiguousarray(sums)), group, 0).numpy()
        return score

    def interface(self) -> dict[str, str]:
        """``{group: "input" | "output"}``: the groups that are the module's interface.

        An input group feeds weights but nothing in the spec produces it (no weight writes it,
        no embedding table indexes it); an output group is written by weights and read by none.
        Moving such a group reorders the module's inputs or outputs unless the module keeps
        an order buffer for it (what BioMLP, BioTransformer and ``attach`` do).
        """
        weights = self.weights()
        reads = {self.weight_groups(n)[1] for n in weights}
        writes = {self.weight_groups(n)[0] for n in weights}
        embedded = {g for n, k in self.charges.items() if k == "embedding" for g in self.axes[n]}
        out = {}
        for g in self.groups:
            if g in reads and g not in writes and g not in embedded:
                out[g] = "input"
            elif g in writes and g not in reads:
                out[g] = "output"
        return out

    def slot_index(self, group: str, slots, length: int) -> torch.Tensor:
        """Indices along an axis of ``length`` (``fold`` neurons per slot) of ``group``'s slots.

        With a permutation of all slots this is the index that applies it to the axis; with
        some slots, their entries (fold by fold)."""
        slots = torch.as_tensor(slots, dtype=torch.long)
        g = self.groups[group]
        if g.fold_order == "outer":
            return fold_index(slots, g.size, length)
        table = torch.as_tensor(self.entry_table(group, length), device=slots.device)
        if slots.numel() != g.size:  # some slots: their entries
            return table[slots].reshape(-1)
        index = torch.empty(length, dtype=torch.long, device=slots.device)
        index[table.reshape(-1)] = table[slots].reshape(-1)
        return index

    def slot_sum(self, w: torch.Tensor, group: str, dim: int) -> torch.Tensor:
        """``w`` with axis ``dim`` (indexed by ``group``) summed over its folds: one entry per slot."""
        g = self.groups[group]
        if g.fold_order == "outer" or w.shape[dim] == g.size:
            return fold_sum(w, g.size, dim)
        w = w.movedim(dim, 0)
        d = g.head_size
        w = w.reshape(g.heads, -1, d, *w.shape[1:]).sum(1).reshape(g.size, *w.shape[1:])
        return w.movedim(0, dim)

    def entry_table(self, group: str, length: int) -> np.ndarray:
        """``E[s, f]``: the entry of fold ``f`` at slot ``s`` on an axis of ``length`` indexed by
        ``group`` (``length = fold * size``)."""
        g = self.groups[group]
        n, fold = g.size, length // g.size
        s, f = np.arange(n)[:, None], np.arange(fold)[None, :]
        if g.fold_order == "outer":
            return f * n + s
        d = g.head_size
        return (s // d) * fold * d + f * d + s % d

    def entry_slots(self, group: str, length: int) -> np.ndarray:
        """The slot of every entry of an axis of ``length`` indexed by ``group``."""
        g = self.groups[group]
        e = np.arange(length)
        if g.fold_order == "outer":
            return e % g.size
        fold, d = length // g.size, g.head_size
        return (e // (fold * d)) * d + e % d

    def check(self, module: nn.Module) -> None:
        """Refuse, naming the tensor, a spec that does not fit ``module``: a tensor of the wrong
        rank or axis length, a parameter or buffer that no axis covers and is not declared
        ``free``, or an input/output group that may move while the module keeps no order
        buffer for it (the next swap would silently change what the module computes)."""
        for name, groups in self.axes.items():
            t = tensor(module, name)
            if t.dim() != len(groups):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(t.shape)} but the spec lists "
                    f"{len(groups)} axes"
                )
            for dim, g in enumerate(groups):
                if g is None:
                    continue
                n = self.groups[g].size
                if t.shape[dim] % n or t.shape[dim] == 0:
                    raise ValueError(
                        f"axis {dim} of {name!r} has length {t.shape[dim]}, which is not a "
                        f"positive multiple (fold) of group {g!r}'s {n} neurons"
                    )
        if isinstance(module, dict):
            return
        for name in self.free:
            tensor(module, name)  # a free name must exist too
        covered = set(self.axes) | set(self.free)
        named = [*module.named_parameters(), *module.named_buffers()]
        for name, t in named:
            if name not in covered:
                raise ValueError(
                    f"tensor {name!r} (shape {tuple(t.shape)}) is in the module but not in the "
                    "spec: list its axes (e.g. a bias indexed by its layer's group) or declare "
                    f"it free (PermutationSpec(..., free=({name!r},)))"
                )
        for g, role in self.interface().items():
            if self.groups[g].frozen or self.groups[g].size < 2:
                continue
            orders = [n for n, d in self.axes_of(g)
                      if n not in self.charges and not tensor(module, n).is_floating_point()]
            if not orders:
                touching = ", ".join(repr(n) for n, _ in self.axes_of(g))
                raise ValueError(
                    f"group {g!r} is the module's {role} (tensors {touching}) and may move, but "
                    f"the module keeps no order buffer for it, so a swap would reorder its "
                    f"{role}s: freeze it (Group({g!r}, ..., frozen=True)) or add an integer "
                    "order buffer that forward applies, listed in the axes"
                )

    def fold(self, module: nn.Module, name: str, dim: int) -> int:
        return tensor(module, name).shape[dim] // self.groups[self.axes[name][dim]].size


def tensor(module, name: str) -> torch.Tensor:
    """A parameter or buffer of ``module`` by its dotted name (``module`` may be a name->tensor dict)."""
    if isinstance(module, dict):
        try:
            return module[name]
        except KeyError:
            raise KeyError(f"the model has no parameter or buffer named {name!r}") from None
    try:
        return module.get_parameter(name)
    except AttributeError:
        pass
    try:
        return module.get_buffer(name)
    except AttributeError:
        raise KeyError(f"the model has no parameter or buffer named {name!r}") from None


def fold_sum(w: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``w`` with axis ``dim`` (``fold * n`` neurons, neuron ``f * n + s`` at slot ``s``) summed
    over its folds: that axis becomes ``n`` long, one entry per slot."""
    if w.shape[dim] == n:  # one neuron per slot: nothing to add up
        return w
    w = w.movedim(dim, 0)
    return w.reshape(-1, n, *w.shape[1:]).sum(0).movedim(0, dim)


def fold_index(perm: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """Index that applies a slot permutation to an axis holding ``length // n`` folds."""
    fold = length // n
    offsets = torch.arange(fold, device=perm.device).unsqueeze(1) * n
    return (offsets + perm.unsqueeze(0)).reshape(-1)
