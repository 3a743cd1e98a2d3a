"""The connectivity graph of a BioTransformer (the paper's Fig. 7).

Rows, bottom to top: the inputs, the residual stream after the embedding ("Embed"), then for
every block shown its attention neurons ("Atn": Q, K and V drawn as three slightly offset rows
that share their positions, since ``q_j``, ``k_j`` and ``v_j`` occupy one slot), the residual
stream after attention, the MLP hidden neurons, the residual stream after the MLP, and finally
the outputs. Residual rows are numbered as in :meth:`BioTransformer.residual_stream` (``Res{i}``
is entry ``i``; ``Res0`` is "Embed").

Every weight is a line whose width is ``|w| / max |w|`` of its matrix (the joint QKV matrix
counts as one), blue when positive, red when negative, as in the paper (the shared conventions
of :mod:`bimt.viz.style`). Nothing is thresholded:
thin lines simply vanish. ``block=-1`` (default) shows only the last block, like the paper,
which draws the embedding under it and ignores its dependence on earlier blocks; the row under
the shown block is then labelled with its residual index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.wiring import wiring_of
from ..core.spec import tensor
from ._io import Figure
from .style import MAX_LINEWIDTH, NEURON_COLOR, weight_collection

__all__ = ["plot_transformer_graph"]

QKV_COLORS = ("tab:green", "tab:orange", "tab:purple")
QKV_OFFSET = 0.16  # vertical offset between the Q, K and V rows, in row units


def _x(spec, group: str) -> np.ndarray:
    """Horizontal positions of a group's slots: its coordinates when they lie on a line."""
    g = spec.groups[group]
    if g.coords.shape[1] == 1:
        return g.coords[:, 0]
    return (np.arange(g.size) + 0.5) / g.size


def _edges(ax, W, x_out, y_out, x_in, y_in, linewidth):
    """Draw ``W[out, in]`` as lines from ``(x_in, y_in)`` to ``(x_out, y_out[out])``."""
    W = np.asarray(W, dtype=float)
    y_out = np.broadcast_to(np.asarray(y_out, float), (W.shape[0],))
    o, i = np.meshgrid(np.arange(W.shape[0]), np.arange(W.shape[1]), indexing="ij")
    o, i = o.ravel(), i.ravel()
    segments = np.stack(
        [np.stack([x_in[i], np.full(len(i), float(y_in))], 1), np.stack([x_out[o], y_out[o]], 1)],
        1,
    )
    lc = weight_collection(segments, W[o, i], max_linewidth=linewidth, zorder=1)
    ax.add_collection(lc)
    return lc


