"""What a picture of a network shows, as plain arrays: rows of neurons and the weights between.

Every model is drawn from its spec. :func:`spec_drawing` unrolls the charged weights in the
order the spec lists them (the forward order): a group becomes a row when a weight first reads
or writes it, one level above the row it is computed from. A group written again after it was
read - a residual stream - gets a new row (its next state), linked to the previous one by a
*stream* (the identity of the skip connection); a weight whose two axes are one group is a
recurrent weight drawn inside its row. So a chain of layers is drawn as the paper draws it, a
transformer as its Fig. 7 (embedding, then for each block its attention row, the stream after
attention, the MLP row, the stream after the MLP), and any module with a spec - residual
connections included - can be drawn.

A family picks its picture by name: :func:`register_view` maps a view name to a function
``wiring -> Drawing`` (the family's file registers its own, beside its spec), and
:func:`drawing_of` is what every picture and report calls. Renderers (:mod:`bimt.viz`) know
rows and edges, never model classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.checks import one_of
from ..core.spec import tensor

__all__ = ["Row", "Edge", "Drawing", "spec_drawing", "drawing_of", "register_view", "VIEWS",
           "name_transformer_rows"]


@dataclass
class Row:
    """A row of neurons: one group (or one state of a residual stream) at one height.

    ``xy`` holds each slot's unit coordinates (a line's at ``y = 0.5``); ``fold`` neurons share a
    slot and are drawn as offset copies named ``fold_names`` (tokens, q/k/v); ``labels`` name
    the slots (the interface order applied); ``heads`` boxes the slots head by head;
    ``spatial`` rows are drawn at their 2D coordinates (a grid of recurrent units).
    """

    name: str
    group: str
    level: float
    xy: np.ndarray
    fold: int = 1
    fold_names: list[str] | None = None
    heads: int = 1
    labels: list[str] | None = None
    order: list[int] | None = None  # the interface feature each slot holds (input/output rows)
    role: str = ""  # "input", "output", "tokens" (embedded inputs), "stream" or ""
    spatial: bool = False

    @property
    def size(self) -> int:
        return len(self.xy)


@dataclass
class Edge:
    """A weight from row ``inp`` to row ``out`` (equal rows: a recurrent weight).

    ``W`` is ``(out entries, in entries)``, entry ``f * n + s`` being fold ``f`` of slot ``s``;
    its first fold is the row's fold ``out_fold`` / ``in_fold`` (the attention output reads
    the V fold only).
    """

    name: str
    out: int
    inp: int
    W: np.ndarray
    out_fold: int = 0
    in_fold: int = 0


@dataclass
class Drawing:
    """What a picture shows: rows of neurons and the weights between them, for any renderer."""

    rows: list[Row]
    edges: list[Edge]
    streams: list[tuple[int, int]] = field(default_factory=list)  # (earlier, later) states
    three_d: bool = False  # rows with 2D coordinates drawn in 3D (grids, rings)

    def row(self, name: str) -> int:
        return next(i for i, r in enumerate(self.rows) if r.name == name)


#: View name -> ``wiring -> Drawing``. Built in: ``layered`` (a chain of layers), ``layered3d``
#: (the same in 3D, for grids and rings), ``graph`` (any spec) and ``channels`` (a CNN: conv
#: kernels summed); families add theirs (``transformer``, ``rnn``, ``gpt``).
VIEWS: dict[str, Callable] = {}


def register_view(name: str, make: Callable, replace: bool = False) -> None:
    """Register ``make(wiring) -> Drawing`` as the picture named ``name``."""
    if name in VIEWS and not replace:
        raise ValueError(f"a view named {name!r} exists; pass replace=True to replace it")
    VIEWS[name] = make


def drawing_of(wiring) -> Drawing:
    """The wiring's picture, as its view draws it."""
    one_of(wiring.view, VIEWS, "view")
    return VIEWS[wiring.view](wiring)


