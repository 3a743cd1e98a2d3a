"""Heads and MLP neurons as units: attention scores per head, knock-outs, modules, circuits.

For transformers whose spec names block ``b``'s attention group ``attn{b}`` (slots in
``heads`` blocks) and its MLP group ``mlp{b}`` (:class:`bimt.BioGPT`,
:class:`bimt.BioTransformer`). Units are named by place, like every neuron in
:mod:`bimt.analysis`: ``"L1.h0"`` is whatever head sits in head place 0 of block 1 (heads trade
places as whole units), ``"L0.n17"`` the MLP neuron at slot 17 of block 0.

* :func:`previous_token_scores` and :func:`induction_scores`: mean attention to position
  ``t - 1``, and from a token of a sequence's repeated segment to the token right after that
  token's earlier occurrence (``t - period + 1``).
* :func:`knockout_effects`: the metric's drop when one unit is silenced (a head's output, or
  an MLP neuron's, zeroed: the columns of ``proj`` or ``fc2`` it feeds, through
  :func:`bimt.analysis.intervene`).
* :func:`unit_graph` and :func:`unit_modules`: the weight graph of
  :func:`bimt.analysis.weight_graph` after pruning, with each head's slots merged into one node.
* :func:`spatial_module`: whether a set of units is one spatial module (defined there).
* :func:`find_circuit`: all of it in one call.

Metrics are ``metric(logits, data) -> float``, higher is better (pass a negative loss for a
loss), with ``data`` a token tensor ``(batch, seq)`` or anything with ``.tokens`` (an
:class:`~bimt.tasks.language.InductionBatch`: :func:`~bimt.tasks.language.induction_accuracy`
is such a metric). The network is always left as it was found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch

from ..models.wiring import wiring_of
from .graph import MODULE_THRESHOLD, network, weight_graph
from .intervene import intervene

__all__ = [
    "attention_patterns", "previous_token_scores", "induction_scores", "units",
    "knockout_effects", "unit_graph", "unit_modules", "spatial_module", "find_circuit", "Circuit",
    "circuit_slots",
]

_ATTN, _MLP = re.compile(r"attn(\d+)$"), re.compile(r"mlp(\d+)$")


def _tokens(data) -> torch.Tensor:
    tokens = data if torch.is_tensor(data) else getattr(data, "tokens", None)
    if not torch.is_tensor(tokens):
        raise TypeError(f"expected the model's input (a tensor) or an object with .tokens, got "
                        f"{type(data).__name__}")
    return tokens


def _layers(spec) -> dict[int, dict[str, str]]:
    """``{block: {"attn": group, "mlp": group}}`` from the spec's group names."""
    out: dict[int, dict[str, str]] = {}
    for g in spec.groups:
        for kind, pattern in (("attn", _ATTN), ("mlp", _MLP)):
            hit = pattern.match(g)
            if hit:
                out.setdefault(int(hit.group(1)), {})[kind] = g
    if not any("attn" in v for v in out.values()):
        raise ValueError("the spec has no attention groups named attn0, attn1, ...; circuits "
                         "read transformers such as bimt.BioGPT and bimt.BioTransformer")
    return dict(sorted(out.items()))


def units(model, neurons: bool = True) -> dict[str, tuple[str, list[int]]]:
    """Every unit by name: ``{"L0.h1": ("attn0", [its slots]), "L0.n5": ("mlp0", [5]), ...}``."""
    _, spec = network(model)
    out = {}
    for b, groups in _layers(spec).items():
        if "attn" in groups:
            g = spec.groups[groups["attn"]]
            d = g.head_size
            out.update({f"L{b}.h{h}": (g.name, list(range(h * d, (h + 1) * d)))
                        for h in range(g.heads)})
        if neurons and "mlp" in groups:
            out.update({f"L{b}.n{s}": (groups["mlp"], [s])
                        for s in range(spec.groups[groups["mlp"]].size)})
    return out


# -- attention ----------------------------------------------------------------------------------
def attention_patterns(model, data) -> list[torch.Tensor]:
    """Every layer's attention probabilities ``(batch, heads, query, key)``, heads by place."""
    with torch.no_grad():
        return [a.detach() for a in wiring_of(model).probe("attention_patterns", _tokens(data))]


def previous_token_scores(model, data) -> np.ndarray:
    """``(layers, heads)``: mean attention from each position ``t >= 1`` to ``t - 1``."""
    rows = []
    for att in attention_patterns(model, data):
        T = att.shape[-1]
        if T < 2:
            raise ValueError("previous-token scores need sequences of at least 2 tokens")
        t = torch.arange(1, T)
        rows.append(att[..., t, t - 1].double().mean(dim=(0, 2)).numpy())
    return np.stack(rows)


