"""Where neurons sit, and how far apart they are.

Positions are given in *unit* coordinates (inside [0, 1]^d) and scaled by ``A`` only when a
distance is taken, so one layout serves every value of ``A``. Layer-to-layer distance is the
p-norm of the full displacement between two neurons, ``(A * (x_out - x_in), y_star)``: for the
default L1 norm this is the paper's ``A * |dx| + y*``; for L2 it is the paper's
``sqrt((A dx)^2 + y*^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .settings import CostSettings
from .checks import positive_int

__all__ = ["line", "grid", "grid3d", "ring", "layout", "pairwise_distance", "LAYOUTS"]

#: Layout names `layout()` accepts (any `(n, d)` array of positions works too).
LAYOUTS = ("line", "grid", "ring", "grid3d")


def line(n: int) -> np.ndarray:
    """``n`` neurons evenly spread on [0, 1], at ``(j + 0.5) / n``; shape ``(n, 1)``."""
    n = positive_int(n, "line size")
    return ((np.arange(n) + 0.5) / n)[:, None]


def grid(n: int | tuple[int, int]) -> np.ndarray:
    """A square (or ``(rows, cols)``) grid, the outer product of two lines; shape ``(n, 2)``.

    Neuron ``r * cols + c`` sits at ``(line(cols)[c], line(rows)[r])``: row-major, as images
    are flattened.
    """
    if isinstance(n, (tuple, list)):
        rows, cols = (positive_int(v, "grid side") for v in n)
    else:
        n = positive_int(n, "grid size")
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"a grid layer needs a square number of neurons, got {n} "
                f"(nearest squares: {side * side} and {(side + 1) ** 2}); "
                "pass (rows, cols) for a rectangle"
            )
        rows = cols = side
    ys, xs = np.meshgrid(line(rows)[:, 0], line(cols)[:, 0], indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def grid3d(n: int | tuple[int, int, int]) -> np.ndarray:
    """A cube (or ``(a, b, c)`` box, seRNN's 5x5x4) of neurons, the outer product of three
    lines; shape ``(n, 3)``. Neuron ``(i * b + j) * c + k`` sits at
    ``(line(a)[i], line(b)[j], line(c)[k])``."""
    if isinstance(n, (tuple, list)):
        if len(n) != 3:
            raise ValueError(f"a 3D grid needs three sides (a, b, c), got {tuple(n)}")
        sides = [positive_int(v, "grid3d side") for v in n]
    else:
        n = positive_int(n, "grid3d size")
        side = round(n ** (1 / 3))
        if side**3 != n:
            lo = int(n ** (1 / 3))
            raise ValueError(
                f"a grid3d layer needs a cube number of neurons, got {n} (nearest cubes: "
                f"{lo ** 3} and {(lo + 1) ** 3}); pass (a, b, c) for a box such as (5, 5, 4)"
            )
        sides = [side] * 3
    axes = np.meshgrid(*(line(s)[:, 0] for s in sides), indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


def ring(n: int, radius: float = 0.25, center: Sequence[float] = (0.5, 0.5)) -> np.ndarray:
    """``n`` neurons on a circle (the MNIST output layer); shape ``(n, 2)``."""
    n = positive_int(n, "ring size")
    if radius < 0:
        raise ValueError(f"ring radius must be >= 0, got {radius}")
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], 1)


def layout(kind, n: int) -> np.ndarray:
    """Coordinates for a layer of ``n`` neurons: 'line', 'grid', 'ring', 'grid3d' or an ``(n, d)``
    array."""
    if isinstance(kind, str):
        if kind == "line":
            return line(n)
        if kind == "grid":
            return grid(n)
        if kind == "ring":
            return ring(n)
        if kind == "grid3d":
            return grid3d(n)
        raise ValueError(f"unknown layout {kind!r}; allowed: {', '.join(LAYOUTS)} or an (n, d) array")
    coords = np.asarray(kind, dtype=np.float64)
    if coords.ndim == 1:
        coords = coords[:, None]
    if coords.ndim != 2 or coords.shape[0] != n or coords.shape[1] == 0:
        raise ValueError(
            f"coordinates for a layer of {n} neurons must have shape ({n}, d), "
            f"got {tuple(np.shape(kind))}"
        )
    if not np.all(np.isfinite(coords)):
        raise ValueError("coordinates must be finite numbers")
    return coords


def pairwise_distance(
    out_coords: np.ndarray, in_coords: np.ndarray, A: float, y_star: float, p: float = CostSettings.p
) -> np.ndarray:
    """Length of every connection from a layer at ``in_coords`` to the next at ``out_coords``.

    Returns ``(n_out, n_in)``, matching ``nn.Linear.weight``. Layers of different dimension (a
    line feeding a grid) are compared by padding the lower-dimensional one with 0.5, the middle
    of the unit square.
    """
    if not p >= 1:  # also refuses nan
        raise ValueError(f"p must be >= 1 (a norm), got {p}")
    a, b = _pad_to_same_dim(np.asarray(out_coords, float), np.asarray(in_coords, float))
    delta = np.abs(a[:, None, :] - b[None, :, :]) * A
    gap = np.full(delta.shape[:2] + (1,), float(y_star))
    full = np.concatenate([delta, gap], axis=2)
    if math.isinf(p):
        return full.max(axis=2)
    if p == 1:
        return full.sum(axis=2)
    return (full**p).sum(axis=2) ** (1.0 / p)


def _pad_to_same_dim(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = max(a.shape[1], b.shape[1])
    pad = lambda c: np.concatenate([c, np.full((c.shape[0], d - c.shape[1]), 0.5)], 1)
    return pad(a), pad(b)
