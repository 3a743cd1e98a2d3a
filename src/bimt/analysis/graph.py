"""The network as a graph: modularity (the paper's Table 2), communities, modules (connected
components after pruning weak weights), the roots of modular addition's tree, active neurons.

Neurons are named by *position*: ``(group name, slot)``, e.g. ``("layer1", 3)``. A slot of an
axis holding ``fold`` neurons per slot stands for all of them: ``fold`` entries that join the
same two positions count as one connection whose strength is their summed ``|w|``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import networkx as nx
import numpy as np
import torch
from torch import nn

from ..core.checks import nonnegative
from ..models.wiring import wiring_of
from ..core.spec import PermutationSpec, tensor

__all__ = [
    "weight_graph", "modularity", "communities", "find_modules", "module_slots", "tree_roots",
    "neuron_scores", "active_neurons", "network", "MODULE_THRESHOLD", "ACTIVE_THRESHOLD",
    "NONZERO_REL", "count_nonzero",
]

#: Default for :func:`find_modules` / :func:`tree_roots`: a weight is kept when ``|w|`` is at
#: least this fraction of the largest ``|w|`` of its tensor (its layer).
MODULE_THRESHOLD = 0.1
#: Default for :func:`active_neurons`: a neuron is active when its score exceeds this fraction
#: of the largest score in its group (layer).
ACTIVE_THRESHOLD = 0.05

Neuron = tuple[str, int]


#: The one definition of "nonzero" (metrics.json, analysis, pruning frontier): an entry whose
#: magnitude exceeds this fraction of the largest magnitude in its tensor. Trained BIMT weights
#: decay towards zero without reaching it, so an exact-zero count would call everything alive.
NONZERO_REL = 1e-3


def count_nonzero(tensors) -> int:
    """Entries of ``tensors`` above :data:`NONZERO_REL` of their own tensor's largest magnitude."""
    total = 0
    for t in tensors:
        if t.numel():
            a = t.detach().abs()
            total += int((a > NONZERO_REL * a.max()).sum())
    return total


def network(model) -> tuple[nn.Module, PermutationSpec]:
    """``(module, spec)`` of anything :func:`bimt.wiring_of` accepts (a pair passes through)."""
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], PermutationSpec):
        return model
    wiring = wiring_of(model)
    return wiring.module, wiring.spec


def _group_index(spec: PermutationSpec) -> dict[str, int]:
    return {g: i for i, g in enumerate(spec.groups)}


def _neuron_key(spec: PermutationSpec):
    """Sort key putting neurons in spec order: groups as listed, then by slot."""
    order = _group_index(spec)
    return lambda node: (order[node[0]], node[1])


def _abs64(t: torch.Tensor) -> np.ndarray:
    return t.detach().abs().to("cpu", torch.float64).numpy()


def _slot_matrix(spec: PermutationSpec, module: nn.Module, name: str,
                 threshold: float = 0.0) -> np.ndarray:
    """``|W|`` of weight ``name`` summed over folds: ``(out slots, in slots)``.

    With ``threshold > 0``, entries below ``threshold * max|W|`` are dropped first.
    """
    w = tensor(module, name).detach().abs().to("cpu", torch.float64)
    if threshold > 0 and w.numel():
        w = torch.where(w >= threshold * w.max(), w, torch.zeros_like(w))
    w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a conv kernel joins one channel pair
    return spec.to_slots(name, w).numpy()


def _sources_and_sinks(spec: PermutationSpec) -> tuple[list[str], list[str]]:
    """Groups that only send (network inputs) and groups that only receive (outputs)."""
    sends = {spec.weight_groups(n)[1] for n in spec.weights()}
    receives = {spec.weight_groups(n)[0] for n in spec.weights()}
    sources = [g for g in spec.groups if g in sends and g not in receives]
    sinks = [g for g in spec.groups if g in receives and g not in sends]
    return sources, sinks


def _check_threshold(threshold, what: str) -> float:
    return nonnegative(threshold, f"{what} (a fraction of the layer's maximum)")


