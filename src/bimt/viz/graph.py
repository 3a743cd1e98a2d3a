"""Connectivity graphs of any model, 2D and 3D, from its :class:`~bimt.models.drawing.Drawing`.

The picture follows the paper (Section 2, "Connectivity Graphs"): neurons are dots at their
positions, every weight is a line whose width is ``|w| / max|w|`` of its tensor (times
``max_linewidth``), blue when positive, red when negative. Positions are the *unit*
coordinates of the layout, so the picture does not depend on ``A``; rows are stacked bottom
(inputs) to top (outputs). What is drawn comes from the model's view (its rows, weights and
residual streams; :func:`bimt.models.drawing.drawing_of`), so every model with a spec can be
drawn: a residual stream is drawn as successive rows joined by faint grey lines (the identity
of the skip connection), heads as boxes around their neurons, recurrent weights as arcs inside
their row, folded neurons (tokens, q/k/v) as slightly offset copies of their row. Neurons are
coloured by module (the connected components of :func:`bimt.analysis.find_modules`, grey when
in none), and a key names the edge colours and the modules.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``. Artists
carry ``gid`` tags: ``weights-<i>`` (the lines of the view's weight ``i``), ``streams``,
``neurons-<row>``, ``heads-<row>``, ``input-label``, ``output-label``, ``token-label``,
``row-label``, ``highlight``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.drawing import Drawing, drawing_of
from ..models.wiring import has_wiring, wiring_of
from ._io import Figure
from .style import (
    MAX_LINEWIDTH, NEGATIVE_COLOR, NEURON_COLOR, POSITIVE_COLOR, keep_mask, weight_collection,
)

__all__ = ["plot", "plot_graph", "plot_graph_3d", "plot_decision_boundary", "neuron_positions",
           "graph_figsize", "MODULE_COLORS"]

#: Above this many weights in total, 2D drawings skip weights below 1e-3 of their tensor's
#: max (far thinner than a pixel anyway) unless ``min_fraction`` says otherwise.
BIG_MODEL_WEIGHTS = 20_000
#: Above this many neurons, an interface row gets no default labels (MNIST pixels).
MAX_AUTO_LABELS = 100
#: Module colours (neurons in no module stay black).
MODULE_COLORS = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan", "gold", "tab:gray")
STREAM_COLOR = "0.82"
FOLD_GAP = 0.22


def plot(model, ax=None, **kw) -> Figure:
    """Draw a model in its wiring's view (3D when the view places rows in 3D); returns the
    Figure. ``kw`` go to :func:`plot_graph` or :func:`plot_graph_3d`."""
    drawing = drawing_of(wiring_of(model))
    return (plot_graph_3d if drawing.three_d else plot_graph)(model, ax=ax, drawing=drawing, **kw)


def _module_colors(wiring, threshold=None) -> dict:
    """``{(group, slot): colour}`` for the neurons of the modules (of 3+ neurons)."""
    from ..analysis import MODULE_THRESHOLD, find_modules

    try:
        comps = find_modules(wiring, MODULE_THRESHOLD if threshold is None else threshold)
    except ValueError:  # every weight zero: no modules
        return {}
    comps = [c for c in comps if len(c) > 2]
    return {n: MODULE_COLORS[k % len(MODULE_COLORS)] for k, comp in enumerate(comps) for n in comp}


def neuron_positions(drawing: Drawing, fold_gap: float = FOLD_GAP) -> list[np.ndarray]:
    """2D drawing positions of every row's neurons, ``(fold * n, 2)`` each (entry ``f * n + s``):
    lines at their unit coordinate (grids in slot order), spatial rows at their coordinates
    within the row's band, rows of one level side by side when their coordinates overlap."""
    xs = []
    for r in drawing.rows:
        if r.spatial:
            xs.append(r.xy[:, 0].copy())
        elif np.allclose(r.xy[:, 1], 0.5) or r.size == 1:
            xs.append(r.xy[:, 0].copy())
        else:  # a grid or ring drawn flat: slot order
            xs.append((np.arange(r.size) + 0.5) / r.size)
    by_level: dict[float, list[int]] = {}
    for i, r in enumerate(drawing.rows):
        by_level.setdefault(r.level, []).append(i)
    for idx in by_level.values():
        spans = sorted((float(xs[i].min()), float(xs[i].max())) for i in idx)
        if len(idx) > 1 and not all(a[1] < b[0] for a, b in zip(spans, spans[1:])):
            width = 1.0 / len(idx)  # overlapping rows on one level: side by side
            for k, i in enumerate(idx):
                lo, hi = float(xs[i].min()), float(xs[i].max())
                unit = (xs[i] - lo) / (hi - lo) if hi > lo else np.full(len(xs[i]), 0.5)
                xs[i] = k * width + width * (0.08 + 0.84 * unit)
    out = []
    for r, x in zip(drawing.rows, xs):
        if r.spatial:
            y = r.level - 0.6 + 1.2 * r.xy[:, 1]
        else:
            y = np.full(r.size, float(r.level))
        out.append(np.concatenate([np.stack([x, y - fold_gap * f], 1) for f in range(r.fold)]))
    return out


