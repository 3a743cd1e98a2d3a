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

Groups with heads keep neurons inside their head, and whole heads trade places. Every tensor
axis a group indexes is permuted together, with the optimizer's per-parameter state (Adam
moments, momentum, ...) and any gradient, so training continues as if nothing happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .cost import ConnectionCost
from .spec import PermutationSpec, fold_index, tensor

__all__ = ["SwapReport", "swap_pass", "apply_permutation", "SWAP_MODES"]

SWAP_MODES = ("greedy", "exact")

# A swap must lower the cost by more than this fraction of the group's largest placement cost;
# it keeps float rounding from shuffling neurons whose placements cost the same.
_REL_TOL = 1e-12


@dataclass
class SwapReport:
    """What one swap pass did.

    ``swaps``: pairwise exchanges made by the greedy moves, plus, in exact mode, the neurons the
    assignment relocated. ``moved``: per group, neurons not in their starting slot at the end.
    ``permutations``: per group, new slot ``s`` holds the neuron that was at slot ``perm[s]``
    (replay with :func:`apply_permutation`). Costs are totals in float64.
    """

    mode: str
    swaps: int = 0
    cost_before: float = 0.0
    cost_after: float = 0.0
    moved: dict[str, int] = field(default_factory=dict)
    permutations: dict[str, np.ndarray] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.mode} swap pass: {self.swaps} swaps, cost {self.cost_before:.6g} -> "
            f"{self.cost_after:.6g}"
        )


def swap_pass(
    module: nn.Module,
    spec: PermutationSpec,
    cost: ConnectionCost,
    top_k: int | None = None,
    mode: str = "greedy",
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    groups: Iterable[str] | None = None,
) -> SwapReport:
    """Run one swap pass over ``groups`` (default: every group that is not frozen), in order.

    ``top_k`` is the number of important neurons per group that look for a partner (``None``:
    all; groups smaller than ``top_k`` use all their neurons).
    """
    if mode not in SWAP_MODES:
        raise ValueError(f"unknown swap mode {mode!r}; allowed: {', '.join(SWAP_MODES)}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer (or None for all), got {top_k!r}")
    names = spec.movable_groups() if groups is None else list(groups)
    for g in names:
        if g not in spec.groups:
            raise ValueError(f"unknown group {g!r}; groups: {', '.join(spec.groups)}")
    module = _tensors(module, spec)  # looked up once for the whole pass
    report = SwapReport(mode=mode, cost_before=cost.total(module))
    for g in names:
        if spec.groups[g].frozen or spec.groups[g].size < 2:
            continue
        C = cost.placement_matrix(module, g)
        score = cost.importance(module, g)
        pos, n_swaps = _greedy_positions(C, score, top_k, spec.groups[g].heads)
        report.swaps += n_swaps
        _commit(module, spec, g, pos, optimizer, report)
    if mode == "exact":
        for g in names:
            if spec.groups[g].frozen or spec.groups[g].size < 2:
                continue
            C = cost.placement_matrix(module, g)
            # a hair's preference for staying put, so neurons whose placements cost the same
            # (dead ones, say) are not shuffled for nothing
            C -= _REL_TOL * max(float(np.abs(C).max()), 1.0) * np.eye(len(C))
            pos = _exact_positions(C, spec.groups[g].heads)
            report.swaps += int((pos != np.arange(len(pos))).sum())
            _commit(module, spec, g, pos, optimizer, report)
    report.cost_after = cost.total(module)
    return report


def _tensors(module, spec: PermutationSpec) -> dict[str, torch.Tensor]:
    """Every tensor the spec names, by name (name lookups in a module are slow)."""
    return {name: tensor(module, name) for name in {**spec.axes, **spec.charges}}


def _commit(module, spec, group, pos, optimizer, report) -> None:
    """Apply ``pos`` (neuron -> new slot) and fold it into the report's permutations."""
    perm = np.empty_like(pos)
    perm[pos] = np.arange(len(pos))  # new slot s holds the neuron from old slot perm[s]
    if (perm == np.arange(len(perm))).all():
        report.permutations.setdefault(group, perm)
        return
    apply_permutation(module, spec, group, perm, optimizer)
    before = report.permutations.get(group, np.arange(len(perm)))
    report.permutations[group] = before[perm]
    report.moved[group] = int((report.permutations[group] != np.arange(len(perm))).sum())


@torch.no_grad()
def apply_permutation(
    module: nn.Module,
    spec: PermutationSpec,
    group: str,
    perm,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
) -> None:
    """Move the neuron at old slot ``perm[s]`` of ``group`` to slot ``s``, everywhere it appears."""
    n = spec.groups[group].size
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
        raise ValueError(f"a permutation of group {group!r} must list 0..{n - 1} once each")
    optimizers = [] if optimizer is None else (
        [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    )
    for name, dim in spec.axes_of(group):
        t = tensor(module, name)
        index = fold_index(perm.to(t.device), n, t.shape[dim])
        t.copy_(t.index_select(dim, index))
        if isinstance(t, nn.Parameter):
            if t.grad is not None:
                t.grad.copy_(t.grad.index_select(dim, index))
            for opt in optimizers:
                for value in opt.state.get(t, {}).values():
                    if torch.is_tensor(value) and value.shape == t.shape:
                        value.copy_(value.index_select(dim, index.to(value.device)))


def _greedy_positions(C: np.ndarray, score: np.ndarray, top_k, heads: int):
    """The paper's greedy moves on one group; returns (neuron -> slot, number of swaps)."""
    n = C.shape[0]
    pos = np.arange(n)
    here = C[np.arange(n), pos].copy()  # what each neuron costs where it is now
    tol = _REL_TOL * max(float(np.abs(C).max()), 1.0)
    head_size = n // heads
    k = n if top_k is None else min(int(top_k), n)
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


def _exact_positions(C: np.ndarray, heads: int) -> np.ndarray:
    """Best placement of one group by linear assignment (heads: nested assignment)."""
    n = C.shape[0]
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