def induction_scores(model, batch) -> np.ndarray:
    """``(layers, heads)``: mean attention from each token of the repeated segment (position
    ``t`` from ``start`` to ``start + period - 1``) to the token right after that token's
    earlier occurrence (``t - period + 1``). ``batch``: an InductionBatch (``tokens``,
    ``period``, ``start``)."""
    for name in ("tokens", "period", "start"):
        if not torch.is_tensor(getattr(batch, name, None)):
            raise TypeError(f"induction scores need a batch with .tokens, .period and .start "
                            f"(bimt.tasks.language.induction_data), got {type(batch).__name__}")
    T = batch.tokens.shape[1]
    t = torch.arange(T)[None, :]
    start, period = batch.start[:, None], batch.period[:, None]
    rep = (t >= start) & (t < start + period)
    b_idx, t_idx = rep.nonzero(as_tuple=True)
    s_idx = t_idx - batch.period[b_idx] + 1
    rows = []
    for att in attention_patterns(model, batch):
        picked = att[b_idx, :, t_idx, s_idx]  # (positions, heads)
        rows.append(picked.double().mean(0).numpy())
    return np.stack(rows)


# -- knock-outs ---------------------------------------------------------------------------------
def _evaluate(model, data, metric) -> float:
    module, _ = network(model)
    with torch.no_grad():
        value = metric(module(_tokens(data)), data)
    return float(value)


def _knocked(model, data, metric, names: Iterable[str], table) -> float:
    slots: dict[str, list[int]] = {}
    for name in names:
        group, s = table[name]
        slots.setdefault(group, []).extend(s)
    with intervene(model, knock_out=slots):
        return _evaluate(model, data, metric)


def knockout_effects(model, data, metric: Callable, names: Iterable[str] | None = None,
                     neurons: bool = True) -> dict[str, float]:
    """``{unit: metric(intact) - metric(unit knocked out)}`` for each unit (default: every head
    and, with ``neurons``, every MLP neuron): how much the metric drops without it."""
    table = units(model, neurons=True)
    names = list(units(model, neurons) if names is None else names)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown units {unknown}; units look like L0.h1 (head) or L0.n5 "
                         "(MLP neuron)")
    base = _evaluate(model, data, metric)
    return {n: base - _knocked(model, data, metric, [n], table) for n in names}


# -- modules ------------------------------------------------------------------------------------
def unit_graph(model, threshold: float = MODULE_THRESHOLD) -> nx.Graph:
    """:func:`bimt.analysis.weight_graph` pruned at ``threshold`` (of each tensor's largest
    ``|w|``), with every head's slots merged into one node named like ``"L0.h1"`` and every MLP
    neuron named like ``"L0.n5"``; other neurons stay ``(group, slot)``."""
    _, spec = network(model)
    G = weight_graph(model, threshold=threshold)
    rename = {}
    for name, (group, slots) in units(model).items():
        for s in slots:
            rename[(group, s)] = name
    return nx.relabel_nodes(G, rename, copy=True)


def unit_modules(model, threshold: float = MODULE_THRESHOLD) -> list[dict]:
    """Connected components of :func:`unit_graph` holding a head or MLP neuron, each as
    ``{"heads": [...], "neurons": [...], "slots": {group: [slots]}}`` (the other neurons it
    joins, residual stream included), largest first."""
    G = unit_graph(model, threshold)
    found = []
    for comp in nx.connected_components(G):
        named = sorted((n for n in comp if isinstance(n, str)), key=_unit_key)
        if not named or len(comp) < 2:
            continue
        slots: dict[str, list[int]] = {}
        for node in comp:
            if not isinstance(node, str):
                slots.setdefault(node[0], []).append(node[1])
        found.append({"heads": [n for n in named if ".h" in n],
                      "neurons": [n for n in named if ".n" in n],
                      "slots": {g: sorted(s) for g, s in sorted(slots.items())}})
    found.sort(key=lambda m: (-(len(m["heads"]) + len(m["neurons"])), _unit_key((m["heads"] + m["neurons"])[0])))
    return found


def _unit_key(name: str):
    layer, rest = name[1:].split(".", 1)
    return int(layer), rest[0], int(rest[1:])


