"""Pictures of spatially embedded networks: connectivity graphs, decision boundaries, GIFs.

* :func:`plot` - any model in its wiring's view (2D, or 3D for grid and ring layers);
* :func:`plot_graph` - the paper's 2D connectivity graph of any model with a wiring (residual
  streams, heads, recurrent weights and folds included);
* :func:`plot_graph_3d` - the 3D graph for grid / ring layers (MNIST);
* :func:`plot_decision_boundary` - class regions of a 2-input classifier;
* :func:`plot_pruning_frontier`, :func:`plot_embedding_pairs`, :func:`plot_embedding_heatmap`,
  :func:`plot_residual_vs_weight` - the pictures of :mod:`bimt.analysis`;
* :func:`save_figure` - atomic PNG / SVG / ... writing;
* :class:`GraphRecorder` and :func:`write_animation` - the graph evolving during training;
* :func:`report` - one self-contained interactive HTML page of a model (of a run directory:
  :func:`bimt.view.report`, ``bimt view``).

The drawing conventions (blue/red by sign, width ``|w| / max|w|`` of the layer) live in
:mod:`bimt.viz.style`, re-exported here for other drawings to share.
"""


from ._io import Figure, atomic_write, close_figure, save_figure
from .analysis import (
    plot_embedding_heatmap, plot_embedding_pairs, plot_pruning_frontier, plot_residual_vs_weight,
)
from .animation import GraphRecorder, Snapshot, render_frames, snapshot, write_animation
from .graph import MODULE_COLORS, neuron_positions, plot, plot_decision_boundary, plot_graph, plot_graph_3d
from .report import Report, report
from .style import (
    MAX_LINEWIDTH, NEGATIVE_COLOR, NEURON_COLOR, POSITIVE_COLOR, keep_mask, normalized_weights,
    weight_collection, weight_colors, weight_linewidths,
)


__all__ = [
    "Figure", "plot", "plot_graph", "plot_graph_3d", "plot_decision_boundary", "save_figure", "GraphRecorder",
    "write_animation", "Snapshot", "snapshot", "render_frames", "atomic_write", "close_figure",
    "neuron_positions", "MODULE_COLORS", "plot_pruning_frontier", "plot_embedding_pairs",
    "plot_embedding_heatmap", "plot_residual_vs_weight", "report", "Report",
    "POSITIVE_COLOR", "NEGATIVE_COLOR", "NEURON_COLOR", "MAX_LINEWIDTH", "normalized_weights",
    "weight_colors", "weight_linewidths", "weight_collection", "keep_mask",
]
