"""Which outputs can hear which inputs, once weak weights are pruned.

The weights the spec charges form a directed graph from each weight's input group to its
output group (a recurrent weight loops inside its group, so a path may go round any number of
time steps). :func:`input_output_paths` prunes as :func:`find_modules` does (an
entry is kept when ``|w| >= threshold * max|W|`` of its tensor; fold entries summed per pair of
slots) and reports, in *interface* order (the order buffers undone), whether output ``o`` is
reachable from input ``i``. An output that no input reaches depends on its bias only; one that
a single stream reaches depends on that stream alone, whatever the weights on the path are.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..models.wiring import wiring_of
from .graph import MODULE_THRESHOLD, _check_threshold, _slot_matrix, _sources_and_sinks, network

__all__ = ["input_output_paths", "depends_only_on"]


def _order(module, spec, group: str) -> np.ndarray:
    """Interface index held by each slot of ``group`` (identity without an order buffer)."""
    order = wiring_of((module, spec)).order(group)
    return np.arange(spec.groups[group].size) if order is None else order.detach().cpu().numpy()


def input_output_paths(model, threshold: float = MODULE_THRESHOLD, input_group: str | None = None,
                       output_group: str | None = None) -> np.ndarray:
    """Boolean ``(n_outputs, n_inputs)``: a path of kept weights from input ``i`` to output ``o``.

    Inputs and outputs are in the model's interface order. ``input_group`` / ``output_group``
    default to the one group that only sends weights and the one that only receives them.
    """
    module, spec = network(model)
    threshold = _check_threshold(threshold, "threshold")
    sources, sinks = _sources_and_sinks(spec)
    if input_group is None:
        if len(sources) != 1:
            raise ValueError(f"cannot tell the input group among {sources}; pass input_group=")
        input_group = sources[0]
    if output_group is None:
        if len(sinks) != 1:
            raise ValueError(f"cannot tell the output group among {sinks}; pass output_group=")
        output_group = sinks[0]
    G = nx.DiGraph()
    G.add_nodes_from((g, s) for g, grp in spec.groups.items() for s in range(grp.size))
    for name in spec.weights():
        out_g, in_g = spec.weight_groups(name)
        r, c = np.nonzero(_slot_matrix(spec, module, name, threshold))
        G.add_edges_from(((in_g, int(b)), (out_g, int(a))) for a, b in zip(r, c))
    n_in, n_out = spec.groups[input_group].size, spec.groups[output_group].size
    in_order, out_order = _order(module, spec, input_group), _order(module, spec, output_group)
    reach = np.zeros((n_out, n_in), dtype=bool)
    for s in range(n_in):
        for g, t in nx.descendants(G, (input_group, s)):
            if g == output_group:
                reach[out_order[t], in_order[s]] = True
    return reach


def depends_only_on(model, pairs: dict[int, int], threshold: float = MODULE_THRESHOLD) -> bool:
    """True when each output ``o`` of ``pairs = {o: i}`` is reached from input ``i`` and from no
    other input (interface indices)."""
    reach = input_output_paths(model, threshold)
    for o, i in pairs.items():
        row = reach[o]
        if not row[i] or row.sum() != 1:
            return False
    return True

