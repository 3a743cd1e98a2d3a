"""seRNN's regulariser (Achterberg et al., Nature Machine Intelligence 2023) as a cost option.

A spatially embedded RNN charges each recurrent weight by its length *and* by how much it
takes part in the network's communication:

    cost_rec = sum_ij |W_ij| * D_ij * C_ij,   C = expm(S^-1/2 |W| S^-1/2)

with ``D`` the Euclidean distance between the units (here ``A * ||x_i - x_j||_2`` on the group's
layout, so self-connections are free, as in seRNN) and ``S`` the diagonal of node strengths
(``s_i = sum_j |W_ij|``, row sums of the torch-shaped ``(out, in)`` matrix; strengths below
1e-12 are clamped). :class:`CommunicabilityCost` charges every recurrent weight this way and
every other tensor (input and readout weights, biases) exactly as :class:`ConnectionCost`
does, so the method ``sernn`` differs from ``bimt`` only in the recurrent term and in having no
swaps (seRNN's units never move). ``C`` depends on ``W``, so the gradient goes through
``torch.linalg.matrix_exp`` by autograd (fine for the ~100-unit networks it is meant for).
"""

from __future__ import annotations

import numpy as np
import torch

from .cost import ConnectionCost
from .geometry import pairwise_distance
from .spec import tensor

__all__ = ["CommunicabilityCost", "communicability"]

_EPS = 1e-12


def communicability(W: torch.Tensor) -> torch.Tensor:
    """``expm(S^-1/2 |W| S^-1/2)`` of a square matrix (differentiable)."""
    a = W.abs()
    inv = a.sum(1).clamp_min(_EPS).rsqrt()
    return torch.linalg.matrix_exp(inv[:, None] * a * inv[None, :])


class CommunicabilityCost(ConnectionCost):
    """:class:`ConnectionCost` with seRNN's ``|W| * D * C`` on the recurrent weights.

    Same settings as :class:`ConnectionCost`. Recurrent weights are those whose two axes are one
    group; a spec without any (a feed-forward network) is charged exactly as ConnectionCost.
    ``value`` is differentiable, ``add_grad_`` adds ``lam * d(cost)/dW``, ``total`` is the
    float64 value.
    """

    def __init__(self, spec, settings=None, **changes):
        super().__init__(spec, settings, **changes)
        self.recurrent = [n for n in spec.weights()
                          if spec.axes[n][0] == spec.axes[n][1] and n not in self.distance_free]
        self._euclid = {}
        for name in self.recurrent:
            coords = spec.groups[spec.axes[name][0]].coords
            self._euclid[name] = pairwise_distance(coords, coords, self.A, 0.0, 2.0)

    def terms(self):
        return [(n, k) for n, k in super().terms() if n not in getattr(self, "recurrent", ())]

    def _recurrent_term(self, W: torch.Tensor, name: str) -> torch.Tensor:
        n = self._euclid[name].shape[0]
        a = W.abs().reshape(-1, n, n).sum(0)  # folds (a GRU's gates) share a unit
        D = torch.as_tensor(self._euclid[name], dtype=W.dtype, device=W.device)
        term = (a * D * communicability(a)).sum()
        return term / W.numel() if self.reduction == "mean" else term

    def value(self, module) -> torch.Tensor:
        total = super().value(module)
        for name in self.recurrent:
            total = total + self._recurrent_term(tensor(module, name), name)
        return total

    __call__ = value

    def add_grad_(self, module, lam: float) -> None:
        super().add_grad_(module, lam)
        if lam == 0:
            return
        for name in self.recurrent:
            t = tensor(module, name)
            if not t.requires_grad:
                continue
            with torch.enable_grad():
                w = t.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._recurrent_term(w, name), w)
            with torch.no_grad():
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                t.grad.add_(g, alpha=lam)

    @torch.no_grad()
    def total(self, module) -> float:
        rest = super().total(module)
        return rest + sum(
            float(self._recurrent_term(tensor(module, n).detach().to("cpu", torch.float64), n))
            for n in self.recurrent)

    def placement(self, module, group, fast: bool = True):
        return self.placement_matrix(module, group)

    def placement_matrix(self, module, group, recurrent: bool = True, fast: bool = True) -> np.ndarray:
        raise NotImplementedError(
            "the sernn cost has no swaps (seRNN's units never move); judge swaps with a "
            "ConnectionCost"
        )
