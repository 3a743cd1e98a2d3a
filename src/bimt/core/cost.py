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
from .settings import REDUCTIONS, CostSettings
from .spec import PermutationSpec, tensor

__all__ = ["ConnectionCost", "CostSettings", "REDUCTIONS"]


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
        for name in spec.weights():
            # in storage order (a transposed weight is (in, out)): the distance is symmetric
            out_g, in_g = (spec.groups[g] for g in spec.axes[name][:2])
            if name in self.distance_free:
                d = np.full((out_g.size, in_g.size), self.y_star)
            else:
                d = pairwise_distance(out_g.coords, in_g.coords, self.A, self.y_star, self.p)
            self._slot_distance[name] = d
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
    def placement_matrix(self, module: nn.Module, group: str, recurrent: bool = True) -> np.ndarray:
        """``C[j, p]``: the cost of putting the neuron now at slot ``j`` of ``group`` at slot ``p``.

        Only the position-dependent part is kept (terms that do not depend on where the neuron
        sits add the same constant to a row and never change which placement is best). Exact
        while no charged tensor has both axes in ``group``. A recurrent weight (both axes in
        ``group``) makes the cost quadratic in the placement: ``recurrent=True`` adds its
        linearisation (neuron ``j`` at ``p`` with every other neuron where it is now, see
        :func:`bimt.recurrent.recurrent_terms`); ``recurrent=False`` leaves it out.
        """
        n = self.spec.groups[group].size
        C = torch.zeros(n, n, dtype=torch.float64)
        for name in self.spec.weights():
            if name in self.distance_free:
                continue
            axes = self.spec.axes[name]
            if axes[0] == group and axes[1] == group:
                continue  # quadratic: added below (recurrent=True) or handled by the caller
            for dim in (0, 1):
                if axes[dim] != group:
                    continue
                w = tensor(module, name).detach().abs().to("cpu", torch.float64)
                w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a conv kernel: one pair
                w = w if dim == 0 else w.T
                w = self.spec.slot_sum(w, group, 0)  # neurons sharing a slot act as one
                d = self._distance64(tensor(module, name).shape, name)
                d = d.reshape(d.shape[0], d.shape[1])
                d = d if dim == 0 else d.T
                d = d[self.spec.entry_table(group, d.shape[0])[:, 0]]  # fold 0 of each slot
                scale = 1.0 / tensor(module, name).numel() if self.reduction == "mean" else 1.0
                C += (w @ d.T) * scale
        C = C.numpy()
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
        """The cost as a float, summed in float64 (for reports and comparisons)."""
        total = 0.0
        for name, kind in self.terms():
            t = tensor(module, name).detach().abs().to("cpu", torch.float64)
            norm = t.numel() if self.reduction == "mean" else 1
            if kind == "weight":
                total += float((t * self._distance64(t.shape, name)).sum()) / norm
            else:
                total += float(t.sum()) * self.y_star / norm
        return total
