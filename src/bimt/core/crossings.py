"""How readable a drawn network is: its modules, and how often their wires cross.

After pruning every weight below ``threshold`` (5%) of its layer's largest ``|w|``, the
surviving weights form a graph on the drawn positions (one node per slot of a group; the folded
neurons of a slot share its node, as they share its place in the drawing). Its connected
components are the *modules*. Two surviving edges between the same two layers, ``a -> b`` and
``c -> d``, cross when drawn iff ``(x_a - x_c) * (x_b - x_d) < 0``; ``crossings`` counts such
pairs, ``module_crossings`` only the pairs whose edges belong to different modules (0: the
modules are drawn side by side). Both are ``None`` when the network is not a chain of layers
drawn on lines (grids, rings, a transformer's shared residual stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .spec import PermutationSpec, tensor

__all__ = ["crossings", "Layers", "layers_of", "slot_modules", "count_crossings", "THRESHOLD"]

#: weights below this fraction of their layer's largest magnitude are pruned before counting
THRESHOLD = 0.05


@dataclass
class Layers:
    """A chain of line layers: ``groups[i] -> groups[i + 1]`` through weight ``weights[i]``."""

    groups: list[str]
    weights: list[str]

    def x(self, spec: PermutationSpec, i: int) -> np.ndarray:
        return spec.groups[self.groups[i]].coords[:, 0]


def layers_of(spec: PermutationSpec) -> Layers | None:
    """The chain of layers of ``spec``, or ``None`` when it is not a chain of lines."""
    weights = spec.weights()
    if not weights or any(g.coords.shape[1] != 1 for g in spec.groups.values()):
        return None
    nxt = {}
    for name in weights:
        if len(spec.axes[name]) != 2:
            return None  # a convolution's kernel (4 axes): channels are not drawn as wires
        out_g, in_g = spec.weight_groups(name)
        if in_g in nxt or out_g == in_g:
            return None  # a group feeding two weights (a residual stream): not layered
        nxt[in_g] = (name, out_g)
    outs = {spec.weight_groups(n)[0] for n in weights}
    starts = [g for g in nxt if g not in outs]
    if len(starts) != 1:
        return None
    groups, names = [starts[0]], []
    while groups[-1] in nxt:
        name, out_g = nxt[groups[-1]]
        if out_g in groups:
            return None
        names.append(name)
        groups.append(out_g)
    if len(names) != len(weights):
        return None
    return Layers(groups, names)


def _surviving(module, spec: PermutationSpec, name: str, threshold: float) -> np.ndarray:
    """Boolean ``(n_out_slots, n_in_slots)``: a drawn edge survives pruning (folds merged)."""
    w = tensor(module, name).detach().abs().to("cpu", torch.float64)
    big = w >= threshold * w.max() if w.numel() and w.max() > 0 else torch.zeros_like(w, dtype=torch.bool)
    # fold both axes onto their slots: an edge survives if any of its entries does
    return spec.to_slots(name, big.double()).numpy() > 0


def slot_modules(module, spec: PermutationSpec, layers: Layers, threshold: float = THRESHOLD):
    """Per layer, the module (component id) of each slot; ``-1`` for slots with no edge."""
    sizes = [spec.groups[g].size for g in layers.groups]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows, cols = [], []
    edges = []
    for i, name in enumerate(layers.weights):
        e = _surviving(module, spec, name, threshold)
        edges.append(e)
        b, a = np.nonzero(e)  # out slot b (layer i + 1), in slot a (layer i)
        rows.append(a + offsets[i])
        cols.append(b + offsets[i + 1])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = int(offsets[-1])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    used = np.zeros(n, dtype=bool)
    used[rows], used[cols] = True, True
    # number the modules that have edges 0, 1, ... in order of first appearance
    label = np.where(used, label, -1)
    renumber = {}
    for v in label[used]:
        renumber.setdefault(int(v), len(renumber))
    label = np.array([renumber.get(int(v), -1) for v in label])
    return [label[offsets[i]:offsets[i + 1]] for i in range(len(sizes))], edges


def count_crossings(x_in, x_out, edges, mod_in=None):
    """Crossing pairs among the ``edges`` (bool ``(n_out, n_in)``) drawn from ``x_in`` to
    ``x_out``; with ``mod_in`` (module of each input slot) also those between different modules."""
    b, a = np.nonzero(edges)
    if len(a) < 2:
        return 0, 0
    dx_in = x_in[a][:, None] - x_in[a][None, :]
    dx_out = x_out[b][:, None] - x_out[b][None, :]
    cross = np.triu((dx_in * dx_out) < 0, 1)
    total = int(cross.sum())
    if mod_in is None:
        return total, None
    m = mod_in[a]  # an edge's module is its endpoints' module
    return total, int((cross & (m[:, None] != m[None, :])).sum())


@torch.no_grad()
def crossings(module, spec: PermutationSpec, threshold: float = THRESHOLD) -> dict:
    """``{"crossings", "module_crossings", "n_modules"}`` of the drawn network (``None`` values
    when it is not a chain of line layers). ``module`` holds the tensors ``spec`` names (a
    module, or a name -> tensor dict); for a model or wiring use :func:`bimt.analysis.crossings`."""
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"crossings(module, spec) needs the module's PermutationSpec, got "
                        f"{type(spec).__name__}; for a model use bimt.analysis.crossings(model)")
    layers = layers_of(spec)
    if layers is None:
        return {"crossings": None, "module_crossings": None, "n_modules": None}
    mods, edges = slot_modules(module, spec, layers, threshold)
    total = between = 0
    for i, e in enumerate(edges):
        t, m = count_crossings(layers.x(spec, i), layers.x(spec, i + 1), e, mods[i])
        total += t
        between += m
    n_modules = int(max((m.max() for m in mods), default=-1)) + 1
    return {"crossings": total, "module_crossings": between, "n_modules": n_modules}