def plot_transformer_graph(
    model,
    block: int | None = -1,
    ax=None,
    input_labels: Sequence[str] | None = None,
    output_labels: Sequence[str] | None = None,
    linewidth: float = MAX_LINEWIDTH,
    neuron_size: float = 8.0,
    title: str | None = None,
) -> Figure:
    """Draw a BioTransformer's connectivity graph in the layout of the paper's Fig. 7.

    Parameters
    ----------
    model : a :class:`~bimt.models.transformer.BioTransformer` (or its wiring).
    block : index of the one block to show (``-1``: the last, as the paper), or ``None`` for
        every block.
    ax : a matplotlib Axes to draw on (default: a new Figure, no pyplot needed).
    input_labels, output_labels : names of the input and output features in interface order
        (default: the model's ``input_labels`` / ``output_labels``, else none); each slot is
        labelled with the feature it holds now.
    linewidth : width of the strongest weight of each matrix.

    Returns the Figure.
    """
    wiring = wiring_of(model)
    spec, module = wiring.spec, wiring.module
    n = sum(g.startswith("attn") for g in spec.groups)
    if block is None:
        shown = list(range(n))
    else:
        valid = isinstance(block, (int, np.integer)) and not isinstance(block, bool)
        if not valid or not -n <= block < n:
            raise ValueError(f"block must be an integer in [{-n}, {n - 1}] or None, got {block!r}")
        shown = [int(block) % n]
    if ax is None:
        fig = Figure(figsize=(8, 1.1 * (3 + 4 * len(shown))))
        ax = fig.add_subplot(1, 1, 1)
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.96)
    else:
        fig = ax.figure
    if input_labels is None:
        input_labels = wiring.input_labels
    if output_labels is None:
        output_labels = wiring.output_labels

    def W(name):
        return tensor(module, f"{name}.weight").detach().to("cpu").float().numpy()

    x_in, x_res, x_out = _x(spec, "input"), _x(spec, "resid"), _x(spec, "output")
    rows: list[tuple[float, str]] = []
    y = 0.0
    rows.append((y, "input"))
    ax.scatter(x_in, np.full_like(x_in, y), s=neuron_size * 2, c=NEURON_COLOR, zorder=3)
    y_prev = y = y + 1.0
    first = shown[0]
    rows.append((y, "Embed" if first == 0 else f"Res{2 * first}"))
    ax.scatter(x_res, np.full_like(x_res, y), s=neuron_size, c=NEURON_COLOR, zorder=3)
    _edges(ax, W("embed"), x_res, y, x_in, 0.0, linewidth)

    for b in shown:
        blk = f"blocks.{b}"
        x_att, x_mlp = _x(spec, f"attn{b}"), _x(spec, f"mlp{b}")
        d = spec.groups["resid"].size
        n_heads = spec.groups[f"attn{b}"].heads
        # attention: Q, K, V rows share positions, offset vertically
        y_att = y_prev + 1.0
        y_qkv = y_att + QKV_OFFSET * np.array([-1.0, 0.0, 1.0])
        y_rows = np.repeat(y_qkv, d)  # neuron f * d + j at slot j, row f
        _edges(ax, W(f"{blk}.attn.qkv"), np.tile(x_att, 3), y_rows, x_res, y_prev, linewidth)
        for f, name in enumerate("QKV"):
            ax.scatter(x_att, np.full_like(x_att, y_qkv[f]), s=neuron_size, c=QKV_COLORS[f],
                       zorder=3, label=name if b == shown[0] else None)
        hs = d // n_heads
        for h in range(1, n_heads):  # head boundaries
            xb = 0.5 * (x_att[h * hs - 1] + x_att[h * hs])
            ax.plot([xb, xb], [y_qkv[0] - 0.1, y_qkv[2] + 0.1], color="0.6", lw=0.8, ls="--",
                    zorder=2)
        rows.append((y_att, f"Atn{b}"))
        # output projection reads the V neurons
        y_res1 = y_att + 1.0
        _edges(ax, W(f"{blk}.attn.proj"), x_res, y_res1, x_att, y_qkv[2], linewidth)
        ax.scatter(x_res, np.full_like(x_res, y_res1), s=neuron_size, c=NEURON_COLOR, zorder=3)
        rows.append((y_res1, f"Res{2 * b + 1}"))
        # MLP
        y_mlp = y_res1 + 1.0
        _edges(ax, W(f"{blk}.mlp.fc1"), x_mlp, y_mlp, x_res, y_res1, linewidth)
        ax.scatter(x_mlp, np.full_like(x_mlp, y_mlp), s=neuron_size * 0.5, c=NEURON_COLOR,
                   zorder=3)
        rows.append((y_mlp, f"MLP{b}"))
        y_res2 = y_mlp + 1.0
        _edges(ax, W(f"{blk}.mlp.fc2"), x_res, y_res2, x_mlp, y_mlp, linewidth)
        ax.scatter(x_res, np.full_like(x_res, y_res2), s=neuron_size, c=NEURON_COLOR, zorder=3)
        rows.append((y_res2, f"Res{2 * b + 2}"))
        y_prev = y_res2

    y_o = y_prev + 1.0
    _edges(ax, W("unembed"), x_out, y_o, x_res, y_prev, linewidth)
    ax.scatter(x_out, np.full_like(x_out, y_o), s=neuron_size * 2, c=NEURON_COLOR, zorder=3)
    rows.append((y_o, "output"))

    in_order = wiring.order("input").detach().cpu().numpy()
    out_order = wiring.order("output").detach().cpu().numpy()
    if input_labels is not None:
        for s, feat in enumerate(in_order):
            ax.text(x_in[s], -0.15, str(input_labels[feat]), ha="center", va="top", fontsize=9)
    if output_labels is not None:
        for s, feat in enumerate(out_order):
            ax.text(x_out[s], y_o + 0.15, str(output_labels[feat]), ha="center", va="bottom",
                    fontsize=9)
    for yr, name in rows:
        ax.text(-0.04, yr, name, ha="right", va="center", fontsize=9)

    ax.set_xlim(-0.18, 1.02)
    ax.set_ylim(-0.5, y_o + 0.5)
    ax.set_axis_off()
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False,
              markerscale=1.5)
    if title:
        ax.set_title(title)
    return fig