def _arcs(a: np.ndarray, b: np.ndarray, bend: float = 0.18, points: int = 16) -> np.ndarray:
    """Quadratic Bezier curves from ``a[i]`` to ``b[i]``, bent left by ``bend * length`` (so
    ``i -> j`` and ``j -> i`` do not overlap)."""
    d = b - a
    ctrl = (a + b) / 2 + bend * np.stack([-d[:, 1], d[:, 0]], 1)
    t = np.linspace(0, 1, points)[None, :, None]
    return (1 - t) ** 2 * a[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t**2 * b[:, None]


def _loops(p: np.ndarray, radius: float = 0.035, points: int = 16) -> np.ndarray:
    """Small circles touching each neuron from above (self-connections)."""
    t = np.linspace(0, 2 * np.pi, points)[None, :]
    cx, cy = p[:, 0:1], p[:, 1:2] + radius
    return np.stack([cx + radius * np.sin(t), cy - radius * np.cos(t)], 2)


def _entries(drawing: Drawing, e, keep) -> tuple[np.ndarray, np.ndarray]:
    """Row-entry indices (``f * n + s``) of the drawn weights' out and in neurons."""
    o, k = np.divmod(np.flatnonzero(keep), e.W.shape[1])
    n_out, n_in = drawing.rows[e.out].size, drawing.rows[e.inp].size
    return o + e.out_fold * n_out, k + e.in_fold * n_in


def _interface_labels(row, labels, what: str) -> list[str] | None:
    """An interface row's slot labels: ``labels`` (interface order) placed by the row's order,
    else the row's own."""
    if labels is None or row.order is None:
        return row.labels
    labels = [str(x) for x in labels]
    if len(labels) != row.size:
        raise ValueError(f"{len(labels)} {what} labels for {row.size} {what}s; give one per {what}")
    return [labels[k] for k in row.order]


def _figure(ax, figsize, dpi, projection=None):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=dpi, layout=None)
    return fig, fig.add_subplot(1, 1, 1, projection=projection)


def graph_figsize(drawing: Drawing, fold_gap: float = FOLD_GAP) -> tuple[float, float]:
    """Default size (inches) of a 2D graph: wider for wider rows, taller for more levels."""
    rows = drawing.rows
    levels = max(r.level for r in rows) - min(r.level for r in rows)
    if any(r.spatial for r in rows):  # a grid of units: room for it to look square
        return 6.0, float(np.clip(2.0 + 2.2 * levels, 4.0, 11.0))
    width = float(np.clip(1.4 + 0.2 * max(r.size for r in rows), 4.0, 14.0))
    height = 1.6 + 1.0 * levels + fold_gap * (max(r.fold for r in rows) - 1)
    return width, float(np.clip(max(height, 0.4 * width), 3.0, 11.0))


def _drawing(model, drawing):
    if drawing is not None:
        return drawing
    if not has_wiring(model):
        raise TypeError(f"{type(model).__name__} has no bimt wiring: draw a BioMLP, a model given "
                        "one by bimt.attach(module, spec), or its Wiring")
    return drawing_of(wiring_of(model))


