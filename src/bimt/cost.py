"""The connection cost: every connection charged by its length times its strength.

    cost = sum_weights |w| * d(w)  +  sum_biases |b| * y*  +  sum_embeddings |E| * y*

Distances depend only on *positions* (slots), never on which neuron currently occupies them, so
they are computed once per tensor and cached; swaps move the weights, not the distances.

Two forms of the same thing: :meth:`ConnectionCost.value` is a differentiable scalar for
anyone's training loop; :meth:`ConnectionCost.add_grad_` adds ``lambda * d * sign(w)`` to
``.grad`` directly, which is what our trainer does because building the cost in autograd costs
far more than the product itself.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import nonnegative, one_of
from .geometry import pairwise_distance
from .core.placement import LineSide, Placement, abs_sum, add_abs_blocks, as_numpy
from .spec import PermutationSpec, fold_sum, tensor

__all__ = ["ConnectionCost", "CostSettings", "REDUCTIONS"]

REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class CostSettings:
    """The connection cost's settings, checked once; one name for each everywhere in bimt.

    A : in-layer scale; ``A = 0`` removes locality and leaves plain L1.
    y_star : layer gap; every weight spans one gap, biases and embeddings cost ``y_star``.
    p : the norm of the displacement ``(A * dx, y_star)``: 1 (default, as the paper), 2, ...
    bias : charge biases (the reference code leaves them free early in some runs).
    reduction : ``sum`` over every entry, or ``mean``: each tensor's mean, summed over tensors
        (what the notebooks do for modular addition and MNIST).
    distance_free : weight names charged ``|w| * y_star`` whatever their length (the MNIST
        output layer); the name ``"last"`` stands for the spec's last charged weight.

    ``settings.replace(A=0)`` is a copy with some settings changed (the trainer's variants).
    """

    A: float = 1.0
    y_star: float = 1.0
    p: float = 1.0
    bias: bool = True
    reduction: str = "sum"
    distance_free: tuple[str, ...] = ()

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("A", nonnegative(self.A, "A"))
        set_("y_star", nonnegative(self.y_star, "y_star"))
        try:
            p = float(self.p)
        except (TypeError, ValueError):
            p = float("nan")
        if not p >= 1:  # also refuses nan
            raise ValueError(f"p must be >= 1, got {self.p!r} (a norm; inf for the max norm)")
        set_("p", p)
        set_("bias", bool(self.bias))
        one_of(self.reduction, REDUCTIONS, "reduction")
        free = (self.distance_free,) if isinstance(self.distance_free, str) else self.distance_free
        set_("distance_free", tuple(sorted(set(free))))

    def replace(self, **changes) -> CostSettings:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def resolve(self, spec: PermutationSpec) -> CostSettings:
        """The settings with ``"last"`` in ``distance_free`` replaced by that weight's name."""
        if "last" not in self.distance_free or "last" in spec.weights():
            return self
        weights = spec.weights()
        if not weights:
            raise ValueError("distance_free names 'last', but the spec charges no weight")
        free = [n for n in self.distance_free if n != "last"] + [weights[-1]]
        return self.replace(distance_free=free)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "distance_free": list(self.distance_free)}


