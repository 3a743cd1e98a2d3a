"""Interventions (the paper's App. C and Fig. 5): zero chosen entries or knock out neurons,
temporarily, and tabulate a metric with each module knocked out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..core.spec import PermutationSpec, tensor
from .graph import Neuron, module_slots, network
from .prune import evaluate_once

__all__ = ["intervene", "knockout_table"]

def _knockout_plan(spec: PermutationSpec, module: nn.Module, group: str, slots: list[int]):
    """``[(tensor name, dim, slots)]``: the entries to zero to silence ``slots`` of ``group``."""
    if group not in spec.groups:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(spec.groups)}")
    n = spec.groups[group].size
    for s in slots:
        if not 0 <= s < n:
            raise ValueError(f"slot {s} is out of range for group {group!r} ({n} neurons)")
    outgoing = [(name, spec.weight_dims(name)[1]) for name in spec.weights()
                if spec.weight_groups(name)[1] == group]
    if outgoing:
        return [(name, dim, slots) for name, dim in outgoing]
    # an output (interface) neuron: silence what flows in, bias included
    incoming = [(name, spec.weight_dims(name)[0]) for name in spec.weights()
                if spec.weight_groups(name)[0] == group]
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
    module, spec = network(model)
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
                idx = spec.slot_index(g, sl, t.shape[dim]).to(t.device)
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
    module, spec = network(model)
    rows = [{"module": baseline, "knocked_out": {}, "n_neurons": 0,
             "metric": evaluate_once(evaluate, module)}]
    for name, neurons in modules.items():
        slots = module_slots(neurons)
        with intervene((module, spec), knock_out=slots):
            value = evaluate_once(evaluate, module)
        rows.append({"module": str(name), "knocked_out": slots,
                     "n_neurons": sum(len(s) for s in slots.values()), "metric": value})
    return rows


