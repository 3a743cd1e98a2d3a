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

import weakref

import numpy as np
import torch
from torch import nn

from .geometry import pairwise_distance
from .placement import LineSide, Placement, abs_sum, add_abs_blocks, as_numpy
from .settings import REDUCTIONS, CostSettings
from .spec import PermutationSpec, tensor

__all__ = ["ConnectionCost", "CostSettings", "REDUCTIONS"]


#: The fast path's Python work (a loop over the cuts of the slots a pass asks for) costs more
#: than the dense product ``|W| @ D.T`` below this many multiply-adds (group size squared times
#: the other axis): measured on the paper's transformer (groups of 32), the line path made a
#: greedy pass 4x slower than the product; at GPT-2 small's shapes (1.8e9) it is the only way.
LINE_PATH_MIN_WORK = 1 << 24

class ConnectionCost:
    """The connection cost of the tensors a spec charges.

    ``ConnectionCost(spec, settings)`` with a :class:`CostSettings`, or
    ``ConnectionCost(spec, A=2.0, y_star=0.5, ...)`` with its fields as keywords (applied on top
    of ``settings`` when both are given).
    """

    def __init__(self, spec: PermutationSpec, settings: CostSettings | None = None, **changes):
        settings = CostSettings.of(settings, **changes).resolve(spec)
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
            # in storage order (a transposed weight is (in, out)): the distance is symmetric
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
            g0, g1 = self.spec.axes[name][:2]
            if self.spec.groups[g0].fold_order == self.spec.groups[g1].fold_order == "outer":
                d = np.tile(d, (shape[0] // d.shape[0], shape[1] // d.shape[1]))
            else:  # some axis laid out head by head: each entry at its slot
                d = d[np.ix_(self.spec.entry_slots(g0, shape[0]), self.spec.entry_slots(g1, shape[1]))]
            hit = torch.from_numpy(d)
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
    def placement(self, module: nn.Module, group: str, fast: bool = True,
                  float32: bool = False) -> Placement:
        """``C[j, p]`` of ``group`` (see :meth:`placement_matrix`, ``recurrent=False``) as a
        :class:`~bimt.core.placement.Placement`: the whole matrix, rows, columns or the
        diagonal, each computed only when asked.

        With the L1 norm (``p = 1``), weights between two groups on lines take the fast path
        (prefix sums along the line, about one read of the weights) once the product would cost
        :data:`LINE_PATH_MIN_WORK` multiply-adds; everything else, and every tensor when
        ``fast=False``, the general product ``|W| @ D.T`` per tensor. ``float32=True`` sums
        float32 weights on the fast path in float32 (about 2.5x faster; good to about 1e-6 of
        each sum, see :attr:`Placement.single`), for a solver that allows for it.
        """
        g = self.spec.groups[group]
        n = g.size
        # prefix sums need lines and folds laid out fold by fold (the default layout)
        line = fast and self.p == 1 and g.coords.shape[1] == 1 and g.fold_order == "outer"
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
                if (line and other.coords.shape[1] == 1 and other.fold_order == "outer"
                        and n * n * t.shape[1 - dim] >= LINE_PATH_MIN_WORK):
                    key = (dim, other.coords.tobytes())  # groups at the same places add up
                    if key not in sides:
                        sides[key] = LineSide(g.coords[:, 0], other.coords[:, 0], dim == 0,
                                              self.A, self.y_star, float32)
                    sides[key].add(as_numpy(t), scale)
                    read.add(name)
                    continue
                w = t.detach().abs().to("cpu", torch.float64)
                w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a conv kernel: one pair
                w = w if dim == 0 else w.T
                w = self.spec.slot_sum(w, group, 0)  # neurons sharing a slot act as one
                d = self._distance64(t.shape, name)
                d = d.reshape(d.shape[0], d.shape[1])
                d = d if dim == 0 else d.T
                d = d[self.spec.entry_table(group, d.shape[0])[:, 0]]  # fold 0 of each slot
                term = (w @ d.T) * scale
                dense = term if dense is None else dense + term
        lines = list(sides.values())
        for side in lines:
            side.W  # summed now, while the weights are the ones read
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
            g0, g1 = self.spec.axes[name][:2]
            if self.spec.groups[g0].fold_order == self.spec.groups[g1].fold_order == "outer":
                entry[1] = add_abs_blocks(entry[1], as_numpy(t), *d.shape, scale)
            else:  # folds laid out head by head: each entry onto its slot
                w = t.detach().abs().to("cpu", torch.float64)
                w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)
                w = self.spec.slot_sum(self.spec.slot_sum(w, g0, 0), g1, 1).numpy() * scale
                entry[1] = w if entry[1] is None else entry[1] + w
        for d, w in pairs.values():
            total += float(np.einsum("ij,ij->", w, d))
        return total