def plot_graph(model, ax=None, input_labels=None, output_labels=None, title: str | None = None, *,
               drawing: Drawing | None = None, max_linewidth: float | None = None,
               min_fraction: float | None = None, show_labels="auto", token_labels=None,
               row_labels="auto", modules: bool = True, legend: bool = True,
               highlight: dict | None = None, fold_gap: float = FOLD_GAP,
               neuron_size: float | None = None, fontsize: float | None = None,
               positive=POSITIVE_COLOR, negative=NEGATIVE_COLOR, figsize=None, dpi: float = 100):
    """Draw the paper's 2D connectivity graph of any model with a wiring; returns the Figure.

    Parameters
    ----------
    model : anything :func:`bimt.wiring_of` accepts.
    ax : draw into these axes (their figure is returned); default: a new figure.
    input_labels, output_labels : names of the inputs / outputs in *interface* order (default:
        the model's, else ``x1..`` / ``y1..``); each slot shows the name of the feature it holds.
        For token models ``input_labels`` may name the token rows instead.
    title : axes title.
    drawing : the :class:`~bimt.models.drawing.Drawing` to render (default: the model's view).
    max_linewidth : width in points of the strongest weight of each tensor (default 2, or 1
        when a row is wider than 64 neurons).
    min_fraction : skip weights below this fraction of their tensor's max|w|. Default: draw all
        (as the paper), except for big models (> 20,000 weights), where 1e-3.
    show_labels : True, False or "auto" (label interface rows of at most 100 neurons).
    token_labels : names of the rows of a folded input (default "token 1", ...).
    row_labels : name every row at its left: True, False or "auto" (when the drawing has
        residual streams or several rows on one level).
    modules : colour neurons by module; legend : a key to the edge colours and modules.
    highlight : ``{group: [slots]}`` circled (a circuit, say).
    fold_gap : vertical offset between the copies of a folded row (rows are 1 apart).
    neuron_size, fontsize : dot area and label size (default: from the row widths).
    positive, negative : colours of positive and negative weights.

    Grid and ring rows are drawn in slot order along x; use :func:`plot_graph_3d` for them.
    """
    drawing = _drawing(model, drawing)
    wiring = wiring_of(model)
    rows = drawing.rows
    pos = neuron_positions(drawing, fold_gap)
    sizes = [r.size for r in rows]
    total = sum(e.W.size for e in drawing.edges)
    if min_fraction is None:
        min_fraction = 1e-3 if total > BIG_MODEL_WEIGHTS else 0.0
    if max_linewidth is None:
        max_linewidth = MAX_LINEWIDTH if max(sizes) <= 64 else MAX_LINEWIDTH / 2
    fig, ax = _figure(ax, figsize or graph_figsize(drawing, fold_gap), dpi)

    for a, b in drawing.streams:  # the skip connections: each neuron to its next state
        seg = np.stack([pos[a][:rows[a].size], pos[b][:rows[b].size]], 1)
        ax.add_collection(weight_collection(seg, np.ones(len(seg)), 0.6, 1.0, STREAM_COLOR,
                                            STREAM_COLOR, zorder=0, gid="streams"))
    for i, e in enumerate(drawing.edges):
        keep = keep_mask(e.W, min_fraction)
        o, k = _entries(drawing, e, keep)
        a, b = pos[e.inp][k], pos[e.out][o]
        w, scale = e.W.reshape(-1)[keep], float(np.abs(e.W).max()) if e.W.size else 0.0
        if e.out == e.inp:  # recurrent: arcs, self-connections as loops
            self_loop = o == k
            paths = np.concatenate([_arcs(a[~self_loop], b[~self_loop]), _loops(a[self_loop])])
            w = np.concatenate([w[~self_loop], w[self_loop]])
            ax.add_collection(weight_collection(paths, w, max_linewidth, scale, positive, negative,
                                                alpha=0.85, zorder=1, gid=f"weights-{i}"))
        else:
            ax.add_collection(weight_collection(np.stack([a, b], 1), w, max_linewidth, scale,
                                                positive, negative, zorder=1, gid=f"weights-{i}"))

    colours = _module_colors(wiring) if modules else {}
    seen = set()
    for r, p in zip(rows, pos):
        s = neuron_size if neuron_size is not None else float(np.clip(600.0 / max(r.size, 1), 1.0, 25.0))
        c = [colours.get((r.group, slot % r.size), NEURON_COLOR) for slot in range(len(p))]
        gid = f"neurons-{r.group}" if r.group not in seen else f"neurons-{r.name}"
        seen.add(r.group)
        ax.scatter(p[:, 0], p[:, 1], s=s, c=c, zorder=3, linewidths=0, gid=gid)
        if r.heads > 1:
            _head_boxes(ax, r, p, fold_gap)
    if highlight:
        for r, p in zip(rows, pos):
            slots = [s for s in highlight.get(r.group, []) if s < r.size]
            if slots:
                ax.scatter(p[slots, 0], p[slots, 1], s=90, facecolors="none", edgecolors="gold",
                           linewidths=1.5, zorder=4, gid="highlight")

    allp = np.concatenate(pos)
    (xmin, ymin), (xmax, ymax) = allp.min(0), allp.max(0)
    pad_x = 0.04 * (xmax - xmin) if xmax > xmin else 0.5
    if any(e.out == e.inp for e in drawing.edges):
        pad_x += 0.06  # room for the recurrent arcs
    ax.set_xlim(xmin - pad_x, xmax + pad_x)
    ax.set_ylim(ymin - 0.5, ymax + 0.5)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    _labels(ax, fig, drawing, pos, input_labels, output_labels, token_labels, show_labels,
            row_labels, fontsize, pad_x)
    if legend:
        _legend(ax, positive, negative, colours, bool(drawing.streams))
    return fig


