"""Swapping neurons to shorten wiring, without changing what the network computes.

With every group but one held still, the cost of putting neuron ``j`` at slot ``p`` is a
matrix ``C[j, p]`` (see :meth:`ConnectionCost.placement_matrix`). From it:

* **greedy** (the paper's move): the top-k neurons by importance, in order, each trade places
  with the partner that lowers the cost most, if any. All partners are scored at once from
  ``C``, so a pass costs one matrix product per tensor instead of one full cost per candidate.
  Neurons are tracked by identity: "neuron j" stays the neuron that was important, even after
  it moved (the reference code re-reads the slot, which may by then hold another neuron).
* **exact**: the greedy moves, then every group relocated optimally by linear assignment on
  ``C``, group after group. Each assignment is the best placement of its group given the
  others, so an exact pass is never worse than a greedy one, and finds moves no sequence of
  greedy swaps reaches.
* **untangle** (:mod:`bimt.swap.untangle`): whole layouts across every layer at once (iterated
  assignments to a fixed point; modules kept in one order in every layer), the one with the
  fewest crossings between modules among those no costlier than the start.

A mode is a *solver* in :data:`SOLVERS`, a function ``solver(state: PassState) -> None`` that
sees the whole pass (every movable group at once, so a solver may work group by group, like
greedy and exact, or across all groups) and moves neurons with ``state.commit(group, pos)``.
:func:`register_solver` adds one; ``swap_pass(..., mode=name)`` runs it.

Groups with heads keep neurons inside their head, and whole heads trade places. Every tensor
axis a group indexes is permuted together, with the optimizer's per-parameter state (Adam
moments, momentum, ...) and any gradient, so training continues as if nothing happened.
"""

from .core import (
    DEFAULT_MODE, REL_TOL, SOLVERS, PassState, SwapReport, apply_permutation, register_solver,
    swap_modes, swap_pass,
)
from . import exact, greedy, untangle  # after core: the built-in solvers

register_solver("greedy", greedy.solve)
register_solver("exact", exact.solve)
register_solver("untangle", untangle.solve)

__all__ = ["SwapReport", "PassState", "swap_pass", "apply_permutation", "SOLVERS",
           "register_solver", "swap_modes", "REL_TOL", "DEFAULT_MODE"]