@torch.no_grad()
def spec_drawing(wiring, *, three_d: bool = False, folds: bool = True,
                 fold_hints: dict[str, tuple[int, int]] | None = None,
                 fold_names: dict[str, list[str]] | None = None) -> Drawing:
    """The unrolled drawing of any spec (see the module docstring).

    ``folds=False`` sums each weight's folds onto its slots (one row per group);
    ``fold_hints[name] = (out_fold, in_fold)`` says which fold of its rows a weight with fewer
    folds than the row starts at; ``fold_names[group]`` names a group's fold rows.
    """
    spec, module = wiring.spec, wiring.module
    fold_hints, fold_names = fold_hints or {}, fold_names or {}
    rows: list[Row] = []
    edges: list[Edge] = []
    streams: list[tuple[int, int]] = []
    current: dict[str, int] = {}
    read: set[str] = set()
    roles = spec.interface()
    written = {spec.weight_groups(n)[0] for n in spec.weights()}
    for name, kind in spec.charges.items():  # embedding tables feeding a row of their own
        if kind == "embedding":
            for g in spec.axes[name]:
                if g is not None and g not in written and g not in roles:
                    roles[g] = "tokens"

    def new_row(group: str, level: float) -> int:
        c = np.asarray(spec.groups[group].coords, dtype=np.float64)
        xy = c[:, :2] if c.shape[1] >= 2 else np.stack([c[:, 0], np.full(len(c), 0.5)], 1)
        k = sum(r.group == group for r in rows)
        rows.append(Row(group if k == 0 else f"{group} {k}", group, level, xy,
                        heads=spec.groups[group].heads, role=roles.get(group, "stream" if k else "")))
        current[group] = len(rows) - 1
        return len(rows) - 1

    for name in spec.weights():
        out_g, in_g = spec.weight_groups(name)
        w = spec.oriented(name, tensor(module, name).detach().to("cpu", torch.float64))
        w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a convolution kernel: one line
        plain = {g for g in (out_g, in_g) if not folds or spec.groups[g].fold_order != "outer"}
        if plain:  # folds summed onto their slots
            for dim, g in ((0, out_g), (1, in_g)):
                if g in plain:
                    w = spec.slot_sum(w, g, dim)
        i = current[in_g] if in_g in current else new_row(in_g, 0)
        read.add(in_g)
        if out_g == in_g:
            edges.append(Edge(name, i, i, w.numpy()))
            continue
        if out_g not in current:
            o = new_row(out_g, rows[i].level + 1)
        elif out_g in read:  # written again after being read: the stream's next state
            previous = current[out_g]
            o = new_row(out_g, max(rows[i].level, rows[previous].level) + 1)
            streams.append((previous, o))
            read.discard(out_g)
        else:  # another weight into the same row (nothing has read it yet)
            o = current[out_g]
            rows[o].level = max(rows[o].level, rows[i].level + 1)
        hint = fold_hints.get(name, (0, 0))
        edges.append(Edge(name, o, i, w.numpy(), *hint))
    for e in edges:  # each row as many fold rows as the widest weight touching it needs
        for r, length, start in ((e.out, e.W.shape[0], e.out_fold), (e.inp, e.W.shape[1], e.in_fold)):
            rows[r].fold = max(rows[r].fold, start + length // rows[r].size)
    for r in rows:
        names = fold_names.get(r.group)
        if names is not None and len(names) == r.fold:
            r.fold_names = list(names)
    _label_interface(wiring, rows)
    return Drawing(rows, edges, streams, three_d)


def name_transformer_rows(drawing: Drawing) -> Drawing:
    """Rows of groups ``resid``, ``attn{b}``, ``mlp{b}`` named as the paper's Fig. 7: the
    stream after the embedding "Embed", after each sublayer "Res1", "Res2", ...; "Atn{b}",
    "MLP{b}"."""
    for row in drawing.rows:
        if row.group == "resid":
            row.name = "Embed" if row.name == "resid" else f"Res{row.name.split()[-1]}"
        elif row.group.startswith("attn"):
            row.name = f"Atn{row.group[4:]}"
        elif row.group.startswith("mlp"):
            row.name = f"MLP{row.group[3:]}"
    return drawing


def _label_interface(wiring, rows: list[Row]) -> None:
    """Name the input and output rows' slots by the feature each now holds."""
    roles = wiring.spec.interface()
    for role, labels, default in (("input", wiring.input_labels, "x"),
                                  ("output", wiring.output_labels, "y")):
        mine = [r for r in rows if roles.get(r.group) == role and r.role == role]
        if len(mine) != 1:
            continue
        row = mine[0]
        n = row.size
        if labels is None or len(labels) != n:
            labels = [f"{default}{k + 1}" for k in range(n)]
        order = wiring.order(row.group)
        row.order = list(range(n)) if order is None else [int(k) for k in order.detach().cpu().tolist()]
        row.labels = [str(labels[k]) for k in row.order]


def default_view(spec) -> str:
    """``layered`` (or ``layered3d`` with grid or ring groups) when the weights form one chain of
    groups, else ``graph``."""
    weights = spec.weights()
    feeds: dict[str, int] = {}
    fed: dict[str, int] = {}
    for n in weights:
        out_g, in_g = spec.weight_groups(n)
        feeds[in_g] = feeds.get(in_g, 0) + 1
        fed[out_g] = fed.get(out_g, 0) + 1
    chain = bool(weights) and all(v == 1 for v in feeds.values()) and all(v == 1 for v in fed.values()) \
        and sum(g not in fed for g in feeds) == 1
    if not chain:
        return "graph"
    return "layered3d" if any(g.coords.shape[1] >= 2 for g in spec.groups.values()) else "layered"


register_view("layered", spec_drawing)
register_view("graph", spec_drawing)
register_view("layered3d", lambda wiring: spec_drawing(wiring, three_d=True))
register_view("channels", lambda wiring: spec_drawing(wiring, folds=False))