def _head_boxes(ax, row, p, fold_gap) -> None:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    d = row.size // row.heads
    xs = p[:row.size, 0]
    step = float(np.min(np.diff(np.sort(xs)))) if row.size > 1 else 0.1
    boxes = []
    for h in range(row.heads):
        lo, hi = float(xs[h * d:(h + 1) * d].min()), float(xs[h * d:(h + 1) * d].max())
        bottom = row.level - fold_gap * (row.fold - 1) - 0.09
        boxes.append(Rectangle((lo - 0.4 * step, bottom), hi - lo + 0.8 * step,
                               fold_gap * (row.fold - 1) + 0.18))
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="0.6", linewidth=0.6,
                                      zorder=2, gid=f"heads-{row.name}"))


def _labels(ax, fig, drawing, pos, input_labels, output_labels, token_labels, show_labels,
            row_labels, fontsize, pad_x) -> None:
    rows = drawing.rows
    wanted = (lambda n: n <= MAX_AUTO_LABELS) if show_labels == "auto" else (lambda n: bool(show_labels))
    pts_per_unit = _points_per_unit(fig, ax)
    for r, p in zip(rows, pos):
        if r.role == "tokens" or (r.role == "input" and r.fold > 1):  # token rows
            names = token_labels
            if names is None and input_labels is not None and len(input_labels) == r.fold:
                names = input_labels
            names = names or r.fold_names or [f"token {f + 1}" for f in range(r.fold)]
            if len(names) != r.fold:
                raise ValueError(f"{len(names)} token labels for {r.fold} token rows")
            if show_labels:
                for f, label in enumerate(names):
                    ax.text(float(p[:, 0].min()) - 0.6 * pad_x, float(p[f * r.size, 1]), str(label),
                            ha="right", va="center", fontsize=fontsize or 8, gid="token-label",
                            clip_on=False)
        elif r.role in ("input", "output") and wanted(r.size) and not r.spatial:
            given = input_labels if r.role == "input" else output_labels
            labels = _interface_labels(r, given, r.role)
            if labels is None:
                continue
            x = p[:r.size, 0]
            y = float(p[:, 1].min()) - 0.12 if r.role == "input" else float(p[:, 1].max()) + 0.12
            _draw_labels(ax, x, labels, y, "top" if r.role == "input" else "bottom",
                         f"{r.role}-label", fontsize, pts_per_unit * _min_gap(x))
    levels = [r.level for r in rows]
    if row_labels == "auto":
        row_labels = bool(drawing.streams) or len(set(levels)) < len(levels)
    if row_labels:
        for r, p in zip(rows, pos):
            ax.text(float(p[:, 0].min()) - 0.6 * pad_x, float(p[:r.size, 1].mean()), r.name,
                    ha="right", va="center", fontsize=7, color="0.3", gid="row-label", clip_on=False)


