"""The placement matrix's fast path (groups on lines, L1: prefix sums) against the general
matrix product, on random groups: the whole matrix, rows, columns, the diagonal and per-neuron
values agree to float64 rounding; greedy passes read from it make the same moves."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bimt
import bimt.core.cost
import bimt.core.placement
from bimt import ConnectionCost, Group, PermutationSpec
from bimt.core.placement import Placement
from bimt.core.swap.greedy import greedy_moves


@st.composite
def random_groups(draw):
    """A group ``g`` joined to 1-3 other groups by weights in both directions, some folded, on
    lines (sorted, or arbitrary positions with ties), plus an optional bias and embedding."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n = draw(st.integers(1, 9))

    def coords(size):
        kind = draw(st.sampled_from(["line", "random", "ties"]))
        if kind == "line":
            return (np.arange(size) + 0.5) / size
        if kind == "ties":
            return rng.integers(0, 3, size) / 2.0
        return rng.uniform(-1.0, 2.0, size)

    groups = [Group("g", coords(n), heads=draw(st.sampled_from([h for h in (1, 2, 3) if n % h == 0])))]
    axes, charges, tensors = {}, {}, {}
    for i in range(draw(st.integers(1, 3))):
        m = draw(st.integers(1, 8))
        groups.append(Group(f"o{i}", coords(m)))
        for name, shape, ax in [
            (f"in{i}", (n * draw(st.integers(1, 3)), m * draw(st.integers(1, 2))), ("g", f"o{i}")),
            (f"out{i}", (m * draw(st.integers(1, 2)), n * draw(st.integers(1, 3))), (f"o{i}", "g")),
        ]:
            if draw(st.booleans()) or i == 0:
                tensors[name] = torch.from_numpy(rng.normal(size=shape)).to(
                    draw(st.sampled_from([torch.float32, torch.float64])))
                axes[name], charges[name] = ax, "weight"
    if draw(st.booleans()):
        tensors["bias"] = torch.randn(n, dtype=torch.float64)
        axes["bias"], charges["bias"] = ("g",), "bias"
    if draw(st.booleans()):
        tensors["emb"] = torch.randn(4, n, dtype=torch.float64)
        axes["emb"], charges["emb"] = (None, "g"), "embedding"
    spec = PermutationSpec(groups, axes, charges)
    cost = ConnectionCost(spec, A=draw(st.sampled_from([0.0, 0.7, 2.0])),
                          y_star=draw(st.sampled_from([0.0, 0.5, 1.0])),
                          reduction=draw(st.sampled_from(["sum", "mean"])))
    return spec, cost, tensors


@pytest.fixture(autouse=True)
def line_path_for_every_size(monkeypatch):
    """These tests' groups are small; make them take the line path that big groups take."""
    monkeypatch.setattr(bimt.core.cost, "LINE_PATH_MIN_WORK", 0)


def test_small_groups_take_the_product_and_big_ones_the_line_path(monkeypatch):
    monkeypatch.undo()  # the real threshold
    line = PermutationSpec([Group("g", np.linspace(0, 1, 8)), Group("o", np.linspace(0, 1, 4))],
                           {"w": ("g", "o")}, {"w": "weight"})
    small = ConnectionCost(line, A=1.0).placement({"w": torch.randn(8, 4)}, "g")
    assert not small.lines and small.dense is not None
    n = 512  # 512 * 512 * 64 multiply-adds: past the threshold
    big_spec = PermutationSpec([Group("g", np.linspace(0, 1, n)), Group("o", np.linspace(0, 1, 64))],
                               {"w": ("g", "o")}, {"w": "weight"})
    assert n * n * 64 >= bimt.core.cost.LINE_PATH_MIN_WORK
    big = ConnectionCost(big_spec, A=1.0).placement({"w": torch.randn(n, 64)}, "g")
    assert big.lines and big.dense is None


@pytest.mark.parametrize("chunk", [1 << 16, 17])
@settings(max_examples=150, deadline=None)
@given(case=random_groups(), data=st.data())
def test_fast_path_agrees_with_the_matrix_product(chunk, case, data):
    """``chunk``: entries per piece the sums are built in; 17 splits these small groups into many
    pieces, as a big group is split, so every way a piece meets the cuts is met."""
    real = bimt.core.placement._CHUNK
    bimt.core.placement._CHUNK = chunk
    try:
        _fast_path_agrees(*case, data)
    finally:
        bimt.core.placement._CHUNK = real


