"""The swap pass itself: the report, what a solver sees, the solver registry, and permuting
every axis of a group (with the optimizer's state). See :mod:`bimt.swap`."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..checks import one_of, positive_int
from ..cost import ConnectionCost
from ..settings import DEFAULT_SWAP_MODE as DEFAULT_MODE
from ..spec import PermutationSpec, tensor

__all__ = ["SwapReport", "PassState", "swap_pass", "apply_permutation", "SOLVERS",
           "register_solver", "swap_modes", "DEFAULT_MODE", "deferred_interrupts"]

#: A swap must lower the cost by more than this fraction of the group's largest placement cost;
#: it keeps float rounding from shuffling neurons whose placements cost the same.
REL_TOL = 1e-12


@dataclass
class SwapReport:
    """What one swap pass did.

    ``swaps``: pairwise exchanges made by the greedy moves, plus, in exact mode, the neurons the
    assignment relocated. ``moved``: per group, neurons not in their starting slot at the end.
    ``permutations``: per group, new slot ``s`` holds the neuron that was at slot ``perm[s]``
    (replay with :func:`apply_permutation`). Costs are totals in float64, NaN when the pass was
    asked not to read them (``swap_pass(..., costs=False)``).
    """

    mode: str
    swaps: int = 0
    cost_before: float = 0.0
    cost_after: float = 0.0
    moved: dict[str, int] = field(default_factory=dict)
    permutations: dict[str, np.ndarray] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"{self.mode} swap pass: {self.swaps} swaps"
        if math.isnan(self.cost_before):
            return text
        return f"{text}, cost {self.cost_before:.6g} -> {self.cost_after:.6g}"


@dataclass
class PassState:
    """What a solver sees: the tensors (by name), the spec, the cost judging the moves, the
    groups it may move (movable and of 2+ neurons, in order), ``top_k``, and :meth:`commit`."""

    tensors: dict[str, torch.Tensor]
    spec: PermutationSpec
    cost: ConnectionCost
    groups: list[str]
    top_k: int | None
    optimizer: object
    report: SwapReport

    #: the summed cost changes that solvers reported with their moves, or None once a move
    #: came without one (then the pass ends with a fresh total)
    delta: float | None = 0.0

    def commit(self, group: str, pos: np.ndarray, swaps: int = 0,
               delta: float | None = None) -> None:
        """Move neuron ``j`` of ``group`` (now at slot ``j``) to slot ``pos[j]``; count ``swaps``.

        ``delta``: the exact change of the cost this move makes, when the solver knows it
        (``sum_j C[j, pos_j] - C[j, j]`` of a group without recurrent weights); when every move
        of a pass brings one, the report's ``cost_after`` is ``cost_before`` plus their sum
        instead of a second full read of the model.
        """
        self.report.swaps += int(swaps)
        if self.delta is not None:
            self.delta = None if delta is None else self.delta + float(delta)
        _commit(self.tensors, self.spec, group, np.asarray(pos), self.optimizer, self.report)


#: Swap modes by name: ``solver(state: PassState) -> None``.
SOLVERS: dict[str, Callable[[PassState], None]] = {}


def register_solver(name: str, solver: Callable[[PassState], None], replace: bool = False) -> None:
    """Make ``solver`` available as ``swap_pass(..., mode=name)`` (and ``--swap-mode name``)."""
    if name in SOLVERS and not replace:
        raise ValueError(f"a swap solver named {name!r} exists; pass replace=True")
    SOLVERS[name] = solver


def swap_modes() -> tuple[str, ...]:
    """The registered swap modes."""
    return tuple(SOLVERS)


def swap_pass(
    module: nn.Module,
    spec: PermutationSpec,
    cost: ConnectionCost,
    top_k: int | None = None,
    mode: str = DEFAULT_MODE,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    groups: Iterable[str] | None = None,
    costs: bool = True,
) -> SwapReport:
    """Run one swap pass over ``groups`` (default: every group that is not frozen), in order.

    ``top_k`` is the number of important neurons per group that look for a partner (``None``:
    all; groups smaller than ``top_k`` use all their neurons). ``costs=False`` leaves the
    report's ``cost_before`` and ``cost_after`` NaN: reading the total is a full pass over the
    weights (about a sixth of a greedy pass on GPT-2 small), which training does not need.
    """
    one_of(mode, SOLVERS, "swap mode")
    positive_int(top_k, "top_k", allow_none=True)
    names = spec.movable_groups() if groups is None else list(groups)
    for g in names:
        one_of(g, spec.groups, "group")
    tensors = _tensors(module, spec)  # looked up once for the whole pass
    report = SwapReport(mode=mode, cost_before=cost.total(tensors) if costs else math.nan)
    movable = [g for g in names if not spec.groups[g].frozen and spec.groups[g].size >= 2]
    state = PassState(tensors, spec, cost, movable, top_k, optimizer, report)
    SOLVERS[mode](state)
    if not costs:
        report.cost_after = math.nan
    elif state.delta is not None:
        report.cost_after = report.cost_before + state.delta
    else:
        report.cost_after = cost.total(tensors)
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


class deferred_interrupts:
    """A critical section: Ctrl-C (SIGINT) arriving inside is held back and raised as
    ``KeyboardInterrupt`` when the section ends, so a permutation is applied to every axis of
    its group, or to none (half a permutation would change what the network computes).
    Re-entrant; a no-op outside the main thread, where Python delivers no signals anyway."""

    _depth = 0

    def __enter__(self):
        import signal
        import threading

        self._owner = (deferred_interrupts._depth == 0
                       and threading.current_thread() is threading.main_thread())
        deferred_interrupts._depth += 1
        if self._owner:
            self._caught = []
            self._previous = signal.signal(signal.SIGINT, lambda *a: self._caught.append(a))
        return self

    def __exit__(self, *exc):
        import signal

        deferred_interrupts._depth -= 1
        if self._owner:
            signal.signal(signal.SIGINT, self._previous)
            if self._caught and exc[0] is None:
                raise KeyboardInterrupt
        return False


def apply_permutation(
    module: nn.Module,
    spec: PermutationSpec,
    group: str,
    perm,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
) -> None:
    """Move the neuron at old slot ``perm[s]`` of ``group`` to slot ``s``, everywhere it appears
    (every tensor axis, gradient and optimizer state; uninterruptible by Ctrl-C)."""
    with deferred_interrupts():
        _apply_permutation(module, spec, group, perm, optimizer)


@torch.no_grad()
def _apply_permutation(module, spec, group, perm, optimizer) -> None:
    n = spec.groups[group].size
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
        raise ValueError(f"a permutation of group {group!r} must list 0..{n - 1} once each")
    optimizers = [] if optimizer is None else (
        [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    )
    for name, dim in spec.axes_of(group):
        t = tensor(module, name)
        index = spec.slot_index(group, perm.to(t.device), t.shape[dim])
        _permute_(t, dim, index)
        if isinstance(t, nn.Parameter):
            if t.grad is not None:
                _permute_(t.grad, dim, index)
            for opt in optimizers:
                for value in opt.state.get(t, {}).values():
                    if torch.is_tensor(value) and value.shape == t.shape:
                        _permute_(value, dim, index.to(value.device))


#: Entries moved through a small buffer at a time (1 MiB of float32: measured fastest here, 10%
#: faster than 256 KiB on GPT-2 small's embedding); a tensor smaller than one piece moves at once.
_CHUNK = 1 << 18
#: Largest tensor (entries) whose rows are permuted through a kept scratch buffer.
_SCRATCH_MAX = 1 << 22
_scratch = threading.local()


def _permute_(t: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    """``t = t.index_select(dim, index)`` in place. When at most a quarter of the slices
    move, only those are copied; otherwise, along a later axis of a big tensor on the CPU,
    slice by slice of the axes before it, so the copy stays in cache instead of going through
    a second tensor of ``t``'s size; along the first, through a buffer kept between calls (new
    memory costs a page fault per page on first touch)."""
    lead = t.shape[:dim].numel()
    cpu = t.device.type == "cpu"
    moved = torch.nonzero(index != torch.arange(len(index), device=index.device)).flatten()
    if len(moved) * 4 <= len(index):  # a few neurons move (a greedy pass moves a few dozen)
        t.index_copy_(dim, moved, t.index_select(dim, index[moved]))
        return
    if dim == 0 and cpu and t.is_contiguous() and _CHUNK <= t.numel() <= _SCRATCH_MAX:
        buffers = _scratch.__dict__.setdefault("by_dtype", {})
        buf = buffers.get(t.dtype)
        if buf is None or buf.numel() < t.numel():
            buf = buffers[t.dtype] = torch.empty(t.numel(), dtype=t.dtype)
        out = buf[:t.numel()].view(t.shape)
        torch.index_select(t, 0, index, out=out)
        t.copy_(out)
        return
    if dim == 0 or not cpu or t.numel() < _CHUNK or not t.is_contiguous():
        t.copy_(t.index_select(dim, index))
        return
    view = t.view(lead, t.shape[dim], -1)
    step = max(1, _CHUNK // (view.shape[1] * view.shape[2]))
    for a in range(0, lead, step):
        part = view[a:a + step]
        part.copy_(part.index_select(1, index))
