"""Untangling: a swap pass that resolves global topology, not only pairwise swaps.

Greedy and exact passes move neurons one layer at a time, so two modules whose wires cross stay
crossed whenever every single-layer move out of the tangle costs more (the paper's limitation
(3)). An untangle pass compares whole layouts instead:

1. **exact**: per-layer linear assignments (:func:`scipy.optimize.linear_sum_assignment` on the
   placement matrix), iterated over every layer until none moves: a fixed point of the
   layer-by-layer problem. Each accepted step lowers the cost.
2. **blocks**, one per order of the modules (connected components of the network pruned at 5%,
   :mod:`bimt.crossings`): in every layer the neurons of module 1 are put left of those of
   module 2, and so on (keeping the slots the modules occupy now; unused neurons stay where they
   are); then the same iterated assignments, each projected back onto that order (the slots an
   assignment gives the modules' neurons are handed out in module order, and each module's
   neurons take its slots by assignment). Modules kept in one order in every layer never cross.

Among the layouts whose cost is no higher than at the start of the pass (the starting layout is
one of them), the pass keeps the one with the fewest crossings between modules, ties broken by
cost. It only permutes neurons (with :func:`bimt.swap.apply_permutation`, optimizer state
included; registered as the ``untangle`` solver), so the function never changes, and it never ends with a higher cost. Run during
training, it lets the weights adapt to an untangled layout once one is affordable.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..crossings import THRESHOLD, crossings, layers_of, slot_modules
from .core import REL_TOL, PassState, apply_permutation, deferred_interrupts
from .exact import exact_positions

__all__ = ["solve"]

_MAX_SWEEPS = 50
_MAX_ORDERS = 24  # every order for up to 4 modules; beyond, orders read off the layout


def solve(state: PassState, threshold: float = THRESHOLD) -> None:
    """One untangle pass over ``state.groups`` (every neuron may move; ``top_k`` is unused)."""
    spec, cost, names, live = state.spec, state.cost, state.groups, state.tensors
    start = cost.total(live)

    def copy():
        return {n: t.detach().clone() for n, t in live.items()}

    def permute(T, perms, g, perm):
        apply_permutation(T, spec, g, perm)
        perms[g] = perms[g][perm]

    def polish(T, perms, project=None):
        """Iterated per-layer assignments; a step is kept only when it lowers the cost."""
        for _ in range(_MAX_SWEEPS):
            moved = False
            for g in names:
                C = cost.placement_matrix(T, g)
                tol = REL_TOL * max(float(np.abs(C).max()), 1.0)
                here = float(np.trace(C))
                pos = exact_positions(C - tol * np.eye(len(C)), spec.groups[g].heads, spec.groups[g].rigid)
                if project is not None:
                    pos = project(g, perms, C, pos)
                if C[np.arange(len(pos)), pos].sum() < here - tol * len(C):
                    perm = np.empty_like(pos)
                    perm[pos] = np.arange(len(pos))
                    permute(T, perms, g, perm)
                    moved = True
            if not moved:
                return

    identity = {g: np.arange(spec.groups[g].size) for g in names}
    candidates = []  # (module_crossings, cost, perms)
    here = crossings(live, spec, threshold)["module_crossings"]
    candidates.append((here, start, identity))

    T = copy()
    perms = {g: p.copy() for g, p in identity.items()}
    polish(T, perms)
    candidates.append((crossings(T, spec, threshold)["module_crossings"], cost.total(T), perms))

    layers = layers_of(spec)
    if layers is not None and here:
        labels, _ = slot_modules(live, spec, layers, threshold)
        labels = dict(zip(layers.groups, labels))
        for order in _orders(labels, layers, spec):
            rank = {m: r for r, m in enumerate(order)}

            def project(g, perms, C, pos, rank=rank):
                if g not in labels:
                    return pos
                return _in_order(labels[g][perms[g]], rank, C, pos)

            T = copy()
            perms = {g: p.copy() for g, p in identity.items()}
            for g in names:  # start inside the constraint: the modules' slots, handed out in order
                if g in labels:
                    n = spec.groups[g].size
                    C = cost.placement_matrix(T, g)
                    pos = _in_order(labels[g], rank, C, np.arange(n))
                    perm = np.empty_like(pos)
                    perm[pos] = np.arange(n)
                    permute(T, perms, g, perm)
            polish(T, perms, project)
            candidates.append((crossings(T, spec, threshold)["module_crossings"],
                               cost.total(T), perms))

    affordable = [c for c in candidates if c[1] <= start]
    best = min(affordable, key=lambda c: (c[0] if c[0] is not None else 0, c[1]))
    # The chosen layout is cheaper as a whole, not group by group (one group moved alone can
    # cost more than the start), so it is committed in one critical section: a Ctrl-C waits
    # until every group has moved, and no intermediate layout is ever left behind.
    with deferred_interrupts():
        for g, perm in best[2].items():
            pos = np.empty_like(perm)
            pos[perm] = np.arange(len(perm))  # neuron now at slot j goes to slot pos[j]
            state.commit(g, pos, int((perm != np.arange(len(perm))).sum()))


def _orders(labels: dict, layers, spec) -> list[tuple[int, ...]]:
    """Module orders to try: all of them for a few modules, else those the layers suggest."""
    k = int(max((lab.max() for lab in labels.values()), default=-1)) + 1
    if k < 2:
        return []
    if k <= 4:
        return list(itertools.permutations(range(k)))[:_MAX_ORDERS]
    orders = set()
    for i, g in enumerate(layers.groups):
        lab, x = labels[g], spec.groups[g].coords[:, 0]
        mean = [x[lab == m].mean() if (lab == m).any() else np.inf for m in range(k)]
        o = tuple(int(m) for m in np.argsort(mean, kind="stable"))
        orders.update([o, o[::-1]])
    return sorted(orders)[:_MAX_ORDERS]


def _in_order(lab: np.ndarray, rank: dict, C: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``pos`` projected so that modules occupy slots in ``rank`` order (unused neurons stay)."""
    used = np.flatnonzero(lab >= 0)
    slots = np.sort(pos[used])
    out = pos.copy()
    at = 0
    for m in sorted(rank, key=rank.get):
        members = used[lab[used] == m]
        if not len(members):
            continue
        mine = slots[at:at + len(members)]
        at += len(members)
        r, c = linear_sum_assignment(C[np.ix_(members, mine)])
        out[members[r]] = mine[c]
    return out
