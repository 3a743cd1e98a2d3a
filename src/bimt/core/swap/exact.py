"""The exact pass: the greedy moves, then every group relocated optimally by linear assignment
on its placement matrix (nested assignment for heads), so it is never worse than greedy."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..recurrent import recurrent_positions, recurrent_weights
from .greedy import solve as greedy_solve
from .core import REL_TOL, PassState

__all__ = ["solve", "exact_positions", "local_assignment", "certified_optimal"]

#: Groups of at least this many neurons first try :func:`local_assignment`, kept when
#: :func:`certified_optimal` proves it optimal; smaller ones (and any it cannot prove) go to the
#: dense solver. Measured on GPT-2 small's 3072-neuron MLP layers with wiring as in training:
#: the dense solver 10-14 s a layer, the windows and the proof 0.5-0.7 s, the same placement.
LOCAL_FIRST = 2048
#: The window of :func:`local_assignment`, in slots, and its most sweeps.
WINDOW, WINDOW_SWEEPS = 256, 12
#: The most relaxation sweeps :func:`certified_optimal` spends before it gives up.
PROOF_SWEEPS = 40


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
        if n >= LOCAL_FIRST:
            pos = local_assignment(C)
            if certified_optimal(C, pos):
                return pos
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


def local_assignment(C: np.ndarray, window: int = WINDOW, sweeps: int = WINDOW_SWEEPS) -> np.ndarray:
    """A placement that no reshuffle inside any window of ``window`` consecutive slots improves:
    from where every neuron is (slot ``j`` for neuron ``j``), solve each window's assignment
    exactly, windows shifted by half a window every other sweep, until a sweep moves nothing.

    In a trained network a neuron's best slot lies near its current one, so this is usually the
    optimum; :func:`certified_optimal` says when it is.
    """
    n = C.shape[0]
    pos = np.arange(n)
    occupant = np.arange(n)  # the neuron at each slot
    for sweep in range(sweeps):
        start = 0 if sweep % 2 == 0 else window // 2
        edges = sorted({0, *range(start, n, window), n})
        moved = 0
        for lo, hi in zip(edges[:-1], edges[1:]):
            if hi - lo < 2:
                continue
            here = occupant[lo:hi].copy()
            rows, cols = linear_sum_assignment(C[np.ix_(here, np.arange(lo, hi))])
            new = lo + cols
            moved += int((pos[here[rows]] != new).sum())
            pos[here[rows]] = new
            occupant[new] = here[rows]
        if moved == 0 and sweep > 0:
            break
    return pos


def certified_optimal(C: np.ndarray, pos: np.ndarray, sweeps: int = PROOF_SWEEPS) -> bool:
    """Whether placement ``pos`` (neuron ``j`` at slot ``pos[j]``) minimises
    ``sum_j C[j, pos[j]]`` over all placements, proved by linear-programming duality.

    ``pos`` is optimal iff slot potentials ``v`` exist with ``v[p] <= v[pos[j]] + C[j, p] -
    C[j, pos[j]]`` for every neuron ``j`` and slot ``p`` (a cycle of moves that lowered the cost
    would make them impossible): shortest distances from a source joined to every slot at no
    cost, found by relaxing slot after slot (forward, then backward), which follows chains of
    moves along the line in one sweep. False when ``sweeps`` sweeps leave some bound unmet.
    """
    n = C.shape[0]
    own = C[np.arange(n), pos]
    occupant = np.empty(n, dtype=int)
    occupant[pos] = np.arange(n)
    columns = np.ascontiguousarray(C.T)
    v = np.zeros(n)
    offset = -own  # v[pos[j]] - C[j, pos[j]] per neuron j
    for sweep in range(sweeps):
        changed = False
        for p in (range(n) if sweep % 2 == 0 else range(n - 1, -1, -1)):
            best = float((columns[p] + offset).min())
            if best < v[p]:
                v[p] = best
                j = occupant[p]
                offset[j] = best - own[j]
                changed = True
        if not changed:
            return True
    return False

