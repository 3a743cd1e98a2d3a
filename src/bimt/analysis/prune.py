"""The pruning frontier (the paper's App. A): loss against the parameters kept by magnitude."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..core.checks import positive_int
from ..core.spec import PermutationSpec, tensor
from .graph import _abs64, count_nonzero, network

__all__ = ["pruning_frontier", "evaluate_once"]

def _charged(spec: PermutationSpec, kinds) -> list[str]:
    bad = set(kinds) - {"weight", "bias", "embedding"}
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)}; allowed: weight, bias, embedding")
    return [n for n, k in spec.charges.items() if k in kinds]


def evaluate_once(evaluate, module) -> float:
    """``evaluate(module)`` without gradients, as a float."""
    with torch.no_grad():
        value = evaluate(module)
    if torch.is_tensor(value):
        value = value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"evaluate must return a number (a loss or an accuracy), got {type(value).__name__}"
        ) from None


def pruning_frontier(model, evaluate: Callable[[nn.Module], float], n_points: int = 40,
                     counts: Iterable[int] | None = None,
                     kinds: Iterable[str] = ("weight", "bias", "embedding"),
                     ) -> list[tuple[int, float]]:
    """Loss against the number of parameters kept by magnitude pruning (the paper's Fig. A1).

    Every parameter entry of the tensors the spec charges (``kinds``: weights, biases and
    embeddings by default) is ranked by ``|x|``; for each count ``k`` the ``k`` largest are kept,
    the rest set to zero (a magnitude threshold swept from above the largest to 0, ties at the
    threshold broken by position so that every count is reachable), and ``evaluate(module)`` is
    called. Counts: ``n_points`` evenly spaced from 0 (all pruned) to the number of nonzero
    entries (:func:`bimt.analysis.graph.count_nonzero`: above 1e-3 of their tensor's largest;
    the rest are numerically negligible), or ``counts``. Returns ``[(n_unpruned, loss), ...]``
    by increasing ``n_unpruned``. Parameters are restored exactly
    afterwards, even if ``evaluate`` raises.
    """
    module, spec = network(model)
    names = _charged(spec, set(kinds))
    if not names:
        raise ValueError("the spec charges no tensor of the requested kinds; nothing to prune")
    tensors = [tensor(module, n) for n in names]
    sizes = [t.numel() for t in tensors]
    mags = np.concatenate([_abs64(t).ravel() for t in tensors])
    n_nonzero = count_nonzero(tensors)
    if counts is None:
        if positive_int(n_points, "n_points") < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
        grid = np.unique(np.round(np.linspace(0, n_nonzero, n_points)).astype(int))
    else:
        grid = np.unique(np.asarray(list(counts), dtype=int))
        if grid.size == 0 or grid.min() < 0 or grid.max() > n_nonzero:
            raise ValueError(f"counts must lie in [0, {n_nonzero}] (the nonzero parameters)")
    rank = np.empty(len(mags), dtype=np.int64)
    rank[np.argsort(-mags, kind="stable")] = np.arange(len(mags))
    splits = np.cumsum(sizes)[:-1]
    saved = [t.detach().clone() for t in tensors]
    frontier = []
    try:
        for k in grid.tolist():
            keep = np.split(rank < k, splits)
            with torch.no_grad():
                for t, orig, m in zip(tensors, saved, keep):
                    mask = torch.from_numpy(m.reshape(tuple(t.shape))).to(t.device)
                    t.copy_(torch.where(mask, orig, torch.zeros_like(orig)))
            frontier.append((int(k), evaluate_once(evaluate, module)))
    finally:
        with torch.no_grad():
            for t, orig in zip(tensors, saved):
                t.copy_(orig)
    return frontier


