"""The picture of a BioRNN: hidden units at their positions, their recurrent wiring curved.

Hidden units sit at their unit coordinates (a line at mid-height, a grid as is; a 3D box is
drawn as its ``c`` layers side by side, layer ``k`` shifted right by ``1.15 k``). Inputs are a
row below, outputs a row above, each at its line coordinate stretched to the drawing's width,
labelled with the interface name their slot holds. Weights follow the paper's convention
(blue positive, red negative, width ``|w| / max|w|`` of their tensor); recurrent weights are
quadratic Bezier arcs bent to the left of their direction, so ``i -> j`` and ``j -> i`` do not
overlap, and self-connections are small loops. Neurons are coloured by module: the connected
components of :func:`bimt.analysis.find_modules` (grey: in no module).

Artists carry ``gid`` tags: ``weights-input``, ``weights-recurrent``, ``weights-readout``,
``self-loops``, ``neurons-<group>``, ``input-label``, ``output-label``.
"""

from __future__ import annotations

import numpy as np

from ..models.wiring import wiring_of
from ..core.spec import tensor
from ._io import Figure
from .style import MAX_LINEWIDTH, NEGATIVE_COLOR, POSITIVE_COLOR, keep_mask, weight_collection

__all__ = ["plot_rnn", "rnn_positions"]

MODULE_COLORS = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan")
_ROW_GAP = 0.45


def rnn_positions(model) -> dict[str, np.ndarray]:
    """2D drawing positions of the ``input``, ``hidden`` and ``output`` groups (slot order)."""
    spec = wiring_of(model).spec
    c = spec.groups["hidden"].coords
    if c.shape[1] == 1:
        xy = np.stack([c[:, 0], np.full(len(c), 0.5)], 1)
    elif c.shape[1] == 2:
        xy = c.copy()
    else:
        layers = np.unique(c[:, 2])
        k = np.searchsorted(layers, c[:, 2])
        xy = np.stack([c[:, 0] + 1.15 * k, c[:, 1]], 1)
    width = max(float(xy[:, 0].max()), 1.0)

    def row(group, y):
        x = spec.groups[group].coords[:, 0] * width
        return np.stack([x, np.full(len(x), y)], 1)

    return {"input": row("input", -_ROW_GAP), "hidden": xy, "output": row("output", 1 + _ROW_GAP)}