# -- 1. modularity ------------------------------------------------------------------------
def weight_graph(model, threshold: float = 0.0) -> nx.Graph:
    """The undirected weighted graph of the network's weights (what :func:`modularity` scores).

    * one node per neuron *position* ``(group name, slot)`` for every group of the spec, in spec
      order (groups as listed, slots ascending), with attributes ``group`` and ``slot``; nodes
      without any edge are kept;
    * for every tensor the spec charges as a ``weight`` (axes ``(out group, in group)``) and
      every entry ``w`` of it, an undirected edge between the entry's two neurons with weight
      ``|w|``; entries that join the same two positions (the ``fold`` neurons that share a slot,
      or two tensors joining the same two groups) are summed into one edge;
    * entries with ``w == 0`` add nothing (a zero-weight edge changes neither degrees nor
      modularity), so a pruned weight is no edge;
    * biases, token embeddings and uncharged tensors are not part of the graph.

    ``threshold > 0`` also drops entries below ``threshold`` times their tensor's largest
    ``|w|`` (what :func:`find_modules` uses); :func:`modularity` uses ``threshold=0``.
    """
    module, spec = network(model)
    threshold = _check_threshold(threshold, "threshold")
    nodes = [(g, s) for g, group in spec.groups.items() for s in range(group.size)]
    index = {node: i for i, node in enumerate(nodes)}
    lo_all, hi_all, w_all = [], [], []
    for name in spec.weights():
        out_g, in_g = spec.weight_groups(name)
        w = _slot_matrix(spec, module, name, threshold)
        r, c = np.nonzero(w)
        a = index[(out_g, 0)] + r
        b = index[(in_g, 0)] + c
        lo_all.append(np.minimum(a, b))
        hi_all.append(np.maximum(a, b))
        w_all.append(w[r, c])
    G = nx.Graph()
    for g, s in nodes:
        G.add_node((g, s), group=g, slot=s)
    if lo_all:
        lo, hi, w = (np.concatenate(x) for x in (lo_all, hi_all, w_all))
        keys, inverse = np.unique(lo * len(nodes) + hi, return_inverse=True)
        sums = np.bincount(inverse.ravel(), weights=w, minlength=len(keys))
        G.add_weighted_edges_from(
            (nodes[k // len(nodes)], nodes[k % len(nodes)], float(x))
            for k, x in zip(keys.tolist(), sums.tolist())
        )
    return G


def _graph(model) -> nx.Graph:
    return model if isinstance(model, nx.Graph) else weight_graph(model)


def _cnm(G: nx.Graph, resolution: float) -> list[set]:
    """Greedy (Clauset-Newman-Moore) communities, run on integer labels so the result never
    depends on Python's string-hash seed; every node lands in exactly one community."""
    nodes = list(G.nodes)
    if G.size(weight="weight") == 0:
        return [{n} for n in nodes]
    H = nx.convert_node_labels_to_integers(G, ordering="default")
    comms = nx.community.greedy_modularity_communities(H, weight="weight",
                                                       resolution=resolution)
    out = [{nodes[i] for i in c} for c in comms]
    position = {n: i for i, n in enumerate(nodes)}
    out.sort(key=lambda c: (-len(c), min(position[n] for n in c)))
    return out


def communities(model, resolution: float = 1.0, min_size: int = 1) -> list[set]:
    """Communities of :func:`weight_graph` by NetworkX's greedy modularity (Clauset-Newman-Moore).

    A partition of every neuron position ``(group, slot)``, largest community first (ties: the
    one holding the earliest neuron in spec order first). Neurons without connections are
    singletons; ``min_size=2`` leaves them out. Accepts a prebuilt graph too.
    """
    comms = _cnm(_graph(model), resolution)
    return [c for c in comms if len(c) >= min_size]


def modularity(model, resolution: float = 1.0) -> float:
    """Newman's modularity of the network's weight graph, as in the paper's Table 2.

    Exactly::

        G = bimt.analysis.weight_graph(model)   # nodes: every (group, slot); edges: summed |w|
        comms = networkx.community.greedy_modularity_communities(G, weight="weight")
        Q = networkx.community.modularity(G, comms, weight="weight")

    where ``G`` is undirected, has one node per neuron position of every group in the spec
    (isolated neurons included), and one edge per pair of positions joined by nonzero entries
    of tensors charged as ``weight``, weighing the sum of those entries' ``|w|`` (fold entries
    sharing a pair of positions summed; biases and token embeddings excluded). Community
    detection runs on the graph relabelled to integers (same node order), which makes the
    number independent of Python's hash seed; it is deterministic. ``resolution`` is passed
    to both NetworkX calls. Also accepts a prebuilt ``networkx.Graph``.

    Raises ``ValueError`` when every weight is zero (modularity is undefined).
    """
    G = _graph(model)
    if G.size(weight="weight") == 0:
        raise ValueError("every weight is zero, so modularity is undefined (the graph has no "
                         "edges); train the network first or check that it has weights")
    comms = _cnm(G, resolution)
    return float(nx.community.modularity(G, comms, weight="weight", resolution=resolution))


# -- 2. modules -----------------------------------------------------------------------------
def find_modules(model, threshold: float = MODULE_THRESHOLD) -> list[list[Neuron]]:
    """Modules: connected components of the weight graph after pruning weak weights.

    A weight entry is kept when ``|w| >= threshold * max|W|`` of its own tensor (its layer),
    ``threshold`` in [0, 1] (0 keeps every nonzero weight). Fold entries are pruned one by one,
    then joined per pair of positions as in :func:`weight_graph`. Returns each component with at
    least one connection as a sorted list of ``(group, slot)`` (spec order), components ordered
    by their first neuron in spec order (left to right on the first layer they touch). Isolated
    neurons are skipped.
    """
    _, spec = network(model)
    threshold = _check_threshold(threshold, "threshold")
    G = weight_graph(model, threshold=threshold)
    key = _neuron_key(spec)
    comps = [sorted(c, key=key) for c in nx.connected_components(G) if len(c) > 1]
    comps.sort(key=lambda c: key(c[0]))
    return comps


def module_slots(neurons: Iterable[Neuron] | Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """``[(group, slot), ...]`` (a module from :func:`find_modules`) -> ``{group: [slots]}``."""
    if isinstance(neurons, Mapping):
        return {g: sorted(int(s) for s in slots) for g, slots in neurons.items()}
    out: dict[str, list[int]] = {}
    for item in neurons:
        try:
            g, s = item
        except (TypeError, ValueError):
            raise TypeError(
                f"expected (group, slot) pairs or a {{group: [slots]}} dict, got {item!r}"
            ) from None
        out.setdefault(g, []).append(int(s))
    return {g: sorted(set(s)) for g, s in out.items()}


def _letters(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def tree_roots(model, threshold: float = MODULE_THRESHOLD, input_group: str | None = None,
               groups: Iterable[str] | None = None) -> list[dict]:
    """The modules as seen from the input (embedding) layer: the roots of Fig. 5's tree.

    Parallel modules of a token-embedding model (modular addition) meet only at the output
    layer, where they vote, so the whole network is one component. This cuts the output
    groups away (``groups``: the groups to keep; default every group except those that only
    receive weights), prunes as :func:`find_modules` does, and returns, for each component
    that touches ``input_group`` (default: the group the token embedding indexes, else the
    first group that only sends weights), a dict::

        {"name": "A", "input_slots": [...], "neurons": [(group, slot), ...],
         "output_slots": {output group: [slots it reaches with kept weights]}}

    ordered by their first input slot and named A, B, C, ...
    """
    module, spec = network(model)
    threshold = _check_threshold(threshold, "threshold")
    sources, sinks = _sources_and_sinks(spec)
    if input_group is None:
        emb = [spec.axes[n] for n, k in spec.charges.items() if k == "embedding"]
        emb_groups = [g for axes in emb for g in axes if g is not None]
        if emb_groups:
            input_group = emb_groups[0]
        elif sources:
            input_group = sources[0]
        else:
            raise ValueError("cannot tell which group is the input layer; pass input_group=")
    if input_group not in spec.groups:
        raise ValueError(f"unknown input_group {input_group!r}; groups: {', '.join(spec.groups)}")
    keep = [g for g in spec.groups if g not in sinks] if groups is None else list(groups)
    for g in keep:
        if g not in spec.groups:
            raise ValueError(f"unknown group {g!r}; groups: {', '.join(spec.groups)}")
    G = weight_graph((module, spec), threshold=threshold)
    key = _neuron_key(spec)
    cut = G.subgraph([n for n in G if n[0] in keep])
    roots = []
    for comp in nx.connected_components(cut):
        inputs = sorted(s for g, s in comp if g == input_group)
        if not inputs or len(comp) < 2:
            continue
        reached: dict[str, set] = {}
        for node in comp:
            for nb in G.neighbors(node):
                if nb[0] not in keep:
                    reached.setdefault(nb[0], set()).add(nb[1])
        roots.append({
            "input_slots": inputs,
            "neurons": sorted(comp, key=key),
            "output_slots": {g: sorted(reached[g]) for g in spec.groups if g in reached},
        })
    roots.sort(key=lambda r: r["input_slots"][0])
    return [{"name": _letters(i), **r} for i, r in enumerate(roots)]


# -- 3. active neurons ----------------------------------------------------------------------
def neuron_scores(model) -> dict[str, np.ndarray]:
    """Per group, the swap engine's importance of each slot (:meth:`PermutationSpec.importance`):
    summed ``|x|`` of every weight or embedding entry it indexes, folds included, biases not."""
    module, spec = network(model)
    return {g: spec.importance(module, g) for g in spec.groups}


def active_neurons(model, threshold: float = ACTIVE_THRESHOLD) -> dict[str, list[int]]:
    """``{group: [active slots]}`` for every group of the spec.

    A neuron's score is the paper's importance: the summed ``|w|`` of its incoming and outgoing
    weights (every entry of a tensor charged ``weight`` whose axis it indexes, fold entries
    included), plus its token-embedding column ``sum |E|`` for embedding neurons; biases are not
    counted. It is active when ``score > threshold * max score in its group``, so a group with
    no connections has no active neuron. ``threshold=0`` lists every connected neuron.
    """
    threshold = _check_threshold(threshold, "threshold")
    out = {}
    for g, score in neuron_scores(model).items():
        top = score.max() if score.size else 0.0
        out[g] = [int(s) for s in np.nonzero((score > threshold * top) & (score > 0))[0]]
    return out


def crossings(model, threshold: float | None = None) -> dict:
    """Readability of the drawing: ``{"crossings", "module_crossings", "n_modules"}``, the pairs
    of drawn wires that cross after pruning each weight below ``threshold`` (5%) of its layer's
    largest, and those between different modules (``None`` values when the layers are not
    lines in a chain). See :func:`bimt.core.crossings.crossings`."""
    from ..core.crossings import THRESHOLD
    from ..core.crossings import crossings as count

    wiring = wiring_of(model)
    return count(wiring.module, wiring.spec, THRESHOLD if threshold is None else threshold)
