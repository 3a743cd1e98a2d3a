"""Swapping neurons of a recurrent group: a weight whose two axes are the same group.

A hidden-to-hidden matrix ``W`` of a group ``h`` charges ``|W[i, j]| * d(slot i, slot j)``, with
``d`` the group's own layout seen through the cost's norm: ``d = ||(A * (x_i - x_j), y*)||_p``,
the distance a layer-to-layer weight would have if the group were its own next layer. Keeping
``y*`` means that ``A = 0`` is still plain L1 on every weight (recurrent ones included) and that a
self-connection is not free; locality adds ``A * |dx|`` on top, exactly as between layers.

Moving one neuron changes both its row and its column, so the cost of a placement is quadratic
(a quadratic assignment problem) rather than the linear ``C[j, p]`` of a feed-forward group.
Here, in neuron space (``F = |W| + |W|^T`` folded to slots, fixed while neurons move; ``D`` the
slot distances; ``pos[j]`` the slot of neuron ``j``)::

    cost = sum_j C[j, pos j]  +  1/2 sum_jk F[j, k] * D[pos j, pos k]

and the exact change of swapping neuron ``j`` with every other neuron ``m`` is one O(n^2)
vector expression (:func:`quadratic_gains`). The greedy pass is then the paper's move with exact
pairwise deltas; the exact pass tries a linear assignment on the cost linearised at the current
placement (kept only if it lowers the true cost), then repeats greedy passes over every neuron
until no swap helps. No step ever raises the cost.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .spec import PermutationSpec, fold_sum, tensor

__all__ = ["recurrent_weights", "recurrent_terms", "linearised", "quadratic_cost",
           "quadratic_gains", "recurrent_positions"]

_REL_TOL = 1e-12
_MAX_ROUNDS = 100


def recurrent_weights(spec: PermutationSpec, group: str) -> list[str]:
    """Charged weights whose two axes both belong to ``group``."""
    return [n for n in spec.weights() if spec.axes[n] == (group, group)]


@torch.no_grad()
def recurrent_terms(cost, module, group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(F, D)`` per recurrent weight of ``group`` the cost charges by length.

    ``F = |W| + |W|^T`` summed over folds (a GRU's three gates share a slot) and scaled as the
    cost scales the tensor; ``D`` the slot-to-slot distances. The weight's cost is
    ``1/2 sum F * D`` with ``D`` indexed by the slots the neurons occupy.
    """
    n = cost.spec.groups[group].size
    out = []
    for name in recurrent_weights(cost.spec, group):
        if name in cost.distance_free:
            continue
        t = tensor(module, name)
        w = t.detach().abs().to("cpu", torch.float64)
        M = fold_sum(fold_sum(w, n, 0), n, 1).numpy()
        scale = 1.0 / t.numel() if cost.reduction == "mean" else 1.0
        D = cost.distance(module, name)[:n, :n]
        out.append(((M + M.T) * scale, D))
    return out


def linearised(F: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``C[j, p]``: neuron ``j``'s recurrent cost at slot ``p``, every other neuron in place
    (neurons at their own slots now)."""
    diag = np.diag(F).copy()
    return (F - np.diag(diag)) @ D.T + 0.5 * diag[:, None] * np.diag(D)[None, :]


def quadratic_cost(F: np.ndarray, D: np.ndarray, pos: np.ndarray) -> float:
    """``1/2 sum_jk F[j, k] D[pos j, pos k]``: the recurrent cost of a placement."""
    return 0.5 * float((F * D[np.ix_(pos, pos)]).sum())


def quadratic_gains(F: np.ndarray, D: np.ndarray, pos: np.ndarray, j: int) -> np.ndarray:
    """Exact change of the recurrent cost when neuron ``j`` trades slots with each neuron ``m``.

    Only rows and columns ``j`` and ``m`` of the distances seen by the neurons change; for every
    other neuron ``c`` the change is ``(F[j,c] - F[m,c]) (D[m,c] - D[j,c])``, summed here for all
    ``m`` at once, plus the two self-connections (``D`` symmetric, as every norm gives).
    """
    DN = D[np.ix_(pos, pos)]  # distances between the neurons' current slots
    Fj, DNj = F[j], DN[j]
    dF, dD = np.diag(F), np.diag(DN)
    total = DN @ Fj - Fj @ DNj - (F * DN).sum(1) + F @ DNj
    at_j = (F[j, j] - F[:, j]) * (DN[:, j] - DN[j, j])
    at_m = (Fj - dF) * (dD - DNj)
    return total - at_j - at_m + 0.5 * (F[j, j] - dF) * (dD - DN[j, j])


def _placement_cost(C, terms, pos) -> float:
    return float(C[np.arange(len(pos)), pos].sum()) + sum(quadratic_cost(F, D, pos)
                                                          for F, D in terms)


def _greedy(C, terms, order, pos, tol) -> int:
    """The paper's move with exact deltas, in place on ``pos``; returns the number of swaps."""
    n = len(pos)
    idx = np.arange(n)
    swaps = 0
    for j in order:
        here = C[idx, pos]
        gain = C[j, pos] + C[:, pos[j]] - here[j] - here
        for F, D in terms:
            gain = gain + quadratic_gains(F, D, pos, j)
        gain[j] = 0.0
        best = int(np.argmin(gain))
        if gain[best] < -tol:
            pos[j], pos[best] = pos[best], pos[j]
            swaps += 1
    return swaps


def recurrent_positions(cost, module, group: str, score: np.ndarray, top_k=None,
                        exact: bool = False) -> tuple[np.ndarray, int]:
    """Swaps for a group with recurrent weights; returns ``(neuron -> slot, number of swaps)``.

    ``exact=False``: the top-k neurons by ``score`` each trade places with the partner that
    lowers the cost most (exact deltas). ``exact=True``: a linear assignment on the linearised
    cost, kept only if it lowers the true cost, then greedy rounds over every neuron until no
    swap helps (at most 100 rounds). Neither ever raises the cost.
    """
    if cost.spec.groups[group].heads != 1 or cost.spec.groups[group].rigid:
        raise ValueError(
            f"group {group!r} has recurrent weights and heads={cost.spec.groups[group].heads}; "
            "recurrent groups are swapped as one block (heads=1) only"
        )
    C = cost.placement_matrix(module, group, recurrent=False)
    terms = recurrent_terms(cost, module, group)
    n = len(C)
    pos = np.arange(n)
    big = max([float(np.abs(C).max()), 1.0]
              + [float(np.abs(F).sum() * np.abs(D).max()) for F, D in terms])
    tol = _REL_TOL * big
    if not exact:
        k = n if top_k is None else min(int(top_k), n)
        order = np.argsort(-score, kind="stable")[:k]
        return pos, _greedy(C, terms, order, pos, tol)
    swaps = 0
    full = C + sum((linearised(F, D) for F, D in terms), np.zeros_like(C))
    rows, cols = linear_sum_assignment(full - tol * np.eye(n))
    candidate = np.empty(n, dtype=int)
    candidate[rows] = cols
    if _placement_cost(C, terms, candidate) < _placement_cost(C, terms, pos) - tol:
        pos = candidate
        swaps += int((pos != np.arange(n)).sum())
    order = np.argsort(-score, kind="stable")
    for _ in range(_MAX_ROUNDS):
        made = _greedy(C, terms, order, pos, tol)
        swaps += made
        if not made:
            break
    return pos, swaps