def _arcs(a: np.ndarray, b: np.ndarray, bend: float = 0.18, points: int = 16) -> np.ndarray:
    """Quadratic Bezier curves from ``a[i]`` to ``b[i]``, bent left by ``bend * length``."""
    d = b - a
    normal = np.stack([-d[:, 1], d[:, 0]], 1)
    ctrl = (a + b) / 2 + bend * normal
    t = np.linspace(0, 1, points)[None, :, None]
    return (1 - t) ** 2 * a[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t**2 * b[:, None]


def _loops(p: np.ndarray, radius: float = 0.035, points: int = 16) -> np.ndarray:
    """Small circles touching each neuron from above."""
    t = np.linspace(0, 2 * np.pi, points)[None, :]
    cx, cy = p[:, 0:1], p[:, 1:2] + radius
    return np.stack([cx + radius * np.sin(t), cy - radius * np.cos(t)], 2)


def _slot_weights(module, spec, name: str) -> np.ndarray:
    """Weight ``name`` summed over folds (a GRU's gates), signs kept: ``(out slots, in slots)``."""
    w = tensor(module, name).detach().to("cpu").double()
    return spec.to_slots(name, w).numpy()


def plot_rnn(model, ax=None, title: str | None = None, *, min_fraction: float = 0.0,
             max_linewidth: float = MAX_LINEWIDTH, modules: bool = True,
             module_threshold: float | None = None, show_labels: bool = True,
             positive=POSITIVE_COLOR, negative=NEGATIVE_COLOR, figsize=None, dpi: float = 100):
    """Draw a :class:`bimt.BioRNN` (or any model with ``input``/``hidden``/``output`` groups);
    returns the Figure. ``min_fraction`` skips weights below that fraction of their tensor's
    max; ``modules`` colours neurons by pruned connected component."""
    from ..analysis import MODULE_THRESHOLD, find_modules

    wiring = wiring_of(model)
    spec, module = wiring.spec, wiring.module
    missing = {"input", "hidden", "output"} - set(spec.groups)
    if missing:
        raise ValueError(f"plot_rnn draws models with groups input, hidden and output; this spec "
                         f"lacks {sorted(missing)} (groups: {', '.join(spec.groups)})")
    pos = rnn_positions(model)
    width = max(float(pos["hidden"][:, 0].max()), 1.0)
    if figsize is None:
        figsize = (2.0 + 4.5 * width, 6.2)
    fig = Figure(figsize=figsize, dpi=dpi) if ax is None else ax.figure
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)

    for name in spec.weights():
        out_g, in_g = spec.weight_groups(name)
        W = _slot_weights(module, spec, name)
        keep = keep_mask(W, min_fraction)
        o, i = np.divmod(np.flatnonzero(keep), W.shape[1])
        scale = float(np.abs(W).max())
        a, b = pos[in_g][i], pos[out_g][o]
        kind = "recurrent" if out_g == in_g else ("input" if in_g == "input" else "readout")
        if kind == "recurrent":
            self_loop = o == i
            paths = _arcs(a[~self_loop], b[~self_loop])
            ax.add_collection(weight_collection(
                paths, W[o, i][~self_loop], max_linewidth, scale, positive, negative,
                alpha=0.85, zorder=1, gid="weights-recurrent"))
            if self_loop.any():
                ax.add_collection(weight_collection(
                    _loops(a[self_loop]), W[o, i][self_loop], max_linewidth, scale, positive,
                    negative, alpha=0.85, zorder=1, gid="self-loops"))
        else:
            seg = np.stack([a, b], 1)
            ax.add_collection(weight_collection(seg, W[o, i], max_linewidth, scale, positive,
                                                negative, alpha=0.6, zorder=1,
                                                gid=f"weights-{kind}"))

    colour = {g: np.array(["0.55"] * spec.groups[g].size, dtype=object) for g in spec.groups}
    if modules:
        comps = find_modules(wiring, MODULE_THRESHOLD if module_threshold is None else module_threshold)
        for k, comp in enumerate(c for c in comps if len(c) > 2):
            for g, s in comp:
                colour[g][s] = MODULE_COLORS[k % len(MODULE_COLORS)]
    for g in ("input", "hidden", "output"):
        ax.scatter(pos[g][:, 0], pos[g][:, 1], s=40 if g != "hidden" else 30,
                   c=list(colour[g]), edgecolors="black", linewidths=0.5, zorder=3,
                   gid=f"neurons-{g}")

    if show_labels:
        for g, dy, va, gid in (("input", -0.06, "top", "input-label"),
                               ("output", 0.06, "bottom", "output-label")):
            labels = wiring.input_labels if g == "input" else wiring.output_labels
            order = wiring.order(g)
            n = spec.groups[g].size
            order = np.arange(n) if order is None else order.cpu().numpy()
            for s in range(n):
                k = int(order[s])
                text = labels[k] if labels is not None and k < len(labels) else \
                    f"{'x' if g == 'input' else 'y'}{k + 1}"
                crowded = n > 6 * width  # many labels on one row: write them upright
                ax.text(pos[g][s, 0], pos[g][s, 1] + dy, str(text), ha="center", va=va,
                        fontsize=6 if crowded else 8, rotation=90 if crowded else 0, gid=gid,
                        clip_on=False)
    ax.set_xlim(-0.12, width + 0.12)
    ax.set_ylim(-_ROW_GAP - 0.25, 1 + _ROW_GAP + 0.25)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return fig
