"""One digest of a network: modularity, communities, modules, active neurons, parameters."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
from torch import nn

from ..models.wiring import has_wiring, wiring_of
from ..core.spec import tensor
from .graph import (
    ACTIVE_THRESHOLD, MODULE_THRESHOLD, _cnm, active_neurons, count_nonzero, find_modules, network,
    weight_graph,
)
from .prune import evaluate_once

__all__ = ["summary"]


def summary(model, evaluate: Callable[[nn.Module], float] | None = None,
            module_threshold: float = MODULE_THRESHOLD,
            active_threshold: float = ACTIVE_THRESHOLD) -> dict:
    """A JSON-serialisable digest of the network::

        {"modularity": float or None (all weights zero),
         "n_communities": communities of 2+ neurons (those modularity found),
         "n_modules": len(find_modules(...)), "module_sizes": [int], "active_neurons": {group: count},
         "active_slots": {group: [slots]}, "neurons": {group: size},
         "n_params": charged entries (weights, biases, embeddings), "n_nonzero": of those
         (:func:`count_nonzero`), "n_params_total" / "n_nonzero_total": every parameter (as
         ``metrics.json``'s ``n_params`` / ``n_nonzero_params``), "connection_cost": float (if the model has a
         wiring), "metric": evaluate(module) (if given)}
    """
    module, spec = network(model)
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
        "n_nonzero": count_nonzero(charged),
        "n_params_total": int(sum(p.numel() for p in module.parameters())),
        "n_nonzero_total": count_nonzero(module.parameters()),
    }
    if has_wiring(model) or has_wiring(module):
        wiring = wiring_of(model if has_wiring(model) else module)
        out["connection_cost"] = float(wiring.connection_cost.total(module))
    if evaluate is not None:
        out["metric"] = evaluate_once(evaluate, module)
    return out


