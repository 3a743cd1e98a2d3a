"""Reading a trained network: modularity, modules, active neurons, pruning, interventions.

Every function takes the network in any of three forms:

* a model with a ``.spec`` attribute (:class:`bimt.BioMLP`, ...);
* a :class:`bimt.Wiring` (what :func:`bimt.attach` returns);
* a ``(module, spec)`` pair.

Neurons are named by *position*: ``(group name, slot)``, e.g. ``("layer1", 3)``. A slot of an
axis holding ``fold`` neurons per slot (the two concatenated token embeddings of modular
addition) stands for all of them: ``fold`` entries that join the same two positions count as one
connection whose strength is their summed ``|w|``. Slots are positions, not identities: after
swaps, input or output slot ``s`` of a BioMLP holds input ``input_order[s]`` / output
``output_order[s]`` (``model.hidden(x)`` is in slot order too).

Functions that run the network (``pruning_frontier``, ``knockout_table``, ``summary``) take an
``evaluate`` callable: ``evaluate(module) -> float`` (a test loss or an accuracy), called with the
module itself (``wiring.module`` for a Wiring), under ``torch.no_grad()``. Results are plain Python numbers, lists and dicts
(numpy arrays where stated), and the network is always left exactly as it was found.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping

import networkx as nx
import numpy as np
import torch
from torch import nn

from .spec import PermutationSpec, fold_index, tensor

__all__ = [
    "weight_graph", "modularity", "communities",
    "find_modules", "module_slots", "tree_roots", "neuron_scores", "active_neurons",
    "pruning_frontier", "plot_pruning_frontier",
    "intervene", "knockout_table",
    "activations", "neuron_correlation", "best_neuron",
    "embedding_matrix", "plot_embedding_pairs", "plot_embedding_heatmap",
    "summary",
    "MODULE_THRESHOLD", "ACTIVE_THRESHOLD",
]

#: Default for :func:`find_modules` / :func:`tree_roots`: a weight is kept when ``|w|`` is at
#: least this fraction of the largest ``|w|`` of its tensor (its layer).
MODULE_THRESHOLD = 0.1
#: Default for :func:`active_neurons`: a neuron is active when its score exceeds this fraction
#: of the largest score in its group (layer).
ACTIVE_THRESHOLD = 0.05

Neuron = tuple[str, int]


# -- the network, whatever form it comes in -------------------------------------------------
def _resolve(model) -> tuple[nn.Module, PermutationSpec]:
    """``(module, spec)`` from a model with ``.spec``, a Wiring, or a ``(module, spec)`` pair."""
    if isinstance(model, tuple) and len(model) == 2:
        module, spec = model
        if isinstance(module, nn.Module) and isinstance(spec, PermutationSpec):
            return module, spec
    spec = getattr(model, "spec", None)
    if isinstance(spec, PermutationSpec):
        module = getattr(model, "module", model)  # a Wiring holds the module
        if isinstance(module, nn.Module):
            return module, spec
    raise TypeError(
        f"cannot read a network from {type(model).__name__}: pass a model with a `.spec` "
        "(e.g. bimt.BioMLP), the Wiring returned by bimt.attach(...), or a (module, spec) pair"
    )


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
    out_g, in_g = spec.axes[name]
    n_out, n_in = spec.groups[out_g].size, spec.groups[in_g].size
    w = _abs64(tensor(module, name))
    if threshold > 0 and w.size:
        w = np.where(w >= threshold * w.max(), w, 0.0)
    f_out, f_in = w.shape[0] // n_out, w.shape[1] // n_in
    return w.reshape(f_out, n_out, f_in, n_in).sum(axis=(0, 2))


def _sources_and_sinks(spec: PermutationSpec) -> tuple[list[str], list[str]]:
    """Groups that only send (network inputs) and groups that only receive (outputs)."""
    sends = {spec.axes[n][1] for n in spec.weights()}
    receives = {spec.axes[n][0] for n in spec.weights()}
    sources = [g for g in spec.groups if g in sends and g not in receives]
    sinks = [g for g in spec.groups if g in receives and g not in sends]
    return sources, sinks


def _check_threshold(threshold, what: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"{what} must be a number >= 0 (a fraction of the layer's maximum), "
                         f"got {threshold!r}")
    return float(threshold)


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
    module, spec = _resolve(model)
    threshold = _check_threshold(threshold, "threshold")
    nodes = [(g, s) for g, group in spec.groups.items() for s in range(group.size)]
    index = {node: i for i, node in enumerate(nodes)}
    lo_all, hi_all, w_all = [], [], []
    for name in spec.weights():
        out_g, in_g = spec.axes[name]
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
    _, spec = _resolve(model)
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
    module, spec = _resolve(model)
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
    module, spec = _resolve(model)
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


# -- 4. pruning frontier (App. A) -----------------------------------------------------------
def _charged(spec: PermutationSpec, kinds) -> list[str]:
    bad = set(kinds) - {"weight", "bias", "embedding"}
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)}; allowed: weight, bias, embedding")
    return [n for n, k in spec.charges.items() if k in kinds]


def _evaluate(evaluate, module) -> float:
    """``evaluate(module)`` without gradients, as a float."""
    with torch.no_grad():
        value = evaluate(module)
    if torch.is_tensor(value):
        value = value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"evaluate must return a number (a loss or an accuracy), got {type(value).__name__}"
        ) from None


def pruning_frontier(model, evaluate: Callable[[nn.Module], float], n_points: int = 40,
                     counts: Iterable[int] | None = None,
                     kinds: Iterable[str] = ("weight", "bias", "embedding"),
                     ) -> list[tuple[int, float]]:
    """Loss against the number of parameters kept by magnitude pruning (the paper's Fig. A1).

    Every parameter entry of the tensors the spec charges (``kinds``: weights, biases and
    embeddings by default) is ranked by ``|x|``; for each count ``k`` the ``k`` largest are kept,
    the rest set to zero (a magnitude threshold swept from above the largest to 0, ties at the
    threshold broken by position so that every count is reachable), and ``evaluate(module)`` is
    called. Counts: ``n_points`` evenly spaced from 0 (all pruned) to the number of nonzero
    entries (nothing pruned), or ``counts``. Returns ``[(n_unpruned, loss), ...]`` by increasing
    ``n_unpruned``; the last point is the unpruned network. Parameters are restored exactly
    afterwards, even if ``evaluate`` raises.
    """
    module, spec = _resolve(model)
    names = _charged(spec, set(kinds))
    if not names:
        raise ValueError("the spec charges no tensor of the requested kinds; nothing to prune")
    tensors = [tensor(module, n) for n in names]
    sizes = [t.numel() for t in tensors]
    mags = np.concatenate([_abs64(t).ravel() for t in tensors])
    n_nonzero = int(np.count_nonzero(mags))
    if counts is None:
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
        grid = np.unique(np.round(np.linspace(0, n_nonzero, n_points)).astype(int))
    else:
        grid = np.unique(np.asarray(list(counts), dtype=int))
        if grid.size == 0 or grid.min() < 0 or grid.max() > n_nonzero:
            raise ValueError(f"counts must lie in [0, {n_nonzero}] (the nonzero parameters)")
    rank = np.empty(len(mags), dtype=np.int64)
    rank[np.argsort(-mags, kind="stable")] = np.arange(len(mags))
    splits = np.cumsum(sizes)[:-1]
    saved = [t.detach().clone() for t in tensors]
    frontier = []
    try:
        for k in grid.tolist():
            keep = np.split(rank < k, splits)
            with torch.no_grad():
                for t, orig, m in zip(tensors, saved, keep):
                    mask = torch.from_numpy(m.reshape(tuple(t.shape))).to(t.device)
                    t.copy_(torch.where(mask, orig, torch.zeros_like(orig)))
            frontier.append((int(k), _evaluate(evaluate, module)))
    finally:
        with torch.no_grad():
            for t, orig in zip(tensors, saved):
                t.copy_(orig)
    return frontier


def plot_pruning_frontier(frontiers, ax=None, logy: bool = True, title: str | None = None):
    """Plot ``{run name: frontier}`` (or one frontier) on one axes; returns the Figure.

    x: unpruned parameters; y: loss (log scale by default). Lower left is better.
    """
    import matplotlib.pyplot as plt

    if not isinstance(frontiers, Mapping):
        frontiers = {"": frontiers}
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    for name, points in frontiers.items():
        points = list(points)
        if not points:
            continue
        n, loss = zip(*points)
        ax.plot(n, loss, marker=".", label=str(name) or None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("unpruned parameters")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    if any(str(k) for k in frontiers):
        ax.legend()
    fig.tight_layout()
    return fig


# -- 5. interventions (App. C, Fig. 5) ------------------------------------------------------
def _knockout_plan(spec: PermutationSpec, module: nn.Module, group: str, slots: list[int]):
    """``[(tensor name, dim, slots)]``: the entries to zero to silence ``slots`` of ``group``."""
    if group not in spec.groups:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(spec.groups)}")
    n = spec.groups[group].size
    for s in slots:
        if not 0 <= s < n:
            raise ValueError(f"slot {s} is out of range for group {group!r} ({n} neurons)")
    outgoing = [(name, 1) for name in spec.weights() if spec.axes[name][1] == group]
    if outgoing:
        return [(name, dim, slots) for name, dim in outgoing]
    # an output (interface) neuron: silence what flows in, bias included
    incoming = [(name, 0) for name in spec.weights() if spec.axes[name][0] == group]
    biases = [(name, spec.axes[name].index(group)) for name, k in spec.charges.items()
              if k == "bias" and group in spec.axes[name]]
    if not incoming and not biases:
        raise ValueError(f"group {group!r} has no charged weight or bias to zero")
    return [(name, dim, slots) for name, dim in incoming + biases]


@contextlib.contextmanager
def intervene(model, zero: Mapping[str, object] | None = None,
              knock_out: Mapping[str, Iterable[int]] | Iterable[Neuron] | None = None):
    """Temporarily zero chosen entries or silence chosen neurons; everything is restored on exit.

    ``zero``: ``{tensor name: index}`` where index is anything a tensor accepts
    (``t[index] = 0``: an int, a tuple such as ``(2, 0)``, a slice, a list) or a boolean mask of
    the tensor's shape, or ``None`` for the whole tensor (App. C: remove one weight).

    ``knock_out``: ``{group: [slots]}`` or ``[(group, slot), ...]`` (a module from
    :func:`find_modules`). A neuron is knocked out by zeroing all its outgoing weights (every
    fold entry at its slot), so nothing downstream hears it; a neuron with no outgoing weights
    (an output, interface neuron) gets its incoming weights and its bias zeroed instead, so
    it outputs 0 (before any output activation).

    Yields the module. On exit, even by an exception, every touched tensor gets back exactly its
    values from before.
    """
    module, spec = _resolve(model)
    edits: list[tuple[torch.Tensor, object]] = []
    for name, index in (zero or {}).items():
        t = tensor(module, name)
        if index is None:
            index = ...
        elif isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if torch.is_tensor(index):
            index = index.to(t.device)
            if index.dtype == torch.bool and index.shape != t.shape:
                raise ValueError(f"mask for {name!r} has shape {tuple(index.shape)}, "
                                 f"the tensor {tuple(t.shape)}")
        edits.append((t, index, name))
    if knock_out:
        for g, slots in module_slots(knock_out).items():
            for name, dim, sl in _knockout_plan(spec, module, g, slots):
                t = tensor(module, name)
                idx = fold_index(torch.as_tensor(sl, dtype=torch.long, device=t.device),
                                 spec.groups[g].size, t.shape[dim])
                edits.append((t, (slice(None),) * dim + (idx,), name))
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for t, index, name in edits:
                if id(t) not in saved:
                    saved[id(t)] = (t, t.detach().clone())
                try:
                    t[index] = 0
                except (IndexError, RuntimeError, TypeError) as err:
                    raise ValueError(
                        f"cannot zero {name!r} (shape {tuple(t.shape)}) at {index!r}: {err}"
                    ) from None
        yield module
    finally:
        with torch.no_grad():
            for t, orig in saved.values():
                t.copy_(orig)


def knockout_table(model, modules: Mapping[str, object],
                   evaluate: Callable[[nn.Module], float],
                   baseline: str = "baseline") -> list[dict]:
    """Evaluate the network with each module knocked out (the table of Fig. 5, right).

    ``modules``: ``{name: {group: [slots]}}`` (or ``{name: [(group, slot), ...]}``, e.g. from
    :func:`find_modules`; several modules at once are just a bigger dict). Returns one row per
    entry, after a first row for the intact network::

        {"module": name, "knocked_out": {group: [slots]}, "n_neurons": int, "metric": float}
    """
    module, spec = _resolve(model)
    rows = [{"module": baseline, "knocked_out": {}, "n_neurons": 0,
             "metric": _evaluate(evaluate, module)}]
    for name, neurons in modules.items():
        slots = module_slots(neurons)
        with intervene((module, spec), knock_out=slots):
            value = _evaluate(evaluate, module)
        rows.append({"module": str(name), "knocked_out": slots,
                     "n_neurons": sum(len(s) for s in slots.values()), "metric": value})
    return rows


# -- 6. neurons that carry a quantity (App. B.3, Fig. 7) ------------------------------------
def _as_array(x, what: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def activations(model, x) -> dict[str, np.ndarray]:
    """``{group: (N, n) array}`` from ``model.hidden(x)`` (one entry per group, in spec order),
    run without gradients; the activations :func:`neuron_correlation` expects."""
    module, spec = _resolve(model)
    hidden = getattr(module, "hidden", None)
    if hidden is None:
        raise TypeError(f"{type(module).__name__} has no hidden(x); record the activations "
                        "yourself (e.g. with forward hooks) and pass arrays")
    with torch.no_grad():
        layers = hidden(x)
    if isinstance(layers, Mapping):
        return {g: _as_array(v, g) for g, v in layers.items()}
    if len(layers) != len(spec.groups):
        raise ValueError(f"hidden(x) gave {len(layers)} layers for {len(spec.groups)} groups")
    return {g: _as_array(v, g) for g, v in zip(spec.groups, layers)}


def neuron_correlation(activations, quantity) -> np.ndarray:
    """Pearson correlation of each neuron with ``quantity``: ``(N, n), (N,) -> (n,)``.

    A constant neuron (max == min) correlates 0. Use it on one layer, e.g.
    ``neuron_correlation(model.hidden(x)[3], I)``.
    """
    a = _as_array(activations, "activations")
    q = _as_array(quantity, "quantity").reshape(-1)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"activations must be (samples, neurons), got shape {a.shape}; for a "
                         "sequence pick a position first, e.g. h[:, -1, :]")
    if a.shape[0] != q.shape[0]:
        raise ValueError(f"{a.shape[0]} samples of activations but {q.shape[0]} of quantity")
    if a.shape[0] < 2:
        raise ValueError("need at least 2 samples to correlate")
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(q)):
        raise ValueError("activations and quantity must be finite (found NaN or inf)")
    if np.ptp(q) == 0:
        raise ValueError("quantity is constant, so no correlation is defined; vary the inputs")
    ac = a - a.mean(0)
    qc = q - q.mean()
    num = ac.T @ qc
    den = np.sqrt((ac ** 2).sum(0)) * np.sqrt((qc ** 2).sum())
    constant = np.ptp(a, axis=0) == 0
    r = np.divide(num, den, out=np.zeros_like(num), where=(den > 0) & ~constant)
    return np.clip(r, -1.0, 1.0)


def best_neuron(activations, quantity) -> tuple[int, float]:
    """``(slot, r)``: the neuron whose activation correlates most strongly (largest ``|r|``)
    with ``quantity``, and its Pearson ``r`` (signed); ties go to the lowest slot."""
    r = neuron_correlation(activations, quantity)
    i = int(np.argmax(np.abs(r)))
    return i, float(r[i])


# -- 7. embeddings (Fig. 5 middle, Fig. 6 right) --------------------------------------------
def _embedding_name(spec: PermutationSpec, name: str | None) -> str:
    names = [n for n, k in spec.charges.items() if k == "embedding"]
    if name is not None:
        if name not in names:
            raise ValueError(f"{name!r} is not an embedding tensor; embeddings: {names or 'none'}")
        return name
    if not names:
        raise ValueError("the network has no token embedding (no tensor charged 'embedding'); "
                         "embedding views need a token model such as "
                         "BioMLP(..., vocab_size=...)")
    if len(names) > 1:
        raise ValueError(f"the network has several embeddings {names}; pass name=")
    return names[0]


def embedding_matrix(model, normalize: bool = True, name: str | None = None) -> np.ndarray:
    """The token embedding as a ``(vocab, n)`` array, column ``s`` = the neuron at slot ``s``.

    With ``normalize`` (the paper's Fig. 6): ``e~[j, i] = e[j, i] / max_j |e[j, i]|``, each
    neuron divided by its largest magnitude over tokens, so values lie in [-1, 1]; an all-zero
    neuron stays 0.
    """
    module, spec = _resolve(model)
    name = _embedding_name(spec, name)
    axes = spec.axes[name]
    dims = [d for d, g in enumerate(axes) if g is not None]
    e = tensor(module, name).detach().to("cpu", torch.float64).numpy()
    e = np.moveaxis(e, dims[0], -1)
    e = e.reshape(-1, e.shape[-1])
    if normalize:
        top = np.abs(e).max(axis=0)
        e = np.divide(e, top, out=np.zeros_like(e), where=top > 0)
    return e


def _embedding_group(spec: PermutationSpec, name: str) -> str:
    return next(g for g in spec.axes[name] if g is not None)


def plot_embedding_pairs(model, pairs: Iterable[tuple[int, int]] | None = None,
                         threshold: float = MODULE_THRESHOLD, normalize: bool = True,
                         name: str | None = None, annotate: bool | None = None,
                         max_pairs: int = 12):
    """Scatter tokens on pairs of embedding neurons (modular addition's circles, Fig. 5 middle).

    ``pairs``: ``[(slot_a, slot_b), ...]``; by default every pair of input slots inside each of
    :func:`tree_roots`'s modules, or, if no module has two, consecutive active embedding
    neurons (:func:`active_neurons`). Points are coloured by token index (cyclic colour map) and
    labelled with it when the vocabulary is small. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    module, spec = _resolve(model)
    ename = _embedding_name(spec, name)
    E = embedding_matrix((module, spec), normalize=normalize, name=ename)
    if pairs is None:
        pairs = []
        for root in tree_roots((module, spec), threshold=threshold,
                               input_group=_embedding_group(spec, ename)):
            pairs += list(itertools.combinations(root["input_slots"], 2))
        if not pairs:
            act = active_neurons((module, spec))[_embedding_group(spec, ename)]
            pairs = list(zip(act[:-1], act[1:]))
        if not pairs:
            raise ValueError("found no pair of active embedding neurons; pass pairs=[(a, b)]")
    pairs = [(int(a), int(b)) for a, b in pairs][:max_pairs]
    for a, b in pairs:
        for s in (a, b):
            if not 0 <= s < E.shape[1]:
                raise ValueError(f"slot {s} is out of range (the embedding has {E.shape[1]})")
    vocab = E.shape[0]
    annotate = vocab <= 64 if annotate is None else annotate
    cols = min(len(pairs), 4)
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (a, b) in zip(axes.flat, pairs):
        sc = ax.scatter(E[:, a], E[:, b], c=np.arange(vocab), cmap="hsv", s=18)
        if annotate:
            for j in range(vocab):
                ax.annotate(str(j), (E[j, a], E[j, b]), fontsize=6, alpha=0.7)
        ax.set_xlabel(f"neuron {a}")
        ax.set_ylabel(f"neuron {b}")
        ax.set_aspect("equal", adjustable="datalim")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.ravel().tolist(), label="token")
    return fig


def plot_embedding_heatmap(model, active_only: bool = True,
                           threshold: float = ACTIVE_THRESHOLD, name: str | None = None,
                           token_labels: list[str] | None = None):
    """Normalized embedding values, neurons x tokens, in [-1, 1] (Fig. 6 right: S4's neurons).

    ``active_only`` keeps the embedding neurons :func:`active_neurons` calls active (with
    ``threshold``). Returns the Figure.
    """
    import matplotlib.pyplot as plt

    module, spec = _resolve(model)
    ename = _embedding_name(spec, name)
    E = embedding_matrix((module, spec), normalize=True, name=ename)
    slots = list(range(E.shape[1]))
    if active_only:
        slots = active_neurons((module, spec), threshold)[_embedding_group(spec, ename)]
        if not slots:
            raise ValueError("no active embedding neuron; lower threshold or use "
                             "active_only=False")
    vocab = E.shape[0]
    if token_labels is not None and len(token_labels) != vocab:
        raise ValueError(f"{len(token_labels)} token labels for a vocabulary of {vocab}")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * vocab + 1.5), max(2.0, 0.35 * len(slots) + 1)))
    im = ax.imshow(E[:, slots].T, cmap="bwr", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(slots)), [str(s) for s in slots])
    ax.set_ylabel("embedding neuron")
    ax.set_xlabel("token")
    ticks = range(vocab) if vocab <= 64 else range(0, vocab, max(1, vocab // 16))
    ax.set_xticks(list(ticks), [token_labels[t] if token_labels else str(t) for t in ticks],
                  rotation=90 if token_labels else 0, fontsize=7)
    fig.colorbar(im, ax=ax, label="normalized embedding")
    fig.tight_layout()
    return fig


# -- 8. summary -----------------------------------------------------------------------------
def summary(model, evaluate: Callable[[nn.Module], float] | None = None,
            module_threshold: float = MODULE_THRESHOLD,
            active_threshold: float = ACTIVE_THRESHOLD) -> dict:
    """A JSON-serialisable digest of the network::

        {"modularity": float or None (all weights zero),
         "n_communities": communities of 2+ neurons (those modularity found),
         "n_modules": len(find_modules(...)), "module_sizes": [int], "active_neurons": {group: count},
         "active_slots": {group: [slots]}, "neurons": {group: size},
         "n_params": charged entries (weights, biases, embeddings), "n_nonzero": of those,
         "n_params_total": every parameter, "connection_cost": float (if the model has a
         wiring), "metric": evaluate(module) (if given)}
    """
    module, spec = _resolve(model)
    G = weight_graph((module, spec))
    if G.size(weight="weight") > 0:
        comms = _cnm(G, 1.0)
        q = float(nx.community.modularity(G, comms, weight="weight"))
        n_comm = sum(len(c) > 1 for c in comms)
    else:
        q, n_comm = None, 0
    modules = find_modules((module, spec), module_threshold)
    active = active_neurons((module, spec), active_threshold)
    charged = [tensor(module, n) for n in spec.charges]
    out = {
        "modularity": q,
        "n_communities": n_comm,
        "n_modules": len(modules),
        "module_sizes": [len(m) for m in modules],
        "active_neurons": {g: len(s) for g, s in active.items()},
        "active_slots": active,
        "neurons": {g: int(group.size) for g, group in spec.groups.items()},
        "n_params": int(sum(t.numel() for t in charged)),
        "n_nonzero": int(sum(int(torch.count_nonzero(t)) for t in charged)),
        "n_params_total": int(sum(p.numel() for p in module.parameters())),
    }
    wiring = model if hasattr(model, "connection_cost") else getattr(model, "wiring", None)
    cost = getattr(wiring, "connection_cost", None)
    if cost is not None:
        out["connection_cost"] = float(cost.total(module))
    if evaluate is not None:
        out["metric"] = _evaluate(evaluate, module)
    return out


# -- a run directory, analysed (``bimt analyze``) ---------------------------------------------
def run_evaluator(run_dir):
    """``(model, config, evaluate)`` for a run: ``evaluate(module)`` is the test loss."""
    from .tasks import get_task
    from .train import _targets, load_model

    model, cfg = load_model(run_dir)
    task = get_task(cfg.task)
    data = task.make_data(cfg.seed, cfg.data_dir)
    loss_fn = nn.MSELoss() if cfg.loss == "mse" else nn.CrossEntropyLoss()
    predict = task.predict or (lambda o: o)
    target = _targets(data.y_test, cfg, model)

    def evaluate(module) -> float:
        return float(loss_fn(predict(module(data.X_test)), target))

    def accuracy(module) -> float:
        return float((predict(module(data.X_test)).argmax(-1) == data.y_test).float().mean())

    return model, cfg, evaluate, (accuracy if task.kind == "classification" else None)


def analyze_run(run_dir, prune: bool = False, knockout: bool = False, echo: bool = True) -> dict:
    """Modularity, modules and active neurons of a run, written to ``analysis.json`` / ``.md``.

    ``prune`` adds ``pruning_frontier.png`` (+ csv); ``knockout`` adds ``knockout.md``, the
    metric after knocking out each module found by :func:`find_modules` or, when the network is
    one component (modules that meet only at the output, Fig. 5), each of its :func:`tree_roots`.
    """
    from pathlib import Path

    from . import viz
    from .fileio import atomic_write_bytes, write_json

    run_dir = Path(run_dir)
    model, cfg, evaluate, accuracy = run_evaluator(run_dir)
    report = summary(model, evaluate)
    report["test_loss"] = report.pop("metric")
    report["modules"] = [module_slots(m) for m in find_modules(model)]
    lines = [f"# Analysis of {run_dir.name} ({cfg.task}, {cfg.method}, seed {cfg.seed})", "",
             f"- modularity: {report['modularity']}",
             f"- modules (threshold {MODULE_THRESHOLD} of each tensor's max |w|): {report['n_modules']}"
             f" of sizes {report['module_sizes']}",
             f"- active neurons per layer: {report['active_neurons']}",
             f"- nonzero charged parameters: {report['n_nonzero']} of {report['n_params']}",
             f"- test loss: {report['test_loss']:.6g}"]
    if prune:
        frontier = pruning_frontier(model, evaluate)
        report["pruning_frontier"] = [[int(n), float(l)] for n, l in frontier]
        fig = plot_pruning_frontier({f"{cfg.task} {cfg.method}": frontier})
        viz.save_figure(fig, run_dir / "pruning_frontier", formats=("png",))
        csv_text = "n_unpruned,test_loss\n" + "".join(f"{n},{l}\n" for n, l in frontier)
        atomic_write_bytes(run_dir / "pruning_frontier.csv", csv_text.encode())
        lines.append("- pruning frontier: pruning_frontier.png, pruning_frontier.csv")
    if knockout:
        modules = {_letters(i): m for i, m in enumerate(find_modules(model))}
        if len(modules) < 2:  # parallel modules that meet only at the output (Fig. 5): its roots
            roots = tree_roots(model)
            if len(roots) >= 2:
                modules = {r["name"]: r["neurons"] for r in roots}
        metric = accuracy or evaluate
        rows = knockout_table(model, modules, metric)
        report["knockout"] = rows
        name = "test accuracy" if accuracy else "test loss"
        table = [f"| module | neurons | {name} |", "|---|---|---|"]
        table += [f"| {r['module']} | {r['n_neurons']} | {r['metric']:.4g} |" for r in rows]
        atomic_write_bytes(run_dir / "knockout.md", ("\n".join(table) + "\n").encode())
        lines += ["", "## Knock-outs", "", *table]
    write_json(run_dir / "analysis.json", report)
    atomic_write_bytes(run_dir / "analysis.md", ("\n".join(lines) + "\n").encode())
    if echo:
        print("\n".join(lines))
    return report


# -- the transformer of in-context regression (Fig. 7 right) -----------------------------------
def in_context_weights(X) -> np.ndarray:
    """The hidden ``w`` of each in-context sequence ``[0, x1], [y1, 0], [0, x]``: ``y1 / x1``."""
    X = torch.as_tensor(X)
    if X.ndim != 3 or X.shape[1] < 2 or X.shape[2] != 2:
        raise ValueError(f"expected in-context sequences of shape (N, 3, 2), got {tuple(X.shape)}")
    return (X[:, 1, 0] / X[:, 0, 1]).double().numpy()


def residual_vs_weight(model, X, index: int = 2, position: int = -1) -> dict:
    """How the residual stream at the query position encodes the hidden weight ``w``.

    ``index`` picks the residual stream as in ``model.residual_stream``: 0 after the embedding,
    then after each attention and MLP (2 = after the first block, the paper's "Res2"). Returns
    the per-neuron Pearson correlation with ``w``, the activations ``(N, d_model)``, ``w``, and
    the slots ordered by ``|r|``, those whose activity spreads above 1% of the widest first.
    """
    if not hasattr(model, "residual_stream"):
        raise TypeError(f"residual_vs_weight needs a BioTransformer, got {type(model).__name__}")
    with torch.no_grad():
        streams = model.residual_stream(torch.as_tensor(X))
    if not -len(streams) <= index < len(streams):
        raise ValueError(f"index {index} out of range: the model has {len(streams)} residual streams")
    acts = streams[index][:, position, :].double().numpy()
    w = in_context_weights(X)
    r = neuron_correlation(acts, w)
    spread = acts.std(0)
    alive = spread > 0.01 * spread.max() if spread.max() > 0 else np.zeros(len(spread), bool)
    # neurons that carry a signal first (by |r|), then the near-silent ones
    order = np.lexsort((-np.abs(r), ~alive))
    return {"correlation": r, "activations": acts, "w": w, "order": order, "alive": alive}


def plot_residual_vs_weight(model, X, y, index: int = 2, pairs=None):
    """Fig. 7 right: predicted vs true ``y``, and pairs of residual neurons coloured by ``w``.

    ``pairs`` defaults to the two pairs made of the four neurons most correlated with ``w``.
    """
    from matplotlib.figure import Figure

    view = residual_vs_weight(model, X, index)
    with torch.no_grad():
        pred = model(torch.as_tensor(X))[:, -1, 0].double().numpy()
    top = view["order"]
    if pairs is None:
        pairs = [(int(top[0]), int(top[1])), (int(top[2]), int(top[3]))] if len(top) >= 4 else [
            (int(top[0]), int(top[-1]))]
    fig = Figure(figsize=(4.5, 4.2 * (1 + len(pairs))))
    ax = fig.add_subplot(1 + len(pairs), 1, 1)
    y = np.asarray(torch.as_tensor(y).double())
    ax.scatter(y, pred, s=2)
    lim = [float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))]
    ax.plot(lim, lim, ls="--", color="red", alpha=0.7)
    ax.set_xlabel("true y")
    ax.set_ylabel("predicted y")
    for i, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1 + len(pairs), 1, i + 2)
        sc = ax.scatter(view["activations"][:, a], view["activations"][:, b], c=view["w"], s=2,
                        cmap="viridis")
        ax.set_xlabel(f"Res{index} neuron {a} (r = {view['correlation'][a]:+.2f})")
        ax.set_ylabel(f"Res{index} neuron {b} (r = {view['correlation'][b]:+.2f})")
        fig.colorbar(sc, ax=ax, label="weight w")
    fig.tight_layout()
    return fig
