"""The paper's greedy move: the top-k neurons by importance each trade places with the partner
that lowers the cost most, scored for all partners at once from the placement matrix."""

from __future__ import annotations

import numpy as np

from ..placement import SINGLE_REL_TOL, Placement
from ..recurrent import recurrent_positions, recurrent_weights
from .core import REL_TOL, PassState

__all__ = ["solve", "greedy_positions", "greedy_moves"]


def solve(state: PassState) -> None:
    """Greedy moves on every group in turn, each judged with the others' current places."""
    for g in state.groups:
        if recurrent_weights(state.spec, g):  # quadratic placement cost: exact pairwise deltas
            score = state.cost.importance(state.tensors, g)
            pos, swaps = recurrent_positions(state.cost, state.tensors, g, score, state.top_k)
            state.commit(g, pos, swaps)
            continue
        # float32 weights of big groups are summed in float32; a move must then gain more
        # than their rounding, and the pass's total is read afresh rather than from the gains
        C = state.cost.placement(state.tensors, g, float32=True)
        score = C.importance
        if score is None:
            score = state.cost.importance(state.tensors, g)
        group = state.spec.groups[g]
        pos, swaps, delta = greedy_moves(C, score, state.top_k, group.heads, group.rigid)
        state.commit(g, pos, swaps, delta=None if C.single else delta)


def greedy_positions(C, score: np.ndarray, top_k, heads: int, rigid: bool = False):
    """The paper's greedy moves on one group; returns (neuron -> slot, number of swaps).
    ``C`` is the placement matrix, or a :class:`~bimt.core.placement.Placement`. A ``rigid``
    group makes no move inside a head: only whole heads trade places."""
    pos, swaps, _ = greedy_moves(C, score, top_k, heads, rigid)
    return pos, swaps


def greedy_moves(C, score: np.ndarray, top_k, heads: int, rigid: bool = False):
    """:func:`greedy_positions` plus the exact change of the cost, ``sum_j C[j, pos_j] - C[j, j]``.

    Reads only what the moves need: the diagonal (what each neuron costs where it is), the
    rows of the top-k neurons and the columns of the slots they leave, so a group of thousands
    of neurons never builds its ``n x n`` matrix.
    """
    if not isinstance(C, Placement):
        C = Placement.of(C)
    n = C.n
    pos = np.arange(n)
    start = C.diagonal()
    here = start.copy()  # what each neuron costs where it is now
    head_size = n // heads
    k = 0 if rigid else n if top_k is None else min(int(top_k), n)
    order = np.argsort(-score, kind="stable")[:k]
    C.columns([*order, *C.extremes()])  # the slots they start in, and max |C|, in one read
    tol = (SINGLE_REL_TOL if C.single else REL_TOL) * max(C.max(), 1.0)
    rows = C.rows(order)
    swaps = 0
    for i, j in enumerate(order):
        pj = int(pos[j])
        column = C.columns([pj])[:, 0]  # computed above, unless an earlier move displaced j
        gain = rows[i][pos] + column - here[j] - here
        if heads > 1:
            gain[pos // head_size != pj // head_size] = np.inf
        best = int(np.argmin(gain))
        if gain[best] < -tol:
            pos[j], pos[best] = pos[best], pj
            here[j], here[best] = rows[i][pos[j]], column[best]
            swaps += 1
    if heads > 1:
        trades, here = _greedy_head_trades(C, pos, heads, tol)
        swaps += trades
    return pos, swaps, float(here.sum() - start.sum())


def _greedy_head_trades(C: Placement, pos, heads, tol):
    """Whole heads trade places when that lowers the cost (in place on ``pos``); returns the
    number of trades and every neuron's cost where it ends.

    A trade moves a head's neurons by a multiple of the head size, so each neuron only ever
    sits at its own offset inside some head: ``V[j, b] = C[j, b * d + offset_j]`` holds every
    cost a trade can give it, and ``M[a, b]`` (the neurons in head ``a``, moved to head ``b``)
    its sums; trading ``a`` and ``b`` swaps rows ``a`` and ``b`` of ``M``.
    """
    n = len(pos)
    d = n // heads
    V = C.values(np.arange(n), np.arange(heads)[None, :] * d + (pos % d)[:, None])
    head = pos // d
    M = np.zeros((heads, heads))
    np.add.at(M, head, V)
    trades = 0
    for a in range(heads):
        gains = M[a] + M[:, a] - M[a, a] - np.diagonal(M)
        gains[a] = np.inf
        b = int(np.argmin(gains))
        if gains[b] < -tol:
            na, nb = head == a, head == b
            pos[na] += (b - a) * d
            pos[nb] += (a - b) * d
            head = pos // d
            M[[a, b]] = M[[b, a]]
            trades += 1
    return trades, V[np.arange(n), head]