def _fast_path_agrees(spec, cost, tensors, data):
    n = spec.groups["g"].size
    fast = cost.placement(tensors, "g")
    assert fast.lines and fast.dense is None  # every tensor took the line path
    C = cost.placement_matrix(tensors, "g", fast=False)  # the general product per tensor
    scale = max(1.0, float(np.abs(C).max()))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)
    close(fast.matrix(), C)
    close(cost.placement_matrix(tensors, "g"), C)
    js = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))
    ps = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))
    close(fast.rows(js), C[js])
    close(fast.columns(ps), C[:, ps])
    close(fast.diagonal(), np.diagonal(C))
    P = np.array(data.draw(st.lists(st.lists(st.integers(0, n - 1), min_size=2, max_size=2),
                                    min_size=len(js), max_size=len(js))))
    close(fast.values(js, P), C[np.array(js)[:, None], P])
    assert fast.max() == pytest.approx(float(np.abs(C).max()), rel=1e-12, abs=1e-12 * scale)
    # the paper's importance, read off the same sums (sum reduction only)
    if cost.reduction == "sum":
        np.testing.assert_allclose(fast.importance, spec.importance(tensors, "g"), rtol=1e-12,
                                   atol=1e-12)
    # greedy from the lazy placement moves exactly as greedy from the full matrix
    score = spec.importance(tensors, "g")
    heads = spec.groups["g"].heads
    top_k = data.draw(st.sampled_from([1, 3, None]))
    pos_fast, swaps_fast, delta = greedy_moves(fast, score, top_k, heads)
    pos_full, swaps_full, delta_full = greedy_moves(Placement.of(C), score, top_k, heads)
    assert np.array_equal(pos_fast, pos_full) and swaps_fast == swaps_full
    assert delta == pytest.approx(C[np.arange(n), pos_full].sum() - np.trace(C), abs=1e-9 * scale)
    assert delta <= 1e-9 * scale


def test_grids_and_other_norms_keep_the_product():
    groups = [Group("g", np.random.default_rng(0).uniform(size=(4, 2))), Group("o", [[0.1], [0.9]])]
    spec = PermutationSpec(groups, {"w": ("g", "o")}, {"w": "weight"})
    tensors = {"w": torch.randn(4, 2)}
    assert not ConnectionCost(spec, A=1.0).placement(tensors, "g").lines  # a grid group
    line = PermutationSpec([Group("g", [0.2, 0.4]), Group("o", [0.1, 0.9])], {"w": ("g", "o")},
                           {"w": "weight"})
    t = {"w": torch.randn(2, 2)}
    assert not ConnectionCost(line, A=1.0, p=2.0).placement(t, "g").lines  # L2
    assert ConnectionCost(line, A=1.0).placement(t, "g").lines


@settings(max_examples=100, deadline=None)
@given(case=random_groups(), data=st.data())
def test_float32_sums_agree_to_their_rounding_and_greedy_never_raises_the_cost(case, data):
    """``float32=True``: float32 weights summed in float32 give the float64 matrix to about
    1e-6 of its size, and greedy moves read from them (with the float32 tolerance) never raise
    the cost the float64 matrix gives."""
    spec, cost, tensors = case
    tensors = {k: v.float() if v.dim() == 2 else v for k, v in tensors.items()}
    n = spec.groups["g"].size
    single = cost.placement(tensors, "g", float32=True)
    assert single.single == any(v.dim() == 2 and k.startswith(("in", "out"))
                                for k, v in tensors.items())
    C = cost.placement_matrix(tensors, "g", fast=False)
    scale = max(1.0, float(np.abs(C).max()))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
    close(single.diagonal(), np.diagonal(C))
    ps = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))
    close(single.columns(ps), C[:, ps])
    close(single.rows(ps), C[ps])
    score = spec.importance(tensors, "g")
    pos, _, _ = greedy_moves(single, score, data.draw(st.sampled_from([1, 3, None])),
                             spec.groups["g"].heads)
    assert C[np.arange(n), pos].sum() <= np.trace(C) + 1e-9 * scale