def _legend(ax, positive, negative, colours: dict, streams: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=positive, lw=1.5, label="w > 0"),
               Line2D([], [], color=negative, lw=1.5, label="w < 0")]
    if streams:
        handles.append(Line2D([], [], color=STREAM_COLOR, lw=1.5, label="residual stream"))
    for k, colour in enumerate(dict.fromkeys(colours.values())):
        handles.append(Patch(color=colour, label=f"module {_letter(k)}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              frameon=False, handlelength=1.2)


def _letter(k: int) -> str:
    return chr(ord("A") + k) if k < 26 else f"M{k}"


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


def plot_graph_3d(model, ax=None, output_labels=None, title: str | None = None, *,
                  drawing: Drawing | None = None, input_labels=None, top_n: int | None = 600,
                  min_fraction: float = 0.0, max_linewidth: float = 1.2, layer_gap: float = 1.0,
                  fold_gap: float = 0.15, show_labels="auto", neuron_size: float | None = None,
                  fontsize: float = 8, positive=POSITIVE_COLOR, negative=NEGATIVE_COLOR,
                  elev: float = 20, azim: float = -60, figsize=(6, 7), dpi: float = 100, **_):
    """Draw a model in 3D (the paper's Fig. 8); returns the Figure.

    Neurons sit at ``(x, y, level)`` with ``(x, y)`` the unit coordinates of grid and ring rows
    (line rows at ``y = 0.5``). Each weight draws only its ``top_n`` strongest entries
    (``None``: all) whose ``|w|`` is at least ``min_fraction`` of its max, with widths relative
    to that max, so the MNIST model renders in about a second. Outputs are labelled (following
    their order); inputs only when there are few.
    """
    drawing = _drawing(model, drawing)
    rows = drawing.rows
    pts = []
    for r in rows:
        z = np.repeat(r.level * layer_gap - fold_gap * np.arange(r.fold), r.size)
        pts.append(np.column_stack([np.tile(r.xy, (r.fold, 1)), z]))
    fig, ax = _figure(ax, figsize, dpi, projection="3d")
    if getattr(ax, "name", "") != "3d":
        raise ValueError("plot_graph_3d needs 3D axes (projection='3d')")
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    for i, e in enumerate(drawing.edges):
        keep = keep_mask(e.W, min_fraction, top_n)
        o, k = _entries(drawing, e, keep)
        ax.add_collection3d(weight_collection(
            np.stack([pts[e.inp][k], pts[e.out][o]], 1), e.W.reshape(-1)[keep], max_linewidth,
            float(np.abs(e.W).max()), positive, negative, collection_class=Line3DCollection,
            gid=f"weights-{i}"))
    for r, p in zip(rows, pts):
        s = neuron_size if neuron_size is not None else float(np.clip(200.0 / r.size, 0.5, 12.0))
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=s, c=NEURON_COLOR, depthshade=False,
                   linewidths=0, alpha=0.6 if r.size > 200 else 1.0, gid=f"neurons-{r.name}")
    wanted = (lambda n: n <= 30) if show_labels == "auto" else (lambda n: bool(show_labels))
    for r, p in zip(rows, pts):
        if r.role == "output" and wanted(r.size):
            labels = _interface_labels(r, output_labels, "output") or []
            center = p[:r.size, :2].mean(0)
            for q, label in zip(p[:r.size], labels):
                d = q[:2] - center
                norm = np.linalg.norm(d)
                off = 0.07 * d / norm if norm > 1e-9 else np.zeros(2)
                # drawn above every edge (zorder beats the depth-sorted collections) on a white box
                ax.text(q[0] + off[0], q[1] + off[1], q[2] + 0.08, label, fontsize=fontsize,
                        ha="center", va="bottom", gid="output-label", zorder=1000,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
        elif r.role == "input" and r.fold == 1 and wanted(r.size):
            for q, label in zip(p, _interface_labels(r, input_labels, "input") or []):
                ax.text(q[0], q[1], q[2] - 0.1, label, fontsize=fontsize, ha="center", va="top",
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
    fig, ax = _figure(ax, figsize, dpi)
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


