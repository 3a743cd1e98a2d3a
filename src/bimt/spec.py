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
  whole blocks may trade places;
* a ``frozen`` group never moves (image pixels, anything the user pins);
* an interface group (network input or output) is indexed by an *order buffer* that the model
  applies in ``forward``; permuting it is bookkeeping, so the model's interface never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Group", "PermutationSpec", "CHARGE_KINDS", "fold_index", "fold_sum", "tensor"]

#: How a tensor is charged by the connection cost: ``weight`` by ``|w| * length`` (both axes
#: must belong to groups), ``bias`` and ``embedding`` by ``|x| * y_star``.
CHARGE_KINDS = ("weight", "bias", "embedding")


@dataclass
class Group:
    """A set of neuron positions whose occupants may be permuted."""

    name: str
    coords: np.ndarray
    heads: int = 1
    frozen: bool = False
    labels: list[str] | None = None

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
    """

    groups: dict[str, Group]
    axes: dict[str, tuple[str | None, ...]]
    charges: dict[str, str] = field(default_factory=dict)
    free: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.groups, (list, tuple)):
            self.groups = {g.name: g for g in self.groups}
        self.axes = {k: tuple(v) for k, v in self.axes.items()}
        self.free = (self.free,) if isinstance(self.free, str) else tuple(self.free)
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

    def movable_groups(self) -> list[str]:
        return [n for n, g in self.groups.items() if not g.frozen]

    @torch.no_grad()
    def importance(self, module, group: str, names=None) -> np.ndarray:
        """The paper's neuron score: each slot's summed ``|w|`` over every weight and embedding
        entry it indexes (incoming plus outgoing, folds included; biases left out).
        ``names``: only these tensors (default: every charged one)."""
        from .core.placement import abs_sums, as_numpy

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
                score += sums.reshape(-1, n).sum(0)
        return score

    def interface(self) -> dict[str, str]:
        """``{group: "input" | "output"}``: the groups that are the module's interface.

        An input group feeds weights but nothing in the spec produces it (no weight writes it,
        no embedding table indexes it); an output group is written by weights and read by none.
        Moving such a group reorders the module's inputs or outputs unless the module keeps
        an order buffer for it (what BioMLP, BioTransformer and ``attach`` do).
        """
        weights = self.weights()
        reads = {self.axes[n][1] for n in weights}
        writes = {self.axes[n][0] for n in weights}
        embedded = {g for n, k in self.charges.items() if k == "embedding" for g in self.axes[n]}
        out = {}
        for g in self.groups:
            if g in reads and g not in writes and g not in embedded:
                out[g] = "input"
            elif g in writes and g not in reads:
                out[g] = "output"
        return out

    def slot_index(self, group: str, slots, length: int) -> torch.Tensor:
        """Indices along an axis of ``length`` (``fold`` neurons per slot) of ``group``'s slots."""
        slots = torch.as_tensor(slots, dtype=torch.long)
        return fold_index(slots, self.groups[group].size, length)

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
                if t.shape[dim] % n:
                    raise ValueError(
                        f"axis {dim} of {name!r} has length {t.shape[dim]}, which is not a "
                        f"multiple (fold) of group {g!r}'s {n} neurons"
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
