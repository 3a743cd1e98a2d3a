"""Shared drawing conventions of the connectivity graphs (2D, 3D, transformer).

The paper's rule (Section 2, "Connectivity Graphs"): every weight is a line between the two
neurons it connects; its width is proportional to ``|w| / max|w|`` over the weights of the same
layer (so normalised values lie in [-1, 1]); blue if ``w > 0``, red if ``w < 0``. All weights
are drawn; the graphs look sparse because very thin lines are invisible.

These helpers are what every graph in :mod:`bimt.viz` uses, so other drawings (the
transformer graph) look the same.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba

__all__ = [
    "POSITIVE_COLOR", "NEGATIVE_COLOR", "NEURON_COLOR", "MAX_LINEWIDTH",
    "normalized_weights", "weight_colors", "weight_linewidths", "weight_collection",
    "keep_mask",
]

#: Colour of positive weights (blue) and negative weights (red), as in the paper's figures.
POSITIVE_COLOR = "blue"
#: Colour of negative weights.
NEGATIVE_COLOR = "red"
#: Colour of the neuron dots.
NEURON_COLOR = "black"
#: Line width (points) of the strongest weight of a layer.
MAX_LINEWIDTH = 2.0


def normalized_weights(w, scale: float | None = None) -> np.ndarray:
    """``w / scale`` as a float array, ``scale`` defaulting to ``max|w|`` (so values lie in
    [-1, 1]). An all-zero tensor gives zeros."""
    w = np.asarray(w, dtype=np.float64)
    if scale is None:
        scale = float(np.abs(w).max()) if w.size else 0.0
    if not np.isfinite(scale):
        raise ValueError(f"cannot normalise weights by a non-finite scale ({scale})")
    if scale <= 0:
        return np.zeros_like(w)
    return w / scale


def weight_colors(
    w, positive=POSITIVE_COLOR, negative=NEGATIVE_COLOR, alpha: float = 1.0
) -> np.ndarray:
    """RGBA colours, one row per entry of ``w`` (flattened): ``positive`` for ``w >= 0``,
    ``negative`` for ``w < 0``."""
    w = np.asarray(w).reshape(-1)
    pos, neg = np.array(to_rgba(positive, alpha)), np.array(to_rgba(negative, alpha))
    return np.where((w < 0)[:, None], neg[None, :], pos[None, :])


def weight_linewidths(w, max_linewidth: float = MAX_LINEWIDTH, scale: float | None = None) -> np.ndarray:
    """Line widths ``max_linewidth * |w| / scale`` (``scale`` defaults to ``max|w|``),
    flattened."""
    if max_linewidth < 0:
        raise ValueError(f"max_linewidth must be >= 0, got {max_linewidth}")
    return max_linewidth * np.abs(normalized_weights(np.asarray(w).reshape(-1), scale))


def keep_mask(w, min_fraction: float = 0.0, top_n: int | None = None) -> np.ndarray:
    """Which entries of ``w`` (flattened) to draw: those with ``|w| >= min_fraction * max|w|``
    and, if ``top_n`` is given, only the ``top_n`` largest in magnitude."""
    a = np.abs(np.asarray(w, dtype=np.float64).reshape(-1))
    keep = np.ones(a.shape, bool)
    if min_fraction and a.size:
        keep &= a >= min_fraction * a.max()
    if top_n is not None:
        if isinstance(top_n, bool) or int(top_n) != top_n or top_n < 0:
            raise ValueError(f"top_n must be a non-negative integer or None, got {top_n!r}")
        if top_n < a.size:
            top = np.zeros(a.shape, bool)
            top[np.argpartition(-a, top_n - 1)[:top_n] if top_n else []] = True
            keep &= top
    return keep


def weight_collection(
    segments,
    w,
    max_linewidth: float = MAX_LINEWIDTH,
    scale: float | None = None,
    positive=POSITIVE_COLOR,
    negative=NEGATIVE_COLOR,
    alpha: float = 1.0,
    collection_class=LineCollection,
    **kwargs,
):
    """A line collection drawing weight ``w[i]`` as ``segments[i]`` in the paper's style.

    ``segments`` is ``(n, 2, 2)`` (or ``(n, 2, 3)`` with ``collection_class=Line3DCollection``);
    ``scale`` is the layer's ``max|w|`` when only some of its weights are passed. Segments are
    drawn weakest first, so strong lines lie on top. Zero-width lines are dropped.
    """
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    segments = np.asarray(segments, dtype=np.float64)
    if segments.shape[0] != w.size:
        raise ValueError(f"{segments.shape[0]} segments for {w.size} weights")
    if scale is None:
        scale = float(np.abs(w).max()) if w.size else 0.0
    widths = weight_linewidths(w, max_linewidth, scale)
    order = np.argsort(widths, kind="stable")
    order = order[widths[order] > 0]
    coll = collection_class(
        segments[order],
        linewidths=widths[order],
        colors=weight_colors(w[order], positive, negative, alpha),
        capstyle="round",
        **kwargs,
    )
    return coll
