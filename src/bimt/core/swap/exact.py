"""The exact pass: the greedy moves, then every group relocated optimally by linear assignment
on its placement matrix (nested assignment for heads), so it is never worse than greedy."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..recurrent import recurrent_positions, recurrent_weights
from .greedy import solve as greedy_solve
from .core import REL_TOL, PassState

__all__ = ["solve", "exact_positions"]


def solve(state: PassState) -> None:
    greedy_solve(state)
    for g in state.groups:
        if recurrent_weights(state.spec, g):  # QAP: assignment if it helps, greedy to convergence
            score = state.cost.importance(state.tensors, g)
            pos, swaps = recurrent_positions(state.cost, state.tensors, g, score, exact=True)
            state.commit(g, pos, swaps)
            continue
        C = state.cost.placement_matrix(state.tensors, g)
        start = float(np.trace(C))
        # a hair's preference for staying put, so neurons whose placements cost the same
        # (dead ones, say) are not shuffled for nothing
        bonus = REL_TOL * max(float(np.abs(C).max()), 1.0)
        C[np.diag_indices_from(C)] -= bonus
        pos = exact_positions(C, state.spec.groups[g].heads, state.spec.groups[g].rigid)
        moved = pos != np.arange(len(pos))
        delta = float(C[np.arange(len(pos)), pos].sum()) + bonus * (len(pos) - moved.sum()) - start
        state.commit(g, pos, int(moved.sum()), delta=delta)


def exact_positions(C: np.ndarray, heads: int, rigid: bool = False) -> np.ndarray:
    """Best placement of one group by linear assignment (heads: nested assignment; a ``rigid``
    group: whole heads only, each neuron keeping its place inside its head)."""
    n = C.shape[0]
    if rigid:
        d = n // heads
        inner = np.arange(d)
        block_cost = np.array([[C[a * d + inner, b * d + inner].sum() for b in range(heads)]
                               for a in range(heads)])
        ra, rb = linear_sum_assignment(block_cost)
        pos = np.empty(n, dtype=int)
        for a, b in zip(ra, rb):
            pos[a * d + inner] = b * d + inner
        return pos
    if heads == 1:
        rows, cols = linear_sum_assignment(C)
        pos = np.empty(n, dtype=int)
        pos[rows] = cols
        return pos
    d = n // heads
    # neurons are grouped by the head they occupy now; a head may land in any head's slots
    occupant_heads = [np.arange(h * d, (h + 1) * d) for h in range(heads)]
    block_cost = np.zeros((heads, heads))
    inner = {}
    for a in range(heads):
        for b in range(heads):
            sub = C[np.ix_(occupant_heads[a], np.arange(b * d, (b + 1) * d))]
            r, c = linear_sum_assignment(sub)
            block_cost[a, b] = sub[r, c].sum()
            inner[a, b] = c[np.argsort(r)]
    ra, rb = linear_sum_assignment(block_cost)
    pos = np.empty(n, dtype=int)
    for a, b in zip(ra, rb):
        pos[occupant_heads[a]] = b * d + inner[a, b]
    return pos
