"""Reading a trained network: modularity, modules, active neurons, pruning, interventions.

Every function takes the network as anything :func:`bimt.wiring_of` accepts: a module with a
wiring (:class:`bimt.BioMLP`, an attached module), a :class:`bimt.Wiring`, or a ``(module,
spec)`` pair (a run directory's model: ``bimt.load_model(run)``). One module per concept:

* :mod:`.graph` - the weight graph, modularity (Table 2), communities, modules, tree roots,
  active neurons;
* :mod:`.prune` - the pruning frontier (App. A);
* :mod:`.intervene` - knock-outs and zeroed weights (App. C, Fig. 5);
* :mod:`.probes` - neurons that carry a quantity, token embeddings, the in-context residual
  stream (Figs. 5-7);
* :mod:`.report` - :func:`summary`, one digest;
* :mod:`.paths` - which output a path of kept weights reaches from which input;
* :mod:`.circuits` - transformers by heads and MLP neurons: attention scores, knock-outs,
  modules, :func:`find_circuit`.

Neurons are named by *position*: ``(group name, slot)``, e.g. ``("layer1", 3)``. Slots are
positions, not identities: after swaps, input or output slot ``s`` holds input
``input_order[s]`` / output ``output_order[s]``. Functions that run the network take an
``evaluate(module) -> float`` callable, called under ``torch.no_grad()``. Results are plain
Python numbers, lists and dicts (numpy arrays where stated), and the network is always left
exactly as it was found. The figures of these analyses are in :mod:`bimt.viz` (built without
pyplot, like every figure of bimt).
"""

from .graph import (
    ACTIVE_THRESHOLD, MODULE_THRESHOLD, active_neurons, communities, crossings, find_modules,
    modularity, module_slots, neuron_scores, tree_roots, weight_graph,
)
from .circuits import find_circuit, unit_modules
from .intervene import intervene, knockout_table
from .paths import depends_only_on, input_output_paths
from .probes import (
    activations, best_neuron, embedding_matrix, in_context_weights, neuron_correlation,
    residual_vs_weight,
)
from .prune import pruning_frontier
from .report import summary

__all__ = [
    "weight_graph", "modularity", "communities", "crossings",
    "find_modules", "module_slots", "tree_roots", "neuron_scores", "active_neurons",
    "pruning_frontier", "intervene", "knockout_table",
    "activations", "neuron_correlation", "best_neuron", "embedding_matrix",
    "in_context_weights", "residual_vs_weight", "summary", "input_output_paths", "depends_only_on",
    "MODULE_THRESHOLD", "ACTIVE_THRESHOLD", "find_circuit", "unit_modules",
]
