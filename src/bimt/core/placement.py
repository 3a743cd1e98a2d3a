"""The placement matrix of one group, ``C[j, p]``, computed only where a solver looks.

``C[j, p]`` is what the weights joining the neuron now at slot ``j`` to the other groups cost
when it sits at slot ``p`` (every other group held still)::

    C[j, p] = sum over tensors and over the other axis k of  scale * |w[j, k]| * d(x_p, y_k)

As one matrix product per tensor that is ``n * n * m`` multiply-adds, about 250 GFLOP for one
pass over a GPT-2-small model. With the L1 norm and both groups on lines,
``d(x, y) = A |x - y| + y*``, so a row is a piecewise linear function of ``x_p`` whose kinks are
the other group's positions ``y_k``. With those sorted, prefix sums of ``w`` and ``w * y`` give
it everywhere::

    sum_k w_k |x - y_k| = 2 G(x) + T1 - x T0,    G(x) = sum_{y_k < x} w_k (x - y_k)
                        = 2 (x L0 - L1) + T1 - x T0,

with ``L0, L1`` the sums of ``w`` and ``w * y`` over ``y_k < x`` and ``T0, T1`` over all ``k``:
about the cost of reading the weights once. A :class:`Placement` keeps, per other group
position set and orientation, the summed ``scale * |w|`` at slot level (float64, or float32 for
float32 weights when asked: :attr:`LineSide.single`), and answers
for the whole matrix, some rows, some columns, or the diagonal, so a greedy pass over a big
group never builds the ``n x n`` matrix. Tensors it cannot treat this way (``p != 1``, grids,
rings, coordinates of more than one dimension) keep the general product, added densely.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Placement", "LineSide", "SINGLE_REL_TOL", "add_abs_blocks", "abs_sum", "abs_sums", "as_numpy"]

_CHUNK = 1 << 16  # entries per chunk where a temporary of the weights' size would be built


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the CPU (float32 or float64, no copy if possible);
    a convolution kernel's trailing axes are summed in absolute value (one pair of channels)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.double()
    if t.dim() > 2:
        t = t.abs().reshape(t.shape[0], t.shape[1], -1).sum(2, dtype=torch.float64)
    return t.numpy()


def _row_chunks(n_rows: int, row_len: int, entries: int | None = None):
    step = max(1, (entries or _CHUNK) // max(1, row_len))
    return ((a, min(a + step, n_rows)) for a in range(0, n_rows, step))


def abs_sum(t: torch.Tensor) -> float:
    """``sum |t|`` accumulated in float64, chunk by chunk (no copy of the tensor)."""
    a = as_numpy(t).reshape(-1)
    total = 0.0
    for lo, hi in _row_chunks(len(a), 1):
        total += float(np.add.reduce(np.abs(a[lo:hi]), dtype=np.float64))
    return total


def abs_sums(w: np.ndarray, axis: int) -> np.ndarray:
    """``sum |w|`` of a 2-D array along ``axis`` (0: per column, 1: per row), float64."""
    out = np.zeros(w.shape[1 - axis])
    for lo, hi in _row_chunks(w.shape[0], w.shape[1]):
        part = np.add.reduce(np.abs(w[lo:hi]), axis=axis, dtype=np.float64)
        if axis == 0:
            out += part
        else:
            out[lo:hi] = part
    return out


def add_abs_blocks(acc: np.ndarray | None, w: np.ndarray, nr: int, nc: int,
                   scale: float = 1.0) -> np.ndarray:
    """``acc + scale * |w|`` summed over folds: ``w`` is ``(fr * nr, fc * nc)``, entry
    ``(a * nr + r, b * nc + c)`` lands on ``(r, c)``. Into ``acc`` (any float dtype), or, when
    it is None, a new float64 array."""
    for a in range(w.shape[0] // nr):
        for b in range(w.shape[1] // nc):
            block = w[a * nr:(a + 1) * nr, b * nc:(b + 1) * nc]
            if acc is None and scale == 1.0:
                acc = np.empty((nr, nc))
                np.abs(block, out=acc)  # float32 -> float64 in the same pass
                continue
            if acc is None:
                acc = np.zeros((nr, nc))
            for lo, hi in _row_chunks(nr, nc):  # |w| in cache-sized pieces
                part = np.abs(block[lo:hi])
                if scale != 1.0:
                    part = np.multiply(part, scale, dtype=np.float64)
                np.add(acc[lo:hi], part, out=acc[lo:hi])
    return acc


class _DiagonalSums:
    """``L[j] = sum_{y_k < x_j} W[j, k] (1, y_k)`` and ``T[j]``, the same over every ``k``,
    gathered chunk by chunk of ``W`` (``y`` sorted). Row ``j`` splits at its own cut, and
    ``C[j, j] = A (x_j (2 L0 - T0) + T1 - 2 L1) + y* T0``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, dtype=np.float64):
        self.cuts = np.searchsorted(y, x)  # y_k < x_j iff k < cuts[j]
        self.monotone = bool(np.all(np.diff(self.cuts) >= 0))  # x in order along the line
        self.Yc = torch.from_numpy(np.stack([np.ones_like(y), y]).astype(dtype))  # (2, m)
        self.L = torch.zeros(len(x), 2, dtype=torch.float64)
        self.T = torch.zeros(len(x), 2, dtype=torch.float64)

    def add(self, chunk: np.ndarray, lo: int, hi: int, rows: bool) -> None:
        """Rows ``lo:hi`` of ``W``, whose rows are the group's neurons (``rows``) or not."""
        (self.add_rows if rows else self.add_others)(chunk, lo, hi)

    def add_rows(self, chunk: np.ndarray, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` of ``W`` (the group's neurons), every column: each row splits at its
        own cut, so the chunk is read as a left part, the columns where its cuts differ, and a
        right part; ``(2, k) @ (k, rows)`` runs faster than ``(rows, k) @ (k, 2)``."""
        Wb, Yc, cuts = torch.from_numpy(chunk), self.Yc, self.cuts[lo:hi]
        a, b, m = int(cuts.min()), int(cuts.max()), Yc.shape[1]
        if a > 0:
            left = (Yc[:, :a] @ Wb[:, :a].T).T
            self.L[lo:hi] += left
            self.T[lo:hi] += left
        if b > a:
            below = torch.from_numpy(np.arange(a, b)[None, :] < cuts[:, None])
            self.L[lo:hi] += (Yc[:, a:b] @ (Wb[:, a:b] * below).T).T
            self.T[lo:hi] += (Yc[:, a:b] @ Wb[:, a:b].T).T
        if b < m:
            self.T[lo:hi] += (Yc[:, b:] @ Wb[:, b:].T).T

    def add_others(self, chunk: np.ndarray, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` of ``W`` (other neurons ``k``), every group neuron: with ``x`` in order,
        the chunk lies below the cut of the neurons ``j >= jh``, above that of ``j < jl``, and
        is split between (otherwise every neuron is masked)."""
        Wb, Yk = torch.from_numpy(chunk), self.Yc[:, lo:hi]
        full = (Yk @ Wb).T
        self.T += full
        jl, jh = 0, len(self.cuts)
        if self.monotone:
            jl = int(np.searchsorted(self.cuts, lo, "right"))
            jh = int(np.searchsorted(self.cuts, hi, "left"))
        self.L[jh:] += full[jh:]
        if jh > jl:
            below = torch.from_numpy(np.arange(lo, hi)[:, None] < self.cuts[None, jl:jh])
            self.L[jl:jh] += (Yk @ (Wb[:, jl:jh] * below)).T


class LineSide:
    """The weights joining a group on a line (positions ``x``) to groups at positions ``y`` on
    a line, summed: ``W`` is ``(n, m)`` when the group indexes the rows (``rows=True``), else
    ``(m, n)``; the other axis is kept in the order of sorted ``y``. Its part of the placement
    matrix is ``A * sum_k W[j, k] |x_p - y_k| + y* * sum_k W[j, k]``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: bool, A: float, y_star: float,
                 float32: bool = False):
        self.x = np.asarray(x, dtype=np.float64)
        self.float32 = float32  # sums of float32 weights in float32 (see `single`)
        order = np.argsort(y, kind="stable")
        self._order = None if np.array_equal(order, np.arange(len(y))) else order
        self.y = np.asarray(y, dtype=np.float64)[order]
        self.rows = rows
        self.A, self.y_star = float(A), float(y_star)
        self._blocks: list[tuple[np.ndarray, float]] = []  # (|w| to add, as a view; scale)
        self._W = None
        self._T = None  # (T0, T1): sum_k W[j, k] and sum_k W[j, k] y_k per neuron
        self._diag = None

    def add(self, w: np.ndarray, scale: float = 1.0) -> None:
        """Add ``scale * |w|`` (``w`` 2-D, its axes holding folds of the two groups).

        The blocks are summed when ``W`` is first read, row chunk by row chunk over all of
        them, so the sum stays in cache while a side of many layers (the residual stream's)
        adds them up; ``w`` must not change before then."""
        n, m = len(self.x), len(self.y)
        nr, nc = (n, m) if self.rows else (m, n)
        self._blocks += [(w[a * nr:(a + 1) * nr, b * nc:(b + 1) * nc], float(scale))
                         for a in range(w.shape[0] // nr) for b in range(w.shape[1] // nc)]
        self._W = None
        self._T = self._diag = None

    @property
    def single(self) -> bool:
        """Whether the sums are float32: asked for (``float32=True``) and every weight added
        is float32. About 2.5x faster than float64 on a CPU; each sum is then good to about
        1e-6 of its size, so a solver must not trust differences smaller than that."""
        return self.float32 and all(b.dtype == np.float32 for b, _ in self._blocks)

    @property
    def W(self) -> np.ndarray:
        """The summed ``scale * |w|`` (float64, or float32 when :attr:`single`), the other axis
        sorted; built once, and with it (the chunk still in cache) the diagonal and the totals
        when the group's slots are in order along the line."""
        if self._W is None:
            nr, nc = self._blocks[0][0].shape
            dtype = np.float32 if self.single else np.float64
            W = np.empty((nr, nc), dtype=dtype)
            fuse = self._order is None  # the diagonal needs the other axis sorted
            if fuse:
                diag = _DiagonalSums(self.x, self.y, dtype)
            # each chunk of the sum stays in cache while its blocks add up and its diagonal
            # sums are read (pieces of 4 _CHUNK: fewer, larger products)
            for lo, hi in _row_chunks(nr, nc, 4 * _CHUNK):
                acc = W[lo:hi]
                acc.fill(0.0)
                for block, scale in self._blocks:
                    add_abs_blocks(acc, block[lo:hi], hi - lo, nc, scale)
                if fuse:
                    diag.add(acc, lo, hi, self.rows)
            if self._order is not None:
                W = W[:, self._order] if self.rows else W[self._order]
            self._W = W
            if fuse:
                self._finish_diagonal(diag.L.numpy(), diag.T.numpy())
        return self._W

    def _finish_diagonal(self, L: np.ndarray, T: np.ndarray) -> None:
        T0, T1 = T[:, 0].copy(), T[:, 1].copy()
        self._T = (T0, T1)
        self._diag = (self.A * (self.x * (2.0 * L[:, 0] - T0) + T1 - 2.0 * L[:, 1])
                      + self.y_star * T0)

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """``T0[j] = sum_k W[j, k]`` and ``T1[j] = sum_k W[j, k] y_k`` for every neuron ``j``."""
        if self._T is None:
            self.diagonal()
        return self._T

    def diagonal(self) -> np.ndarray:
        """``C[j, j]`` of this side, and its totals (see :class:`_DiagonalSums`): gathered while
        ``W`` is summed, or, when its other axis had to be sorted after summing, in one more
        read of it."""
        W = self.W
        if self._diag is None:
            diag = _DiagonalSums(self.x, self.y, W.dtype)
            for lo, hi in _row_chunks(*W.shape, 4 * _CHUNK):
                diag.add(W[lo:hi], lo, hi, self.rows)
            self._finish_diagonal(diag.L.numpy(), diag.T.numpy())
        return self._diag

    def values_of(self, js, P) -> np.ndarray:
        """``C[js[r], P[r, c]]`` of this side: each neuron at its own list of slots."""
        js = np.asarray(js, dtype=int)
        P = np.asarray(P, dtype=int)
        y = torch.from_numpy(self.y)
        idx = torch.from_numpy(np.searchsorted(self.y, self.x[P].ravel()).reshape(P.shape))
        every = np.array_equal(js, np.arange(len(self.x)))
        if self.rows or not every:
            Wr = torch.from_numpy(self.W if every else self._group_rows(js))
            dim, Wy, at = 1, Wr * y.to(Wr.dtype), idx
        else:  # W (m, n): prefix sums down its rows, no transposed copy
            Wr = torch.from_numpy(self.W)
            dim, Wy, at = 0, Wr * y.to(Wr.dtype)[:, None], idx.T
        c0, c1 = torch.cumsum(Wr, dim), torch.cumsum(Wy, dim)
        # the sum over the first idx entries (none when idx is 0)
        below = lambda c: torch.where(at > 0, c.gather(dim, (at - 1).clamp(min=0)), 0.0)
        L0, L1 = below(c0).double(), below(c1).double()
        T0, T1 = c0.select(dim, -1).double(), c1.select(dim, -1).double()
        if dim == 0:
            L0, L1 = L0.T, L1.T
        T0, T1 = T0[:, None], T1[:, None]
        F = torch.from_numpy(self.x[P]) * (2.0 * L0 - T0) + T1 - 2.0 * L1
        return (self.A * F + self.y_star * T0).numpy()

    def _group_rows(self, js) -> np.ndarray:
        return self.W[js] if self.rows else np.ascontiguousarray(self.W[:, js].T)

    def rows_of(self, js=None) -> np.ndarray:
        """``C[j, p]`` of this side for neurons ``js`` (all if None) at every slot ``p``:
        prefix sums along the sorted other axis, read at each slot's cut."""
        Wr = torch.from_numpy(self._group_rows(slice(None) if js is None else js)).double()
        k, m = Wr.shape
        y = torch.from_numpy(self.y)
        c0 = torch.zeros(k, m + 1, dtype=torch.float64)
        c1 = torch.zeros(k, m + 1, dtype=torch.float64)
        c0[:, 1:] = torch.cumsum(Wr, 1)
        c1[:, 1:] = torch.cumsum(Wr * y, 1)
        T0, T1 = c0[:, -1:].clone(), c1[:, -1:].clone()
        idx = torch.from_numpy(np.searchsorted(self.y, self.x))  # y_k < x_p iff k < idx[p]
        x = torch.from_numpy(self.x)
        # A * (2 (x L0 - L1) + T1 - x T0) + y* T0, built in place
        C = c0.index_select(1, idx)
        C.mul_(2.0).sub_(T0).mul_(x)
        C.sub_(c1.index_select(1, idx), alpha=2.0).add_(T1)
        C.mul_(self.A).add_(T0, alpha=self.y_star)
        return C.numpy()

    def columns_of(self, ps) -> np.ndarray:
        """``C[j, p]`` of this side for every neuron ``j`` at slots ``ps``: the prefix sums at
        those slots' cuts only, from segment sums (one read of ``W``)."""
        ps = np.asarray(ps, dtype=int)
        W, y = self.W, self.y
        T0, T1 = self.totals()
        Y2 = np.stack([np.ones_like(y), y], 1)
        xq = self.x[ps]
        order = np.argsort(xq, kind="stable")
        cuts = np.searchsorted(y, xq[order])
        W = torch.from_numpy(W)
        Y2T = torch.from_numpy(np.ascontiguousarray(Y2.T, dtype=self.W.dtype))
        L = torch.zeros(len(self.x), 2, dtype=torch.float64)  # prefix sums up to the cut
        C = np.empty((len(self.x), len(ps)))
        start = 0
        for i, cut in zip(order, cuts):
            if cut > start:  # torch's matmul: one thread when asked (numpy's BLAS spins)
                L += (Y2T[:, start:cut] @ (W[:, start:cut].T if self.rows else W[start:cut])).T
                start = cut
            Ln = L.numpy()
            C[:, i] = xq[i] * (2.0 * Ln[:, 0] - T0) - 2.0 * Ln[:, 1] + T1
        C *= self.A
        C += self.y_star * T0[:, None]
        return C


#: Relative size below which differences of float32 sums (:attr:`LineSide.single`) are noise.
SINGLE_REL_TOL = 1e-5


class Placement:
    """``C[j, p]`` of one group: line sides (fast) plus an optional dense part (the general
    product), summed.

    ``matrix()`` builds all of it; ``rows``, ``columns`` (kept once computed), ``diagonal`` and
    ``max`` only what they name. ``importance`` is the paper's neuron score when the builder
    could read it off the same sums (else None). ``Placement.of(C)`` wraps a ready matrix.
    """

    def __init__(self, n: int, coords: np.ndarray, lines: list[LineSide] | None = None,
                 dense: np.ndarray | None = None, importance: np.ndarray | None = None):
        self.n = n
        self.coords = np.asarray(coords, dtype=np.float64)
        self.lines = list(lines or [])
        self.dense = dense
        self.importance = importance
        self._columns: dict[int, np.ndarray] = {}

    @property
    def single(self) -> bool:
        """Whether some of it was summed in float32 (good to about 1e-6 of its size)."""
        return any(side.single for side in self.lines)

    @classmethod
    def of(cls, C: np.ndarray) -> Placement:
        C = np.asarray(C, dtype=np.float64)
        return cls(len(C), np.zeros((len(C), 2)), dense=C)

    def matrix(self) -> np.ndarray:
        C = np.zeros((self.n, self.n)) if self.dense is None else self.dense.copy()
        for side in self.lines:
            C += side.rows_of()
        return C

    def rows(self, js) -> np.ndarray:
        js = np.asarray(js, dtype=int)
        C = np.zeros((len(js), self.n)) if self.dense is None else self.dense[js].copy()
        for side in self.lines:
            C += side.rows_of(js)
        return C

    def columns(self, ps) -> np.ndarray:
        """``C[:, ps]`` as an ``(n, len(ps))`` array."""
        ps = [int(p) for p in ps]
        new = sorted(set(p for p in ps if p not in self._columns))
        if new:
            C = np.zeros((self.n, len(new))) if self.dense is None else self.dense[:, new].copy()
            for side in self.lines:
                C += side.columns_of(new)
            self._columns.update(zip(new, C.T))
        if not ps:
            return np.zeros((self.n, 0))
        return np.stack([self._columns[p] for p in ps], 1)

    def values(self, js, P) -> np.ndarray:
        """``C[js[r], P[r, c]]``: each neuron ``js[r]`` at its own slots ``P[r]``."""
        js = np.asarray(js, dtype=int)
        P = np.asarray(P, dtype=int)
        C = np.zeros(P.shape) if self.dense is None else self.dense[js[:, None], P]
        for side in self.lines:
            C += side.values_of(js, P)
        return C

    def diagonal(self) -> np.ndarray:
        C = np.zeros(self.n) if self.dense is None else np.diagonal(self.dense).copy()
        for side in self.lines:
            C += side.diagonal()
        return C

    def extremes(self) -> list[int]:
        """The slots where every row is largest: on a line each row is convex in the
        position (a norm of an affine function), so its largest entry sits at an end."""
        if self.lines and self.coords.shape[1] == 1:
            x = self.coords[:, 0]
            return [int(np.argmin(x)), int(np.argmax(x))]
        return []

    def max(self) -> float:
        """``max |C|`` (every entry is a nonnegative cost, unless a wrapped matrix says otherwise)."""
        ends = self.extremes()
        if ends:
            return float(self.columns(ends).max())
        if not self.n:
            return 0.0
        C = self.dense if self.dense is not None and not self.lines else self.matrix()
        return float(np.abs(C).max())
