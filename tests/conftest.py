"""Shared helpers for the core-engine tests: hypothesis strategies for random BioMLPs, and
reference (brute-force, Python-loop) positions, distances and connection costs written
independently of the library.

Import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

import bimt

torch.set_num_threads(1)

# The default run draws the same examples every time (a test run is reproducible, and CI does not
# fail on an example no one saw before); HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("reproducible", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

SQUARES = (4, 9, 16)


# -- random models -----------------------------------------------------------------------------
@st.composite
def mlp_configs(draw, max_width: int = 9, max_depth: int = 3, tokens=None, grid=None):
    """Keyword arguments for a random :class:`bimt.BioMLP` (plus ``seed`` and ``top_k``)."""
    depth = draw(st.integers(1, max_depth))  # number of weight layers
    use_grid = draw(st.booleans()) if grid is None else grid
    use_tokens = draw(st.booleans()) if tokens is None else tokens
    width = st.sampled_from(SQUARES) if use_grid else st.integers(1, max_width)
    widths = [draw(width) for _ in range(depth + 1)]
    kw = dict(
        widths=widths,
        layout="grid" if use_grid else "line",
        activation=draw(st.sampled_from(["silu", "tanh", "relu", "identity"])),
        bias=draw(st.booleans()),
        freeze_inputs=draw(st.booleans()),
        freeze_outputs=draw(st.booleans()),
        A=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        y_star=draw(st.sampled_from([0.1, 0.5, 1.0])),
        p=draw(st.sampled_from([1.0, 2.0])),
        reduction=draw(st.sampled_from(["sum", "mean"])),
        bias_cost=draw(st.booleans()),
        last_distance_free=draw(st.booleans()),
    )
    if use_tokens:
        n_tokens = draw(st.integers(1, 3))
        slots = widths[0] if use_grid else draw(st.integers(1, 5))
        widths[0] = n_tokens * slots
        kw.update(vocab_size=draw(st.integers(2, 7)), n_tokens=n_tokens)
    kw["seed"] = draw(st.integers(0, 2**16))
    kw["top_k"] = draw(st.one_of(st.none(), st.integers(1, 6)))
    return kw


COST_KEYS = ("A", "y_star", "p", "reduction", "bias_cost", "last_distance_free")


def build(cfg: dict) -> bimt.BioMLP:
    """A BioMLP from a config of :func:`mlp_configs` (``seed`` and ``top_k`` are dropped; the
    cost keys become the model's :class:`bimt.CostSettings`)."""
    kw = {k: v for k, v in cfg.items() if k not in ("seed", "top_k") + COST_KEYS}
    torch.manual_seed(cfg.get("seed", 0))
    settings = bimt.CostSettings(
        A=cfg.get("A", 1.0), y_star=cfg.get("y_star", 1.0), p=cfg.get("p", 1.0),
        reduction=cfg.get("reduction", "sum"), bias=cfg.get("bias_cost", True),
        distance_free=["last"] if cfg.get("last_distance_free") else [])
    return bimt.BioMLP(**kw, settings=settings)


def inputs(model: bimt.BioMLP, batch: int = 6, seed: int = 0) -> torch.Tensor:
    """Random inputs in the model's interface order: floats, or integer token ids."""
    g = torch.Generator().manual_seed(seed)
    if model.embedding is not None:
        return torch.randint(0, model.embedding.shape[0], (batch, model.n_tokens), generator=g)
    return torch.randn(batch, model.widths[0], generator=g)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def apply_report(module, spec, report, optimizer=None) -> None:
    """Apply a swap report's permutations to another copy of the model, group by group."""
    for g, perm in report.permutations.items():
        bimt.apply_permutation(module, spec, g, perm, optimizer)


# -- reference geometry (independent of bimt.core.geometry) ----------------------------------------
def ref_coords(kind, n: int) -> list[tuple[float, ...]]:
    """Unit positions of a layer: ``n`` neurons at ``(j + 0.5) / n`` on a line, grids the outer
    product of that line, rings of radius 1/4 around (1/2, 1/2) (README, "Geometry")."""
    if kind == "line":
        return [((j + 0.5) / n,) for j in range(n)]
    if kind == "grid":
        side = math.isqrt(n)
        assert side * side == n
        # neuron r * side + c sits at x = column, y = row (row-major, as images are flattened)
        return [((c + 0.5) / side, (r + 0.5) / side) for r in range(side) for c in range(side)]
    if kind == "ring":
        return [
            (0.5 + 0.25 * math.cos(2 * math.pi * k / n), 0.5 + 0.25 * math.sin(2 * math.pi * k / n))
            for k in range(n)
        ]
    return [tuple(float(v) for v in np.atleast_1d(row)) for row in np.asarray(kind, float)]


def ref_distance(a, b, A: float, y_star: float, p: float) -> float:
    """Length of one connection: the p-norm of (A * dx, y_star), lower dims padded with 0.5."""
    d = max(len(a), len(b))
    a = tuple(a) + (0.5,) * (d - len(a))
    b = tuple(b) + (0.5,) * (d - len(b))
    parts = [A * abs(u - v) for u, v in zip(a, b)] + [y_star]
    if p == 1:
        return sum(parts)
    return sum(x**p for x in parts) ** (1.0 / p)


def ref_cost(model: bimt.BioMLP, layouts, A, y_star, p=1.0, bias=True, reduction="sum",
             distance_free_last=False) -> float:
    """The connection cost of a BioMLP by explicit Python loops over every entry.

    ``layouts`` gives one layout per neuron layer (the input entry places the embedding slots
    for token models). Folded inputs: input neuron ``f * n + s`` sits at slot ``s``.
    """
    widths = list(model.widths)
    slots = list(widths)
    if model.embedding is not None:
        slots[0] = widths[0] // model.n_tokens
    coords = [ref_coords(kind, n) for kind, n in zip(layouts, slots)]
    total = 0.0
    last = len(model.linears) - 1
    for i, lin in enumerate(model.linears):
        W = lin.weight.detach().double().tolist()
        term = 0.0
        for k in range(len(W)):  # output neuron
            for j in range(len(W[k])):  # input neuron
                if i == last and distance_free_last:
                    length = y_star
                else:
                    length = ref_distance(coords[i][j % slots[i]], coords[i + 1][k], A, y_star, p)
                term += abs(W[k][j]) * length
        if reduction == "mean":
            term /= len(W) * len(W[0])
        total += term
        if lin.bias is not None and bias:
            b = lin.bias.detach().double().tolist()
            term = sum(abs(v) * y_star for v in b)
            total += term / len(b) if reduction == "mean" else term
    if model.embedding is not None:
        E = model.embedding.detach().double().tolist()
        term = sum(abs(v) * y_star for row in E for v in row)
        total += term / (len(E) * len(E[0])) if reduction == "mean" else term
    return total


def need_module(module: str, extra: str):
    """Import an optional dependency, or skip the test (naming the extra that installs it);
    with ``BIMT_REQUIRE_EXTRAS`` set (``.ci/run``) a missing one fails instead."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("BIMT_REQUIRE_EXTRAS"):
            pytest.fail(f"BIMT_REQUIRE_EXTRAS is set but {module} is not installed")
        pytest.skip(f"needs {module}: pip install -e '.[{extra}]'")


def fit_interrupted(monkeypatch, at_pass: int, *args, **kwargs) -> None:
    """``bimt.fit(*args, **kwargs)`` stopped by Ctrl-C (a ``KeyboardInterrupt``) raised at its
    ``at_pass``-th swap pass, as a user's interruption would; the real pass is back afterwards."""
    import bimt.training.loop as loop

    real, calls = loop.swap_pass, []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == at_pass:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "swap_pass", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            bimt.fit(*args, **kwargs)
    finally:
        monkeypatch.setattr(loop, "swap_pass", real)
