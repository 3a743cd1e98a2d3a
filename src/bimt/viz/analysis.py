"""Pictures of analyses: the pruning frontier (App. A), token embeddings (Figs. 5 and 6) and the
in-context residual stream (Fig. 7 right). Built without pyplot, like every figure of bimt:
each returns a :class:`matplotlib.figure.Figure`, which Jupyter shows inline as a cell's value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..analysis.graph import ACTIVE_THRESHOLD, MODULE_THRESHOLD, active_neurons, network, tree_roots
from ..analysis.probes import embedding_group, embedding_matrix, embedding_name, residual_vs_weight
from ._io import Figure

__all__ = ["plot_pruning_frontier", "plot_embedding_pairs", "plot_embedding_heatmap",
           "plot_residual_vs_weight"]


def plot_pruning_frontier(frontiers, ax=None, logy: bool = True, title: str | None = None,
                          logx: bool = True):
    """Plot ``{run name: frontier}`` (or one frontier) on one axes; returns the Figure.

    x: unpruned parameters, log-scaled by default (symlog: 0 stays on the axis, and the few
    tens of parameters a sparse network keeps are not squeezed into the left edge);
    y: loss (log scale by default). Lower left is better.
    """
    if not isinstance(frontiers, Mapping):
        frontiers = {"": frontiers}
    if ax is None:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    for name, points in frontiers.items():
        points = list(points)
        if not points:
            continue
        n, loss = zip(*points)
        ax.plot(n, loss, marker=".", label=str(name) or None)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)  # no count is negative: no -10^0 tick from the axis margin
    ax.set_xlabel("unpruned parameters")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    if any(str(k) for k in frontiers):
        ax.legend()
    fig.tight_layout()
    return fig



def plot_embedding_pairs(model, pairs: Iterable[tuple[int, int]] | None = None,
                         threshold: float = MODULE_THRESHOLD, normalize: bool = True,
                         name: str | None = None, annotate: bool | None = None,
                         max_pairs: int = 12):
    """Scatter tokens on pairs of embedding neurons (modular addition's circles, Fig. 5 middle).

    ``pairs``: ``[(slot_a, slot_b), ...]``; by default every pair of input slots inside each of
    :func:`tree_roots`'s modules, or, if no module has two, consecutive active embedding
    neurons (:func:`active_neurons`). Points are coloured by token index (cyclic colour map) and
    labelled with it when the vocabulary is small. Returns the Figure.
    """
    module, spec = network(model)
    ename = embedding_name(spec, name)
    E = embedding_matrix((module, spec), normalize=normalize, name=ename)
    if pairs is None:
        pairs = []
        for root in tree_roots((module, spec), threshold=threshold,
                               input_group=embedding_group(spec, ename)):
            pairs += list(itertools.combinations(root["input_slots"], 2))
        if not pairs:
            act = active_neurons((module, spec))[embedding_group(spec, ename)]
            pairs = list(zip(act[:-1], act[1:]))
        if not pairs:
            raise ValueError("found no pair of active embedding neurons; pass pairs=[(a, b)]")
    pairs = [(int(a), int(b)) for a, b in pairs][:max_pairs]
    for a, b in pairs:
        for s in (a, b):
            if not 0 <= s < E.shape[1]:
                raise ValueError(f"slot {s} is out of range (the embedding has {E.shape[1]})")
    vocab = E.shape[0]
    annotate = vocab <= 64 if annotate is None else annotate
    cols = min(len(pairs), 4)
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (a, b) in zip(axes.flat, pairs):
        sc = ax.scatter(E[:, a], E[:, b], c=np.arange(vocab), cmap="hsv", s=18)
        if annotate:
            for j in range(vocab):
                ax.annotate(str(j), (E[j, a], E[j, b]), fontsize=6, alpha=0.7)
        ax.set_xlabel(f"neuron {a}")
        ax.set_ylabel(f"neuron {b}")
        ax.set_aspect("equal", adjustable="datalim")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.ravel().tolist(), label="token")
    return fig


def plot_embedding_heatmap(model, active_only: bool = True,
                           threshold: float = ACTIVE_THRESHOLD, name: str | None = None,
                           token_labels: list[str] | None = None):
    """Normalized embedding values, neurons x tokens, in [-1, 1] (Fig. 6 right: S4's neurons).

    ``active_only`` keeps the embedding neurons :func:`active_neurons` calls active (with
    ``threshold``). Returns the Figure.
    """
    module, spec = network(model)
    ename = embedding_name(spec, name)
    E = embedding_matrix((module, spec), normalize=True, name=ename)
    slots = list(range(E.shape[1]))
    if active_only:
        slots = active_neurons((module, spec), threshold)[embedding_group(spec, ename)]
        if not slots:
            raise ValueError("no active embedding neuron; lower threshold or use "
                             "active_only=False")
    vocab = E.shape[0]
    if token_labels is not None and len(token_labels) != vocab:
        raise ValueError(f"{len(token_labels)} token labels for a vocabulary of {vocab}")
    fig = Figure(figsize=(max(4.0, 0.28 * vocab + 1.5), max(2.0, 0.35 * len(slots) + 1)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(E[:, slots].T, cmap="bwr", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(slots)), [str(s) for s in slots])
    ax.set_ylabel("embedding neuron")
    ax.set_xlabel("token")
    ticks = range(vocab) if vocab <= 64 else range(0, vocab, max(1, vocab // 16))
    ax.set_xticks(list(ticks), [token_labels[t] if token_labels else str(t) for t in ticks],
                  rotation=90 if token_labels else 0, fontsize=7)
    fig.colorbar(im, ax=ax, label="normalized embedding")
    fig.tight_layout()
    return fig



def plot_residual_vs_weight(model, X, y, index: int = 2, pairs=None):
    """Fig. 7 right: predicted vs true ``y``, and pairs of residual neurons coloured by ``w``.

    ``pairs`` defaults to the two pairs made of the four neurons most correlated with ``w``.
    """
    view = residual_vs_weight(model, X, index)
    with torch.no_grad():
        pred = model(torch.as_tensor(X))[:, -1, 0].double().numpy()
    top = view["order"]
    if pairs is None:
        pairs = [(int(top[0]), int(top[1])), (int(top[2]), int(top[3]))] if len(top) >= 4 else [
            (int(top[0]), int(top[-1]))]
    fig = Figure(figsize=(4.5, 4.2 * (1 + len(pairs))))
    ax = fig.add_subplot(1 + len(pairs), 1, 1)
    y = np.asarray(torch.as_tensor(y).double())
    ax.scatter(y, pred, s=2)
    lim = [float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))]
    ax.plot(lim, lim, ls="--", color="red", alpha=0.7)
    ax.set_xlabel("true y")
    ax.set_ylabel("predicted y")
    for i, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1 + len(pairs), 1, i + 2)
        sc = ax.scatter(view["activations"][:, a], view["activations"][:, b], c=view["w"], s=2,
                        cmap="viridis")
        ax.set_xlabel(f"Res{index} neuron {a} (r = {view['correlation'][a]:+.2f})")
        ax.set_ylabel(f"Res{index} neuron {b} (r = {view['correlation'][b]:+.2f})")
        fig.colorbar(sc, ax=ax, label="weight w")
    fig.tight_layout()
    return fig

