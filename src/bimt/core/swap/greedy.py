"""The paper's greedy move: the top-k neurons by importance each trade places with the partner
that lowers the cost most, scored for all partners at once from the placement matrix."""

from __future__ import annotations

import numpy as np

from ..recurrent import recurrent_positions, recurrent_weights
from .core import REL_TOL, PassState

__all__ = ["solve", "greedy_positions"]


def solve(state: PassState) -> None:
    """Greedy moves on every group in turn, each judged with the others' current places."""
    for g in state.groups:
        score = state.cost.importance(state.tensors, g)
        if recurrent_weights(state.spec, g):  # quadratic placement cost: exact pairwise deltas
            pos, swaps = recurrent_positions(state.cost, state.tensors, g, score, state.top_k)
        else:
            C = state.cost.placement_matrix(state.tensors, g)
            group = state.spec.groups[g]
            pos, swaps = greedy_positions(C, score, state.top_k, group.heads, group.rigid)
        state.commit(g, pos, swaps)


def greedy_positions(C: np.ndarray, score: np.ndarray, top_k, heads: int, rigid: bool = False):
    """The paper's greedy moves on one group; returns (neuron -> slot, number of swaps).

    A ``rigid`` group makes no move inside a head: only whole heads trade places."""
    n = C.shape[0]
    pos = np.arange(n)
    here = C[np.arange(n), pos].copy()  # what each neuron costs where it is now
    tol = REL_TOL * max(float(np.abs(C).max()), 1.0)
    head_size = n // heads
    k = 0 if rigid else n if top_k is None else min(int(top_k), n)
    order = np.argsort(-score, kind="stable")[:k]
    swaps = 0
    for j in order:
        pj = pos[j]
        gain = C[j, pos] + C[:, pj] - here[j] - here
        if heads > 1:
            gain[pos // head_size != pj // head_size] = np.inf
        best = int(np.argmin(gain))
        if gain[best] < -tol:
            pos[j], pos[best] = pos[best], pj
            here[j], here[best] = C[j, pos[j]], C[best, pos[best]]
            swaps += 1
    if heads > 1:
        swaps += _greedy_head_trades(C, pos, heads, tol)
    return pos, swaps


def _greedy_head_trades(C, pos, heads, tol) -> int:
    """Whole heads trade places when that lowers the cost (in place on ``pos``)."""
    n = len(pos)
    d = n // heads
    trades = 0
    for a in range(heads):
        occupant = np.empty(n, dtype=int)
        occupant[pos] = np.arange(n)
        block = lambda h: occupant[h * d:(h + 1) * d]
        now = lambda h, at: C[block(h), np.arange(at * d, (at + 1) * d)].sum()
        gains = np.full(heads, np.inf)
        for b in range(heads):
            if b != a:
                gains[b] = now(a, b) + now(b, a) - now(a, a) - now(b, b)
        b = int(np.argmin(gains))
        if gains[b] < -tol:
            na, nb = block(a).copy(), block(b).copy()
            pos[na] += (b - a) * d
            pos[nb] += (a - b) * d
            trades += 1
    return trades


