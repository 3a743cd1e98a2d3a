"""BioRNN: a recurrent network whose hidden units have positions (Growing Brains, seRNN).

Three groups: ``input`` (a line), ``hidden`` (a line, a grid, seRNN's 5x5x4 box or given
coordinates) and ``output`` (a line). The hidden-to-hidden matrix has both axes in ``hidden``,
so one permutation moves its rows and columns together and its cost is charged within the
group's own layout (see :mod:`bimt.recurrent`). Input and readout layers swap like an MLP's:
order buffers keep the interface fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core.checks import positive_int
from ..core.cost import CostSettings
from ..core.geometry import grid, grid3d
from ..core.geometry import layout as make_layout
from ..core.spec import Group, PermutationSpec
from .mlp import make_activation
from .drawing import Drawing, register_view, spec_drawing
from .wiring import Wiring, WiredModule, restore_order

__all__ = ["BioRNN", "CELLS"]

#: ``elman``: one tanh/ReLU recurrence; ``gru``: `torch.nn.GRU`, its three gates folds of a unit.
CELLS = ("elman", "gru")


def hidden_coords(layout, n: int) -> np.ndarray:
    """Coordinates of ``n`` hidden units: a layout name, ``(rows, cols)``, ``(a, b, c)`` or an
    ``(n, d)`` array."""
    if isinstance(layout, tuple) and all(isinstance(v, int) for v in layout):
        if len(layout) not in (2, 3) or int(np.prod(layout)) != n:
            raise ValueError(
                f"hidden layout {layout} must be (rows, cols) or (a, b, c) with product {n} "
                "(the number of hidden units)"
            )
        return grid(layout) if len(layout) == 2 else grid3d(layout)
    return make_layout(layout, n)


class BioRNN(WiredModule):
    """An Elman (or GRU) network on batch-first sequences: ``(B, T, d_in) -> (B, T, d_out)``.

    Parameters
    ----------
    d_in, hidden, d_out : inputs, hidden units, outputs (per time step).
    nonlinearity : the Elman cell's activation (``tanh`` default, ``relu``, ``silu``, ...).
    cell : ``elman`` (``h_t = f(W_in x_t + W_hh h_{t-1} + b)``) or ``gru`` (``torch.nn.GRU``; its
        three gates are folds sharing a hidden unit's position).
    layout : the hidden units' positions: ``line``, ``grid``, ``grid3d``, ``(rows, cols)``,
        ``(a, b, c)`` (seRNN: ``(5, 5, 4)``) or an ``(hidden, d)`` array. Inputs and outputs
        sit on lines.
    freeze_inputs, freeze_outputs : those neurons never move.
    settings, **cost_settings : the connection cost's settings (:class:`bimt.CostSettings`, its
        defaults when omitted), with any of its fields given as keywords on top (``A=2.0``).

    Its wiring (``model.bimt``) draws it in the ``rnn`` view: the hidden units at their positions,
    recurrent weights as arcs (:func:`bimt.viz.plot`).
    """

    def __init__(
        self,
        d_in: int,
        hidden: int,
        d_out: int,
        nonlinearity="tanh",
        cell: str = "elman",
        layout="line",
        bias: bool = True,
        freeze_inputs: bool = False,
        freeze_outputs: bool = False,
        settings: CostSettings | None = None,
        input_labels: Sequence[str] | None = None,
        output_labels: Sequence[str] | None = None,
        **cost_settings,
    ):
        super().__init__()
        for what, v in (("d_in", d_in), ("hidden", hidden), ("d_out", d_out)):
            positive_int(v, what)
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; allowed: {', '.join(CELLS)}")
        self.d_in, self.n_hidden, self.d_out, self.cell_type = d_in, hidden, d_out, cell
        groups = {
            "input": Group("input", make_layout("line", d_in), frozen=freeze_inputs),
            "hidden": Group("hidden", hidden_coords(layout, hidden)),
            "output": Group("output", make_layout("line", d_out), frozen=freeze_outputs),
        }
        axes = {"input_order": ("input",), "output_order": ("output",)}
        charges = {}
        if cell == "elman":
            self.activation = make_activation(nonlinearity)
            self.input_layer = nn.Linear(d_in, hidden, bias=bias)
            self.recurrent = nn.Linear(hidden, hidden, bias=False)
            w_in, w_hh, biases = "input_layer.weight", "recurrent.weight", ["input_layer.bias"]
        else:
            if nonlinearity != "tanh":
                raise ValueError(f"a GRU has fixed gates; nonlinearity={nonlinearity!r} applies "
                                 "to cell='elman' only")
            self.cell = nn.GRU(d_in, hidden, batch_first=True, bias=bias)
            w_in, w_hh, biases = "cell.weight_ih_l0", "cell.weight_hh_l0", [
                "cell.bias_ih_l0", "cell.bias_hh_l0"]
        self.readout = nn.Linear(hidden, d_out, bias=bias)
        axes[w_in], axes[w_hh], axes["readout.weight"] = (
            ("hidden", "input"), ("hidden", "hidden"), ("output", "hidden"))
        charges.update({w_in: "weight", w_hh: "weight", "readout.weight": "weight"})
        if bias:
            for b in biases:
                axes[b], charges[b] = ("hidden",), "bias"
            axes["readout.bias"], charges["readout.bias"] = ("output",), "bias"
        self.register_buffer("input_order", torch.arange(d_in))
        self.register_buffer("output_order", torch.arange(d_out))
        free = []
        if cell == "elman":
            free = [f"activation.{n}" for n, _ in
                    [*self.activation.named_parameters(), *self.activation.named_buffers()]]
        self.spec = PermutationSpec(groups, axes, charges, free=free)
        self.recurrent_weight = w_hh
        settings = CostSettings.of(settings, **cost_settings)
        self.bimt = Wiring(self, self.spec, settings, view="rnn", input_labels=input_labels,
                           output_labels=output_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return restore_order(self.readout(self.hidden_states(x)), self.output_order)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activity ``(B, T, hidden)`` in slot order."""
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"BioRNN expects batch-first sequences (batch, time, {self.d_in}), got shape "
                f"{tuple(x.shape)}"
            )
        x = x.index_select(-1, self.input_order)
        if self.cell_type == "gru":
            return self.cell(x)[0]
        drive = self.input_layer(x)
        h = drive.new_zeros(x.shape[0], self.n_hidden)
        states = []
        for t in range(x.shape[1]):
            h = self.activation(drive[:, t] + self.recurrent(h))
            states.append(h)
        return torch.stack(states, 1)

    def extra_repr(self) -> str:
        return f"{self.cell_type}, {self.d_in} -> {self.n_hidden} -> {self.d_out}"


def _recurrent_picture(wiring) -> Drawing:
    """Inputs below, the hidden units at their positions (a grid as a grid), their recurrent
    weights inside the row, outputs above; gates (GRU folds) summed per unit."""
    drawing = spec_drawing(wiring, folds=False)
    c = wiring.spec.groups["hidden"].coords
    for row in drawing.rows:
        if row.group == "hidden" and c.shape[1] >= 2:
            row.spatial = True
            if c.shape[1] >= 3:  # a box: its layers side by side
                k = np.searchsorted(np.unique(c[:, 2]), c[:, 2])
                row.xy = np.stack([(c[:, 0] + 1.15 * k) / (1.15 * k.max() + 1), c[:, 1]], 1)
    return drawing


register_view("rnn", _recurrent_picture)
