"""Neurons that carry a quantity (App. B.3, Fig. 7), token embeddings (Figs. 5 and 6), and the
in-context transformer's residual stream against the hidden weight ``w`` (Fig. 7 right).

Activations come from the module's probes (``wiring.probes``: ``hidden`` for BioMLP,
``residual_stream`` for BioTransformer); for other modules record them with hooks and pass
arrays. The pictures of these views live in :mod:`bimt.viz.analysis`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..models.wiring import wiring_of
from ..core.spec import PermutationSpec, tensor
from .graph import network

__all__ = ["activations", "neuron_correlation", "best_neuron", "embedding_matrix",
           "embedding_name", "embedding_group", "in_context_weights", "residual_vs_weight"]

def _as_array(x, what: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def activations(model, x) -> dict[str, np.ndarray]:
    """``{group: (N, n) array}`` from ``model.hidden(x)`` (one entry per group, in spec order),
    run without gradients; the activations :func:`neuron_correlation` expects."""
    wiring = wiring_of(model)
    spec = wiring.spec
    with torch.no_grad():
        layers = wiring.probe("hidden", x)
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
def embedding_name(spec: PermutationSpec, name: str | None) -> str:
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
    module, spec = network(model)
    name = embedding_name(spec, name)
    axes = spec.axes[name]
    dims = [d for d, g in enumerate(axes) if g is not None]
    e = tensor(module, name).detach().to("cpu", torch.float64).numpy()
    e = np.moveaxis(e, dims[0], -1)
    e = e.reshape(-1, e.shape[-1])
    if normalize:
        top = np.abs(e).max(axis=0)
        e = np.divide(e, top, out=np.zeros_like(e), where=top > 0)
    return e


def embedding_group(spec: PermutationSpec, name: str) -> str:
    return next(g for g in spec.axes[name] if g is not None)


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
    with torch.no_grad():
        streams = wiring_of(model).probe("residual_stream", torch.as_tensor(X))
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