def spatial_module(model, names: Iterable[str], threshold: float = MODULE_THRESHOLD) -> dict:
    """Whether the units ``names`` form one spatial module, and why.

    Definition: they form one spatial module when both hold

    * **connected**: the units, together with every other neuron (residual-stream slot, ...)
      that one of their kept weights touches, form one connected graph of kept weights. A
      weight entry is kept when ``|w| >= threshold * max|W|`` of its tensor; a head is one node
      (its slots merged), so weights inside a head do not count as links between units.
    * **contiguous**: in every block, the set's heads occupy consecutive head places and its
      MLP neurons consecutive slots, i.e. no unit of that block outside the set sits between
      two units of the set.

    Returns ``{"one_module", "connected", "contiguous", "slots"}`` (``slots``: the other
    neurons the set's kept weights touch, ``{group: [slots]}``).
    """
    names = sorted(set(names), key=_unit_key)
    table = units(model)
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ValueError(f"spatial_module needs known units (like L0.h1 or L0.n5), got "
                         f"{unknown or 'none'}")
    G = unit_graph(model, threshold)
    touched = {nb for n in names for nb in G.neighbors(n) if not isinstance(nb, str)}
    connected = nx.is_connected(G.subgraph(set(names) | touched))
    places: dict[tuple[int, str], list[int]] = {}
    for n in names:
        layer, kind, index = _unit_key(n)
        places.setdefault((layer, kind), []).append(index)
    contiguous = all(max(p) - min(p) + 1 == len(p) for p in places.values())
    slots: dict[str, list[int]] = {}
    for g, s in touched:
        slots.setdefault(g, []).append(s)
    return {"one_module": bool(connected and contiguous), "connected": bool(connected),
            "contiguous": bool(contiguous),
            "slots": {g: sorted(s) for g, s in sorted(slots.items())}}


# -- the circuit --------------------------------------------------------------------------------
@dataclass
class Circuit:
    """What :func:`find_circuit` found.

    ``heads``, ``neurons``: the units that carry the task; ``baseline``: the intact metric;
    ``effects``: every unit's single knock-out drop; ``set_effect``: the drop with the whole
    circuit knocked out at once; ``heads_effect``: the drop with only its heads knocked out;
    ``other_head`` / ``other_effect``: the head outside the circuit
    whose knock-out drops the metric most, and by how much; ``module``: :func:`spatial_module`
    of the circuit; ``scores``: per head (``"L0.h1"``), its previous-token score and, for an
    induction batch, its induction score.
    """

    heads: list[str]
    neurons: list[str]
    baseline: float
    set_effect: float
    other_head: str | None
    other_effect: float
    module: dict
    effects: dict[str, float] = field(repr=False)
    scores: dict[str, dict[str, float]] = field(repr=False)
    heads_effect: float = 0.0

    @property
    def units(self) -> list[str]:
        return self.heads + self.neurons

    @property
    def one_module(self) -> bool:
        return bool(self.module.get("one_module"))


def find_circuit(model, data, metric: Callable, threshold: float = 0.2, neurons: bool = True,
                 module_threshold: float = MODULE_THRESHOLD) -> Circuit:
    """The heads and MLP neurons that carry the task measured by ``metric`` on ``data``.

    Every head and (with ``neurons``) every MLP neuron is knocked out alone; the circuit is the
    units whose knock-out drops the metric by at least ``threshold`` times the largest single
    drop (none if no knock-out lowers it). Then the whole circuit is knocked out at once
    (``set_effect``) and set against the largest drop of any single head outside it
    (``other_effect``), and :func:`spatial_module` says whether the circuit is one spatial
    module. Costs one evaluation per unit.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1] (a fraction of the largest drop), got "
                         f"{threshold!r}")
    table = units(model, neurons=True)
    effects = knockout_effects(model, data, metric, neurons=neurons)
    top = max(effects.values())
    chosen = sorted((n for n, e in effects.items() if top > 0 and e >= threshold * top),
                    key=_unit_key)
    base = _evaluate(model, data, metric)
    set_effect = base - _knocked(model, data, metric, chosen, table) if chosen else 0.0
    heads = [n for n in chosen if ".h" in n]
    if heads == chosen:
        heads_effect = set_effect
    else:
        heads_effect = base - _knocked(model, data, metric, heads, table) if heads else 0.0
    others = {n: e for n, e in effects.items() if ".h" in n and n not in chosen}
    other = max(others, key=others.get) if others else None
    module = spatial_module(model, chosen, module_threshold) if chosen else {
        "one_module": False, "connected": False, "contiguous": False, "slots": {}}
    prev = previous_token_scores(model, data)
    induct = induction_scores(model, data) if torch.is_tensor(getattr(data, "period", None)) else None
    scores = {}
    for (layer, head), value in np.ndenumerate(prev):
        scores[f"L{layer}.h{head}"] = {"previous_token": float(value)}
        if induct is not None:
            scores[f"L{layer}.h{head}"]["induction"] = float(induct[layer, head])
    return Circuit(heads, [n for n in chosen if ".n" in n], base, set_effect, other,
                   others.get(other, 0.0), module, effects, scores, heads_effect)


def circuit_slots(model, names: Iterable[str]) -> dict[str, list[int]]:
    """``{group: [slots]}`` of units (``"L1.h0"``: every slot of that head place; ``"L0.n17"``:
    that MLP neuron), to highlight them in a picture."""
    table = units(model, neurons=True)
    out: dict[str, list[int]] = {}
    for name in names:
        group, slots = table[name]
        out.setdefault(group, []).extend(int(s) for s in slots)
    return {g: sorted(set(s)) for g, s in out.items()}