class ConnectionCost:
    """The connection cost of the tensors a spec charges.

    ``ConnectionCost(spec, settings)`` with a :class:`CostSettings`, or
    ``ConnectionCost(spec, A=2.0, y_star=0.5, ...)`` with its fields as keywords (applied on top
    of ``settings`` when both are given).
    """

    def __init__(self, spec: PermutationSpec, settings: CostSettings | None = None, **changes):
        if settings is None:
            settings = CostSettings(**changes)
        elif changes:
            settings = settings.replace(**changes)
        settings = settings.resolve(spec)
        unknown = set(settings.distance_free) - set(spec.weights())
        if unknown:
            raise ValueError(
                f"distance_free names {sorted(unknown)}, which are not charged weights "
                f"(weights: {', '.join(spec.weights())})"
            )
        self.spec = spec
        self.settings = settings
        self.A, self.y_star, self.p = settings.A, settings.y_star, settings.p
        self.bias, self.reduction = settings.bias, settings.reduction
        self.distance_free = set(settings.distance_free)
        self._slot_distance: dict[str, np.ndarray] = {}
        by_coords: dict[tuple, np.ndarray] = {}  # one matrix per pair of position sets
        for name in spec.weights():
            out_g, in_g = (spec.groups[g] for g in spec.axes[name][:2])
            key = (name in self.distance_free, out_g.coords.tobytes(), out_g.coords.shape,
                   in_g.coords.tobytes(), in_g.coords.shape)
            if key not in by_coords:
                if name in self.distance_free:
                    by_coords[key] = np.full((out_g.size, in_g.size), self.y_star)
                else:
                    by_coords[key] = pairwise_distance(out_g.coords, in_g.coords, self.A,
                                                       self.y_star, self.p)
            self._slot_distance[name] = by_coords[key]
        self._cache: dict[tuple, object] = {}
        # per model: its charged tensors with their scales, looked up once (the hot path)
        self._resolved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- what each tensor costs -------------------------------------------------------------
    def terms(self) -> list[tuple[str, str]]:
        """``(tensor name, kind)`` for every tensor this cost charges."""
        return [
            (n, k) for n, k in self.spec.charges.items() if self.bias or k != "bias"
        ]

    def distance(self, module: nn.Module, name: str) -> np.ndarray:
        """Length of every entry of weight ``name`` (folds tiled), shape of the weight."""
        return self._distance64(tensor(module, name).shape, name).numpy()

    def _distance64(self, shape, name: str) -> torch.Tensor:
        key = (name, "float64", tuple(shape))
        hit = self._cache.get(key)
        if hit is None:
            d = self._slot_distance[name]
            hit = torch.from_numpy(np.tile(d, (shape[0] // d.shape[0], shape[1] // d.shape[1])))
            hit = hit.reshape(hit.shape + (1,) * (len(shape) - 2))  # a kernel shares its length
            self._cache[key] = hit
        return hit

    def _charged(self, module) -> list[tuple[torch.Tensor, str, object]]:
        """``(tensor, kind, scale)`` for every charged tensor, resolved once per model."""
        entries = None if isinstance(module, dict) else self._resolved.get(module)
        if entries is not None:
            t, _, scale = entries[0]
            if not torch.is_tensor(scale) or (scale.device == t.device and scale.dtype == t.dtype):
                return entries
        entries = []
        for name, kind in self.terms():
            t = tensor(module, name)
            entries.append((t, kind, self._scale(module, name, kind, t)))
        if entries and not isinstance(module, dict):
            self._resolved[module] = entries
        return entries

    def _scale(self, module: nn.Module, name: str, kind: str, like: torch.Tensor):
        """Per-entry multiplier of ``|x|`` in the cost (a tensor for weights, else a float)."""
        key = (name, kind, like.device, like.dtype, tuple(like.shape))
        hit = self._cache.get(key)
        if hit is None:
            norm = like.numel() if self.reduction == "mean" else 1
            if kind == "weight":
                hit = torch.as_tensor(self.distance(module, name) / norm, dtype=like.dtype,
                                      device=like.device)
            else:
                hit = self.y_star / norm
            self._cache[key] = hit
        return hit

    # -- the two forms ----------------------------------------------------------------------
    def value(self, module: nn.Module) -> torch.Tensor:
        """The cost as a differentiable scalar."""
        total = None
        for t, kind, scale in self._charged(module):
            term = (t.abs() * scale).sum() if kind == "weight" else t.abs().sum() * scale
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

    __call__ = value

    @torch.no_grad()
    def add_grad_(self, module: nn.Module, lam: float) -> None:
        """Add ``lam * d(cost)/d(param)`` to every charged parameter's ``.grad``."""
        if lam == 0:
            return
        for t, kind, scale in self._charged(module):
            if not t.requires_grad:  # as autograd: a frozen tensor gets no gradient
                continue
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            if kind == "weight":
                t.grad.addcmul_(t.sign(), scale, value=lam)
            else:
                t.grad.add_(t.sign(), alpha=lam * scale)

    # -- what the swap engine needs ---------------------------------------------------------
    @torch.no_grad()
    def placement(self, module: nn.Module, group: str, fast: bool = True) -> Placement:
        """``C[j, p]`` of ``group`` (see :meth:`placement_matrix`, ``recurrent=False``) as a
        :class:`~bimt.core.placement.Placement`: the whole matrix, rows, columns or the
        diagonal, each computed only when asked.

        With the L1 norm (``p = 1``), weights between two groups on lines take the fast path
        (prefix sums along the line, about one read of the weights); everything else, and every
        tensor when ``fast=False``, the general product ``|W| @ D.T`` per tensor.
        """
        g = self.spec.groups[group]
        n = g.size
        line = fast and self.p == 1 and g.coords.shape[1] == 1
        sides: dict[tuple, LineSide] = {}
        dense = None
        read = set()  # tensors whose |w| the line sides sum (unscaled: importance from them)
        for name in self.spec.weights():
            if name in self.distance_free:
                continue
            axes = self.spec.axes[name]
            if axes[0] == group and axes[1] == group:
                continue  # quadratic: added by placement_matrix or handled by the caller
            for dim in (0, 1):
                if axes[dim] != group:
                    continue
                t = tensor(module, name)
                scale = 1.0 / t.numel() if self.reduction == "mean" else 1.0
                other = self.spec.groups[axes[1 - dim]]
                if line and other.coords.shape[1] == 1:
                    key = (dim, other.coords.tobytes())  # groups at the same places add up
                    if key not in sides:
                        sides[key] = LineSide(g.coords[:, 0], other.coords[:, 0], dim == 0,
                                              self.A, self.y_star)
                    sides[key].add(as_numpy(t), scale)
                    read.add(name)
                    continue
                w = t.detach().abs().to("cpu", torch.float64)
                w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a conv kernel: one pair
                w = w if dim == 0 else w.T
                w = fold_sum(w, n, 0)  # neurons sharing a slot act as one
                d = self._distance64(t.shape, name)
                d = d.reshape(d.shape[0], d.shape[1])
                d = d[:n] if dim == 0 else d[:, :n].T
                term = (w @ d.T) * scale
                dense = term if dense is None else dense + term
        lines = list(sides.values())
        importance = None
        if self.reduction == "sum" and lines:  # the sides hold sum |w| per slot already
            rest = [k for k in self.spec.charges if k not in read]
            importance = self.spec.importance(module, group, names=rest)
            for side in lines:
                importance += side.totals()[0]
        return Placement(n, g.coords, lines, None if dense is None else dense.numpy(),
                         importance)

    @torch.no_grad()
    def placement_matrix(self, module: nn.Module, group: str, recurrent: bool = True,
                         fast: bool = True) -> np.ndarray:
        """``C[j, p]``: the cost of putting the neuron now at slot ``j`` of ``group`` at slot ``p``.

        Only the position-dependent part is kept (terms that do not depend on where the neuron
        sits add the same constant to a row and never change which placement is best). Exact
        while no charged tensor has both axes in ``group``. A recurrent weight (both axes in
        ``group``) makes the cost quadratic in the placement: ``recurrent=True`` adds its
        linearisation (neuron ``j`` at ``p`` with every other neuron where it is now, see
        :func:`bimt.recurrent.recurrent_terms`); ``recurrent=False`` leaves it out.
        ``fast=False`` computes every tensor's part as a matrix product (the reference the
        line fast path of :meth:`placement` is tested against).
        """
        C = self.placement(module, group, fast).matrix()
        if recurrent:
            from .recurrent import linearised, recurrent_terms

            for F, D in recurrent_terms(self, module, group):
                C += linearised(F, D)
        return C

    def importance(self, module: nn.Module, group: str) -> np.ndarray:
        """The paper's neuron score (see :meth:`PermutationSpec.importance`)."""
        return self.spec.importance(module, group)

    @torch.no_grad()
    def total(self, module: nn.Module) -> float:
        """The cost as a float, summed in float64 (for reports and comparisons).

        Weights joining the same two position sets are added up (``|w|`` at slot level, folds
        summed) before meeting their distances, so a model of many equal layers reads each
        weight once and multiplies by each distance matrix once.
        """
        total = 0.0
        pairs: dict[int, list] = {}  # id of a distance matrix -> [matrix, summed |w|]
        for name, kind in self.terms():
            t = tensor(module, name)
            scale = 1.0 / t.numel() if self.reduction == "mean" else 1.0
            if kind != "weight" or name in self.distance_free:
                total += abs_sum(t) * self.y_star * scale
                continue
            d = self._slot_distance[name]
            entry = pairs.setdefault(id(d), [d, None])
            entry[1] = add_abs_blocks(entry[1], as_numpy(t), *d.shape, scale)
        for d, w in pairs.values():
            total += float(np.einsum("ij,ij->", w, d))
        return total
