"""Connectivity graphs of layered networks (BioMLP, attached ``nn.Sequential``), 2D and 3D.

The picture follows the paper (Section 2, "Connectivity Graphs"): neurons are dots at their
positions, every weight is a line whose width is ``|w| / max|w|`` of its layer (times
``max_linewidth``), blue when positive, red when negative. Positions are the *unit*
coordinates of the layout, so the picture does not depend on ``A``; layers are stacked bottom
(inputs) to top (outputs). Inputs and outputs carry labels that follow the swaps: the input
slot ``s`` shows ``input_labels[input_order[s]]``.

Token models (an embedding feeding a folded input layer) draw one row per token, slightly
offset vertically (the paper's Figs. 5-6: "overlap each other but are drawn to be vertically
separated"); the embedding table itself is not drawn.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
state, nothing to close): Jupyter shows it inline when it is a cell's value, and
:func:`bimt.viz.save_figure` writes it. Artists carry ``gid`` tags so code can find them:
``weights-<i>`` (the line collection of weight layer ``i``), ``neurons-<group>``,
``input-label``, ``output-label``, ``token-label``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.wiring import has_wiring, wiring_of
from ..core.spec import tensor
from ._io import Figure
from .style import (
    MAX_LINEWIDTH, NEGATIVE_COLOR, NEURON_COLOR, POSITIVE_COLOR, keep_mask, weight_collection,
)

__all__ = ["plot", "plot_graph", "plot_graph_3d", "plot_spec_graph", "plot_decision_boundary",
           "LayeredView", "layered_view", "channel_view", "plot_channels"]

#: Above this many weights in total, ``plot_graph`` skips weights below 1e-3 of their layer's
#: max (they are far thinner than a pixel anyway) unless ``min_fraction`` says otherwise.
BIG_MODEL_WEIGHTS = 20_000
#: Above this many neurons, an interface layer gets no default labels (MNIST pixels).
MAX_AUTO_LABELS = 100


# ---------------------------------------------------------------------------------------------
# What to draw: a layered view of the model
# ---------------------------------------------------------------------------------------------
@dataclass
class LayeredView:
    """A layered network as plain arrays, in slot order.

    ``coords[g]`` are the unit coordinates of group ``g`` (``(n_g, d)``); ``folds[g]`` the
    neurons per slot (``weights`` rows/columns are ``f * n_g + s``); ``weights[i]`` maps group
    ``i`` to group ``i + 1`` as ``(out, in)``; ``input_order[s]`` / ``output_order[s]`` the
    interface index held by slot ``s`` (``None`` when the input is a token embedding).
    """

    names: list[str]
    coords: list[np.ndarray]
    folds: list[int]
    weights: list[np.ndarray]
    input_order: np.ndarray | None
    output_order: np.ndarray | None
    input_labels: list[str] | None
    output_labels: list[str] | None
    tokens: bool

    @property
    def sizes(self) -> list[int]:
        return [c.shape[0] for c in self.coords]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def layered_view(model) -> LayeredView:
    """Read a layered network's groups, weights and interface orders (see :class:`LayeredView`).

    Works for a BioMLP, the Wiring of an attached ``nn.Sequential``, or any module with a
    spec whose charged weights form one chain ``layer0 -> layer1 -> ...``.
    """
    wiring = wiring_of(model)
    module, spec = wiring.module, wiring.spec
    weights = spec.weights()
    if not weights:
        raise ValueError("the model's spec charges no weight matrix, so there is no graph to draw")
    nxt = {}
    for name in weights:
        out_g, in_g = spec.weight_groups(name)
        if in_g in nxt:
            raise ValueError(
                f"group {in_g!r} feeds more than one weight ({nxt[in_g][0]!r}, {name!r}): "
                "plot_graph draws layered networks only (for transformers see "
                "bimt.viz.transformer)"
            )
        nxt[in_g] = (name, out_g)
    outs = {spec.weight_groups(n)[0] for n in weights}
    starts = [g for g in nxt if g not in outs]
    if len(starts) != 1:
        raise ValueError("the model's weights do not form one chain of layers; cannot draw it")
    names, mats = [starts[0]], []
    while names[-1] in nxt:
        name, out_g = nxt[names[-1]]
        if out_g in names:
            raise ValueError("the model's weights form a cycle; cannot draw it")
        mats.append(_numpy(spec.oriented(name, tensor(module, name))))
        names.append(out_g)
    if len(mats) != len(weights):
        raise ValueError("the model's weights do not form one chain of layers; cannot draw it")

    coords = [np.asarray(spec.groups[g].coords, dtype=np.float64) for g in names]
    folds = [1] * len(names)
    for i, W in enumerate(mats):
        for g, length in ((i + 1, W.shape[0]), (i, W.shape[1])):
            f = length // coords[g].shape[0]
            if folds[g] != 1 and f != folds[g]:
                raise ValueError(f"group {names[g]!r} is used with different folds")
            folds[g] = f

    def order(group: str):
        t = wiring.order(group)
        return None if t is None else t.detach().cpu().numpy().astype(np.int64)

    tokens = any(k == "embedding" and names[0] in spec.axes[n] for n, k in spec.charges.items())
    return LayeredView(
        names=names,
        coords=coords,
        folds=folds,
        weights=mats,
        input_order=None if tokens else order(names[0]),
        output_order=order(names[-1]),
        input_labels=wiring.input_labels,
        output_labels=wiring.output_labels,
        tokens=tokens,
    )


def plot(model, ax=None, **kw) -> Figure:
    """Draw a model in its wiring's view (``layered``, ``layered3d``, ``transformer``, ``graph``,
    ``rnn``, ``channels``); returns the Figure. What ``model.plot()`` and ``wiring.plot()`` call."""
    wiring = wiring_of(model)
    if wiring.view == "rnn":
        from .rnn import plot_rnn

        return plot_rnn(wiring, ax=ax, **kw)
    if wiring.view == "channels":
        return plot_channels(wiring, ax=ax, **kw)
    if wiring.view == "transformer":
        from .transformer import plot_transformer_graph

        return plot_transformer_graph(wiring, ax=ax, **kw)
    draw = {"layered": plot_graph, "layered3d": plot_graph_3d, "graph": plot_spec_graph}[wiring.view]
    return draw(wiring, ax=ax, **kw)


def _depths(spec) -> dict[str, int]:
    """Each group's depth: the longest chain of weights leading to it (groups no weight
    touches sit at depth 0)."""
    depth = {g: 0 for g in spec.groups}
    edges = [spec.weight_groups(n) for n in spec.weights()]
    for _ in range(len(spec.groups)):
        changed = False
        for out_g, in_g in edges:
            if depth[out_g] < depth[in_g] + 1:
                depth[out_g] = depth[in_g] + 1
                changed = True
        if not changed:
            return depth
    raise ValueError("the spec's weights form a cycle; plot_spec_graph draws acyclic networks")


def plot_spec_graph(model, ax=None, title: str | None = None, *, max_linewidth: float = MAX_LINEWIDTH,
                    show_labels: bool = True, figsize=None, dpi: float = 100) -> Figure:
    """Any spec as a graph: groups stacked by depth (inputs at the bottom), groups of equal
    depth at their own coordinates (side by side when those overlap), neurons at their slots, every charged weight a line (folds summed)
    coloured by sign and as wide as ``|w| / max|w|`` of its tensor. Returns the Figure."""
    wiring = wiring_of(model)
    module, spec = wiring.module, wiring.spec
    depth = _depths(spec)
    rows: dict[int, list[str]] = {}
    for g in spec.groups:
        rows.setdefault(depth[g], []).append(g)
    x, y = {}, {}
    for d, groups in rows.items():
        spans = sorted((float(_x_positions(spec.groups[g].coords).min()),
                        float(_x_positions(spec.groups[g].coords).max())) for g in groups)
        apart = all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # then draw them where they are
        for k, g in enumerate(groups):
            xs = _x_positions(spec.groups[g].coords)
            width = 1.0 / len(groups)
            x[g] = xs if apart else k * width + width * (0.08 + 0.84 * xs)
            y[g] = float(d)
    if figsize is None:
        figsize = (float(np.clip(1.5 + 0.2 * sum(spec.groups[g].size for g in max(rows.values(), key=len)), 4, 14)),
                   float(np.clip(1.6 + 1.0 * max(rows), 3, 11)))
    fig = _figure(ax, figsize, dpi)
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    for i, name in enumerate(spec.weights()):
        out_g, in_g = spec.weight_groups(name)
        W = _numpy(spec.to_slots(name, tensor(module, name).detach()))
        o, k = np.divmod(np.arange(W.size), W.shape[1])
        seg = np.stack([np.stack([x[in_g][k], np.full(len(k), y[in_g])], 1),
                        np.stack([x[out_g][o], np.full(len(o), y[out_g])], 1)], 1)
        ax.add_collection(weight_collection(seg, W.reshape(-1), max_linewidth, float(np.abs(W).max()),
                                            zorder=1, gid=f"weights-{i}"))
    for g in spec.groups:
        ax.scatter(x[g], np.full(len(x[g]), y[g]), s=float(np.clip(600.0 / spec.groups[g].size, 4, 25)),
                   c=NEURON_COLOR, zorder=3, linewidths=0, gid=f"neurons-{g}")
        if show_labels:
            ax.text(float(x[g].min()) - 0.02, y[g], g, ha="right", va="center", fontsize=8,
                    gid="group-label")
    ax.set_xlim(min(float(v.min()) for v in x.values()) - 0.1, max(float(v.max()) for v in x.values()) + 0.05)
    ax.set_ylim(-0.5, max(rows) + 0.5)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return fig


def _slot_labels(labels, order, n: int, default: str, what: str) -> list[str]:
    """Label shown at each slot: ``labels[order[s]]`` (identity order when ``order`` is None)."""
    if labels is None:
        labels = [f"{default}{k + 1}" for k in range(n)]
    labels = [str(x) for x in labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} labels for {n} {what}s; give one per {what}")
    order = np.arange(n) if order is None else np.asarray(order)
    return [labels[int(k)] for k in order]


# ---------------------------------------------------------------------------------------------
# 2D
# ---------------------------------------------------------------------------------------------
def _x_positions(coords: np.ndarray) -> np.ndarray:
    """x of each slot: the unit coordinate for a line; slot order for grids and rings."""
    if coords.shape[1] == 1:
        return coords[:, 0]
    n = coords.shape[0]
    return (np.arange(n) + 0.5) / n


def plot_graph(
    model,
    ax=None,
    input_labels=None,
    output_labels=None,
    title: str | None = None,
    *,
    max_linewidth: float | None = None,
    min_fraction: float | None = None,
    show_labels="auto",
    token_labels=None,
    fold_gap: float = 0.22,
    neuron_size: float | None = None,
    fontsize: float | None = None,
    positive=POSITIVE_COLOR,
    negative=NEGATIVE_COLOR,
    figsize=None,
    dpi: float = 100,
):
    """Draw the paper's 2D connectivity graph of a layered model; returns the Figure.

    Parameters
    ----------
    model : anything :func:`bimt.wiring_of` accepts whose weights form one chain of groups.
    ax : draw into these axes (their figure is returned); default: a new figure.
    input_labels, output_labels : names of the inputs / outputs in *interface* order (default:
        the model's ``input_labels`` / ``output_labels``, else ``x1..xn`` / ``y1..ym``). Each
        slot shows the name of the input it currently holds. For token models
        ``input_labels`` may name the token rows instead (one per token).
    title : axes title.
    max_linewidth : width in points of the strongest weight of each layer (default 2, or 1
        when a layer is wider than 64 neurons).
    min_fraction : skip weights below this fraction of their layer's max|w|. Default: draw all
        weights (as the paper), except for big models (> 20,000 weights), where 1e-3.
    show_labels : True, False or "auto" (label interface layers of at most 100 neurons).
    token_labels : names of the token rows of a folded input layer (default "token 1", ...).
    fold_gap : vertical offset between the rows of a folded layer (layers are 1 apart).
    neuron_size, fontsize : dot area and label size (default: from the layer widths).
    positive, negative : colours of positive and negative weights.

    Grid and ring layers are drawn in slot order along x; use :func:`plot_graph_3d` for them.
    """
    view = model if isinstance(model, LayeredView) else layered_view(model)
    sizes, folds = view.sizes, view.folds
    if min_fraction is None:
        min_fraction = 1e-3 if sum(W.size for W in view.weights) > BIG_MODEL_WEIGHTS else 0.0
    if max_linewidth is None:
        max_linewidth = MAX_LINEWIDTH if max(sizes) <= 64 else MAX_LINEWIDTH / 2

    # neuron positions: one (x, y) per neuron f * n + s
    xs, ys = [], []
    for i, (c, f) in enumerate(zip(view.coords, folds)):
        x = _x_positions(c)
        xs.append(np.tile(x, f))
        ys.append(np.repeat(i - fold_gap * np.arange(f), len(x)))
    fig = _figure(ax, figsize or _graph_figsize(view, fold_gap), dpi)
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)

    for i, W in enumerate(view.weights):
        keep = keep_mask(W, min_fraction)
        o, k = np.divmod(np.flatnonzero(keep), W.shape[1])
        seg = np.stack(
            [np.stack([xs[i][k], ys[i][k]], 1), np.stack([xs[i + 1][o], ys[i + 1][o]], 1)], 1
        )
        scale = float(np.abs(W).max())
        ax.add_collection(weight_collection(
            seg.reshape(-1, 2, 2), W.reshape(-1)[keep], max_linewidth, scale, positive,
            negative, zorder=1, gid=f"weights-{i}",
        ))

    for i, name in enumerate(view.names):
        s = neuron_size if neuron_size is not None else float(np.clip(600.0 / max(sizes[i], 1), 1.0, 25.0))
        ax.scatter(xs[i], ys[i], s=s, c=NEURON_COLOR, zorder=3, linewidths=0, gid=f"neurons-{name}")

    xmin = min(x.min() for x in xs)
    xmax = max(x.max() for x in xs)
    pad_x = 0.04 * (xmax - xmin) if xmax > xmin else 0.5
    ybot, ytop = float(ys[0].min()), float(ys[-1].max())
    ax.set_xlim(xmin - pad_x, xmax + pad_x)
    ax.set_ylim(ybot - 0.5, ytop + 0.5)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)

    # labels
    def wanted(n: int) -> bool:
        if show_labels == "auto":
            return n <= MAX_AUTO_LABELS
        return bool(show_labels)

    pts_per_unit = _points_per_unit(fig, ax)
    if view.tokens or folds[0] > 1:
        names = token_labels
        if names is None and input_labels is not None and len(input_labels) == folds[0]:
            names = input_labels
        if names is None:
            names = [f"token {f + 1}" for f in range(folds[0])]
        if len(names) != folds[0]:
            raise ValueError(f"{len(names)} token labels for {folds[0]} token rows")
        if show_labels:
            fs = fontsize or 8
            for f, label in enumerate(names):
                ax.text(float(xs[0].min()) - 0.6 * pad_x, -fold_gap * f, str(label), ha="right", va="center",
                        fontsize=fs, gid="token-label", clip_on=False)
    elif wanted(sizes[0]):
        labels = _slot_labels(input_labels if input_labels is not None else view.input_labels,
                              view.input_order, sizes[0], "x", "input")
        _draw_labels(ax, xs[0], labels, ybot - 0.12, "top", "input-label", fontsize,
                     pts_per_unit * _min_gap(xs[0]))
    if wanted(sizes[-1]):
        labels = _slot_labels(output_labels if output_labels is not None else view.output_labels,
                              view.output_order, sizes[-1], "y", "output")
        _draw_labels(ax, xs[-1][: sizes[-1]], labels, ytop + 0.12, "bottom", "output-label",
                     fontsize, pts_per_unit * _min_gap(xs[-1][: sizes[-1]]))
    return fig


def _graph_figsize(view: LayeredView, fold_gap: float = 0.22) -> tuple[float, float]:
    """Default size (inches) of a 2D graph: wider for wider layers, taller for deeper nets."""
    L = len(view.names) - 1
    width = float(np.clip(1.4 + 0.2 * max(view.sizes), 4.0, 14.0))
    height = 1.6 + 1.0 * L + fold_gap * (max(view.folds) - 1)
    height = float(np.clip(max(height, 0.4 * width), 3.0, 11.0))
    return width, height


def _figure(ax, figsize, dpi):
    if ax is not None:
        return ax.figure
    return Figure(figsize=figsize, dpi=dpi, layout=None)


def _points_per_unit(fig, ax) -> float:
    """Points per data unit along x (before any layout change)."""
    width_in = fig.get_figwidth() * ax.get_position().width
    lo, hi = ax.get_xlim()
    return 72.0 * width_in / max(hi - lo, 1e-12)


def _min_gap(x: np.ndarray) -> float:
    if len(x) < 2:
        return 1.0
    d = np.diff(np.sort(x))
    d = d[d > 0]
    return float(d.min()) if d.size else 1.0


def _draw_labels(ax, x, labels, y, va, gid, fontsize, slot_pts):
    longest = max(len(s) for s in labels)
    fs = fontsize or float(np.clip(0.8 * slot_pts, 5.0, 11.0))
    rotate = longest * 0.62 * fs > 0.95 * slot_pts and longest > 1
    if rotate and fontsize is None:
        fs = float(np.clip(0.8 * slot_pts, 4.0, 9.0))
    for xi, label in zip(x, labels):
        ax.text(xi, y, label, ha="center", va=va, fontsize=fs, gid=gid, clip_on=False,
                rotation=90 if rotate else 0)


# ---------------------------------------------------------------------------------------------
# 3D
# ---------------------------------------------------------------------------------------------
def _xy_positions(coords: np.ndarray) -> np.ndarray:
    if coords.shape[1] >= 2:
        return coords[:, :2]
    return np.stack([coords[:, 0], np.full(coords.shape[0], 0.5)], 1)


def plot_graph_3d(
    model,
    ax=None,
    output_labels=None,
    title: str | None = None,
    *,
    input_labels=None,
    top_n: int | None = 600,
    min_fraction: float = 0.0,
    max_linewidth: float = 1.2,
    layer_gap: float = 1.0,
    fold_gap: float = 0.15,
    show_labels="auto",
    neuron_size: float | None = None,
    fontsize: float = 8,
    positive=POSITIVE_COLOR,
    negative=NEGATIVE_COLOR,
    elev: float = 20,
    azim: float = -60,
    figsize=(6, 7),
    dpi: float = 100,
):
    """Draw a layered model in 3D (the paper's Fig. 8); returns the Figure.

    Neurons sit at ``(x, y, layer)`` with ``(x, y)`` the unit coordinates of grid and ring
    layers (line layers at ``y = 0.5``). Each weight layer draws only its ``top_n`` strongest
    weights (``None``: all) whose ``|w|`` is at least ``min_fraction`` of the layer's max, with
    widths relative to the layer's max, so the MNIST model renders in about a second.
    Outputs are labelled (following ``output_order``); inputs only when there are few.
    """
    view = model if isinstance(model, LayeredView) else layered_view(model)
    sizes, folds = view.sizes, view.folds
    pts = []
    for i, (c, f) in enumerate(zip(view.coords, folds)):
        xy = _xy_positions(c)
        z = np.repeat(i * layer_gap - fold_gap * np.arange(f), len(xy))
        pts.append(np.column_stack([np.tile(xy, (f, 1)), z]))

    fig = _figure(ax, figsize, dpi)
    if ax is None:
        ax = fig.add_subplot(1, 1, 1, projection="3d")
    elif getattr(ax, "name", "") != "3d":
        raise ValueError("plot_graph_3d needs 3D axes (projection='3d')")
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    for i, W in enumerate(view.weights):
        keep = keep_mask(W, min_fraction, top_n)
        o, k = np.divmod(np.flatnonzero(keep), W.shape[1])
        seg = np.stack([pts[i][k], pts[i + 1][o]], 1)
        ax.add_collection3d(weight_collection(
            seg, W.reshape(-1)[keep], max_linewidth, float(np.abs(W).max()), positive,
            negative, collection_class=Line3DCollection, gid=f"weights-{i}",
        ))
    for i, name in enumerate(view.names):
        p = pts[i]
        s = neuron_size if neuron_size is not None else float(np.clip(200.0 / sizes[i], 0.5, 12.0))
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=s, c=NEURON_COLOR, depthshade=False,
                   linewidths=0, alpha=0.6 if sizes[i] > 200 else 1.0, gid=f"neurons-{name}")

    def wanted(n):
        return n <= 30 if show_labels == "auto" else bool(show_labels)

    top = pts[-1]
    if wanted(sizes[-1]):
        labels = _slot_labels(output_labels if output_labels is not None else view.output_labels,
                              view.output_order, sizes[-1], "y", "output")
        center = top[: sizes[-1], :2].mean(0)
        for p, label in zip(top[: sizes[-1]], labels):
            d = p[:2] - center
            norm = np.linalg.norm(d)
            off = 0.07 * d / norm if norm > 1e-9 else np.zeros(2)
            # drawn above every edge (zorder beats the depth-sorted collections) on a white box
            ax.text(p[0] + off[0], p[1] + off[1], p[2] + 0.08, label, fontsize=fontsize,
                    ha="center", va="bottom", gid="output-label", zorder=1000,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    if not view.tokens and folds[0] == 1 and wanted(sizes[0]):
        labels = _slot_labels(input_labels if input_labels is not None else view.input_labels,
                              view.input_order, sizes[0], "x", "input")
        for p, label in zip(pts[0], labels):
            ax.text(p[0], p[1], p[2] - 0.1, label, fontsize=fontsize, ha="center", va="top",
                    gid="input-label")

    allp = np.concatenate(pts)
    lo, hi = allp.min(0), allp.max(0)
    ax.set_xlim(min(lo[0], 0.0), max(hi[0], 1.0))
    ax.set_ylim(min(lo[1], 0.0), max(hi[1], 1.0))
    ax.set_zlim(lo[2] - 0.05, hi[2] + 0.15)
    ax.set_box_aspect((1, 1, max(0.8, 0.4 * (hi[2] - lo[2]))), zoom=1.15)
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Decision boundaries
# ---------------------------------------------------------------------------------------------
#: Region and point colours of classes 0, 1, ... (repeats after 10).
CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@torch.no_grad()
def plot_decision_boundary(
    model,
    X,
    y=None,
    ax=None,
    resolution: int = 200,
    *,
    padding: float = 0.25,
    title: str | None = None,
    class_names=None,
    point_size: float = 12,
    region_alpha: float = 0.3,
    legend: bool = True,
    figsize=(4.5, 4),
    dpi: float = 100,
):
    """Class regions of a 2-input classifier (argmax of its output) with the data on top.

    ``X`` is ``(n, 2)`` (array or tensor), ``y`` the integer classes (optional). The grid spans
    the data's range plus ``padding`` of it on each side, ``resolution`` points per axis. A
    model with one output is read as a logit: class 1 where it is positive. Returns the Figure.
    """
    X = np.asarray(X.detach().cpu() if torch.is_tensor(X) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"plot_decision_boundary needs 2-input data of shape (n, 2), got {X.shape}")
    if y is not None:
        y = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y).astype(np.int64).reshape(-1)
        if len(y) != len(X):
            raise ValueError(f"{len(y)} labels for {len(X)} points")
    resolution = int(resolution)
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    lo, hi = X.min(0), X.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    lo, hi = lo - padding * span, hi + padding * span
    gx, gy = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)

    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else "cpu"
    was_training = model.training
    model.eval()
    try:
        out = model(torch.as_tensor(grid, dtype=dtype, device=device))
    finally:
        if was_training:
            model.train()
    out = out.detach().cpu().double().numpy().reshape(len(grid), -1)
    cls = (out[:, 0] > 0).astype(int) if out.shape[1] == 1 else out.argmax(1)
    n_classes = max(2, out.shape[1], int(y.max()) + 1 if y is not None and len(y) else 0)

    from matplotlib.colors import ListedColormap

    colors = [CLASS_COLORS[c % len(CLASS_COLORS)] for c in range(n_classes)]
    fig = _figure(ax, figsize, dpi)
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    ax.imshow(cls.reshape(resolution, resolution), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
              cmap=ListedColormap(colors), vmin=-0.5, vmax=n_classes - 0.5, alpha=region_alpha,
              interpolation="nearest", aspect="auto", gid="regions")
    if y is not None:
        labels = wiring_of(model).output_labels if has_wiring(model) else None
        names = class_names or labels or [f"class {c}" for c in range(n_classes)]
        for c in np.unique(y):
            m = y == c
            ax.scatter(X[m, 0], X[m, 1], s=point_size, color=colors[c % len(colors)],
                       edgecolors="k", linewidths=0.3, label=str(names[c]) if c < len(names) else str(c),
                       gid=f"points-{c}")
        if legend:
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
    else:
        ax.scatter(X[:, 0], X[:, 1], s=point_size, color="k", gid="points")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title is not None:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# The channel graph of a convolutional network (the ``channels`` view, bimt.BioCNN): one row per
# group, one line per pair of neurons; a conv kernel ``w[o, i, :, :]`` and all the spatial
# positions (folds) a channel feeds into the first linear layer are summed into one signed
# number, drawn as plot_graph draws a layer's weight.
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def channel_view(model) -> LayeredView:
    """The network as a :class:`LayeredView` of slot-to-slot matrices (kernels and folds
    summed); its charged weights must form one chain of groups."""
    wiring = wiring_of(model)
    module, spec = wiring.module, wiring.spec
    nxt = {spec.weight_groups(n)[1]: n for n in spec.weights()}
    outs = {spec.weight_groups(n)[0] for n in spec.weights()}
    starts = [g for g in nxt if g not in outs]
    if len(starts) != 1 or len(nxt) != len(spec.weights()):
        raise ValueError("the channels view draws a chain of layers; this spec's weights are not one")
    names, mats = [starts[0]], []
    while names[-1] in nxt:
        name = nxt[names[-1]]
        out_g, in_g = spec.weight_groups(name)
        if out_g in names:
            raise ValueError("the model's weights form a cycle; the channels view cannot draw it")
        W = tensor(module, name).detach().to("cpu", torch.float64)
        W = W.reshape(W.shape[0], W.shape[1], -1).sum(2)  # over the kernel
        W = spec.to_slots(name, W)
        mats.append(W.numpy())
        names.append(out_g)

    def order(group):
        t = wiring.order(group)
        return None if t is None else t.detach().cpu().numpy().astype(np.int64)

    return LayeredView(names, [spec.groups[g].coords for g in names], [1] * len(names), mats,
                       order(names[0]), order(names[-1]), wiring.input_labels,
                       wiring.output_labels, False)


def plot_channels(model, ax=None, **kw) -> Figure:
    """Draw the channel graph (see the module docstring); ``kw`` go to :func:`plot_graph`."""
    return plot_graph(channel_view(model), ax=ax, **kw)
