"""bimt.ConnectionCost: value and total against a brute-force loop over every entry, the
direct gradient against autograd, and the placement matrix against real permutations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bimt
from bimt import ConnectionCost
from bimt.core import geometry
from conftest import build, mlp_configs, ref_cost


def _layouts(cfg):
    return [cfg["layout"]] * len(cfg["widths"]) if isinstance(cfg["layout"], str) else cfg["layout"]


def _ref(model, cfg):
    return ref_cost(model, _layouts(cfg), cfg["A"], cfg["y_star"], cfg["p"], cfg["bias_cost"],
                    cfg["reduction"], cfg["last_distance_free"])


@settings(max_examples=80, deadline=None)
@given(cfg=mlp_configs(max_width=6))
def test_cost_matches_brute_force(cfg):
    model = build(cfg)
    ref = _ref(model, cfg)
    assert model.wiring.connection_cost.total(model) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    value = model.cost()
    assert value.dtype == torch.float32 and value.requires_grad
    assert float(value.detach()) == pytest.approx(ref, rel=1e-5, abs=1e-6)


# MNIST-like (small): grids of pixels and hidden neurons, a ring of outputs, frozen pixels,
# distance-free last layer, per-tensor mean; and a folded token model (modular addition).
EXPLICIT = {
    "mnist_like": dict(widths=[16, 9, 9, 4], layout=["grid", "grid", "grid", "ring"], A=2.0,
                       y_star=0.5, reduction="mean", freeze_inputs=True, last_distance_free=True,
                       p=1.0, bias_cost=True),
    "mnist_like_l2_sum": dict(widths=[16, 9, 4], layout=["grid", "grid", "ring"], A=1.5,
                              y_star=0.3, reduction="sum", p=2.0, bias_cost=True,
                              last_distance_free=False),
    "tokens": dict(widths=[8, 5, 6], vocab_size=6, n_tokens=2, A=2.0, y_star=0.5,
                   reduction="mean", layout="line", p=1.0, bias_cost=True,
                   last_distance_free=False),
    "tokens3_grid_sum": dict(widths=[12, 9, 3], vocab_size=5, n_tokens=3, A=1.0, y_star=0.2,
                             reduction="sum", layout=["grid", "grid", "line"], p=1.0,
                             bias_cost=True, last_distance_free=False),
    "no_bias": dict(widths=[3, 4, 2], bias=False, A=1.0, y_star=1.0, reduction="sum",
                    layout="line", p=1.0, bias_cost=True, last_distance_free=False),
    "bias_free_cost": dict(widths=[3, 4, 2], A=0.7, y_star=1.3, reduction="sum",
                           layout="line", p=1.0, bias_cost=False, last_distance_free=False),
    "custom_coords": dict(widths=[3, 2], layout=[[[0.0, 1.0], [0.2, 0.2], [0.9, 0.1]],
                                                 [[0.5], [2.0]]],
                          A=1.0, y_star=1.0, reduction="sum", p=2.0, bias_cost=True,
                          last_distance_free=False),
}


@pytest.mark.parametrize("name", list(EXPLICIT))
def test_cost_matches_brute_force_explicit(name):
    cfg = EXPLICIT[name]
    model = build(cfg)
    ref = _ref(model, cfg)
    assert model.wiring.connection_cost.total(model) == pytest.approx(ref, rel=1e-10)
    assert float(model.cost().detach()) == pytest.approx(ref, rel=1e-5)
    # the paper's L1 formula, written out for the first weight of the MNIST-like model
    if name == "mnist_like":
        W = model.linears[0].weight.detach().double()
        px, hid = geometry.grid(16), geometry.grid(9)
        d = 2.0 * np.abs(hid[:, None, :] - px[None, :, :]).sum(2) + 0.5
        first = float((W.abs() * torch.from_numpy(d)).mean())
        rest = ref - first
        assert rest > 0
        cost = ConnectionCost(model.spec, A=2.0, y_star=0.5, reduction="mean",
                              distance_free=["linears.2.weight"])
        assert cost.total(model) == pytest.approx(ref, rel=1e-10)


def test_mean_is_per_tensor_mean_summed():
    model = build(EXPLICIT["tokens"])
    s = ConnectionCost(model.spec, A=1.0, y_star=0.5, reduction="sum")
    m = ConnectionCost(model.spec, A=1.0, y_star=0.5, reduction="mean")
    one = {n: ConnectionCost(bimt.PermutationSpec(model.spec.groups, model.spec.axes, {n: k}),
                             A=1.0, y_star=0.5) for n, k in model.spec.charges.items()}
    assert s.total(model) == pytest.approx(sum(c.total(model) for c in one.values()))
    assert m.total(model) == pytest.approx(
        sum(c.total(model) / model.get_parameter(n).numel() for n, c in one.items()))


def test_a_zero_is_plain_l1():
    model = build(dict(widths=[4, 5, 3], A=0.0, y_star=1.0))
    l1 = sum(float(p.detach().double().abs().sum()) for p in model.parameters())
    assert model.wiring.connection_cost.total(model) == pytest.approx(l1, rel=1e-10)


# -- gradient ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(cfg=mlp_configs(max_width=6), lam=st.sampled_from([1e-3, 0.1, 2.0]))
def test_add_grad_matches_autograd(cfg, lam):
    model = build(cfg)
    cost = model.wiring.connection_cost
    params = dict(model.named_parameters())
    assert all((p != 0).all() for p in params.values())  # away from the kink of |x|
    (lam * cost.value(model)).backward()
    expected = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    cost.add_grad_(model, lam)
    for n, p in params.items():
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, expected[n], rtol=1e-5, atol=1e-7, msg=n)
    # adds to an existing gradient rather than overwriting it
    cost.add_grad_(model, lam)
    for n, p in params.items():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, 2 * expected[n], rtol=1e-5, atol=1e-7)


def test_add_grad_skips_tensors_that_do_not_require_grad():
    model = build(dict(widths=[3, 4, 2], vocab_size=None))
    model.linears[0].weight.requires_grad_(False)
    cost = model.wiring.connection_cost
    cost.value(model).backward()
    assert model.linears[0].weight.grad is None
    expected = model.linears[1].weight.grad.clone()
    model.zero_grad(set_to_none=True)
    cost.add_grad_(model, 1.0)
    assert model.linears[0].weight.grad is None
    torch.testing.assert_close(model.linears[1].weight.grad, expected)


def test_add_grad_lambda_zero_is_noop():
    model = build(dict(widths=[3, 4, 2]))
    model.wiring.connection_cost.add_grad_(model, 0.0)
    assert all(p.grad is None for p in model.parameters())


# -- placement matrix --------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(cfg=mlp_configs(max_width=7), data=st.data())
def test_placement_matrix_predicts_permutation_delta(cfg, data):
    model = build(cfg)
    cost = model.wiring.connection_cost
    g = data.draw(st.sampled_from(list(model.spec.groups)))
    n = model.spec.groups[g].size
    perm = np.array(data.draw(st.permutations(list(range(n)))), dtype=int)
    C = cost.placement_matrix(model, g)
    assert C.shape == (n, n)
    before = cost.total(model)
    bimt.apply_permutation(model, model.spec, g, perm)
    after = cost.total(model)
    new_pos = np.argsort(perm)  # neuron from old slot j now sits at slot new_pos[j]
    predicted = C[np.arange(n), new_pos].sum() - np.trace(C)
    assert after - before == pytest.approx(predicted, rel=1e-9, abs=1e-9 * max(1.0, abs(before)))


def test_placement_matrix_recurrent_weight_linearised():
    # a recurrent weight's placement cost is quadratic; the matrix holds its linearisation
    # (neuron j at slot p, every other neuron in place; see tests/test_rnn.py)
    groups = {"h": bimt.Group("h", geometry.line(3))}
    spec = bimt.PermutationSpec(groups, {"w": ("h", "h")}, {"w": "weight"})
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.randn(3, 3))
    cost = ConnectionCost(spec, A=1.0, y_star=0.0)
    C = cost.placement_matrix(module, "h")
    W = module.w.detach().abs().double().numpy()
    D = cost.distance(module, "w")
    F = W + W.T
    for j in range(3):
        for p in range(3):
            own = sum(F[j, c] * D[p, c] for c in range(3) if c != j) + W[j, j] * D[p, p]
            assert C[j, p] == pytest.approx(own)
    assert np.all(cost.placement_matrix(module, "h", recurrent=False) == 0)


def test_importance_is_summed_abs_weights_with_folds():
    model = build(EXPLICIT["tokens"])  # 2 tokens x 4 slots -> 5 -> 6
    cost = model.wiring.connection_cost
    W0, W1 = model.linears[0].weight.detach().abs(), model.linears[1].weight.detach().abs()
    E = model.embedding.detach().abs()
    s0 = E.sum(0) + W0[:, :4].sum(0) + W0[:, 4:].sum(0)
    np.testing.assert_allclose(cost.importance(model, "layer0"), s0.double().numpy(), rtol=1e-6)
    s1 = W0.sum(1) + W1.sum(0)
    np.testing.assert_allclose(cost.importance(model, "layer1"), s1.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(cost.importance(model, "layer2"), W1.sum(1).double().numpy(),
                               rtol=1e-6)


# -- bad inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["A", "y_star"])
@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("nan"), float("inf")])
def test_negative_or_nonfinite_settings_raise(what, bad):
    model = build(dict(widths=[3, 2]))
    with pytest.raises(ValueError, match=rf"{what} must be a finite number >= 0, got {bad}"):
        ConnectionCost(model.spec, **{what: bad})
    with pytest.raises(ValueError, match=rf"{what} must be .* got {bad}"):
        bimt.BioMLP([3, 2], **{what: bad})


@pytest.mark.parametrize("bad", [0.5, 0.0, -2.0, float("nan")])
def test_bad_norm_raises(bad):
    model = build(dict(widths=[3, 2]))
    with pytest.raises(ValueError, match=rf"p must be .*got {bad}"):
        ConnectionCost(model.spec, p=bad)


def test_bad_reduction_and_distance_free():
    model = build(dict(widths=[3, 2]))
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        ConnectionCost(model.spec, reduction="max")
    with pytest.raises(ValueError, match=r"distance_free names \['linears.7.weight'\]"):
        ConnectionCost(model.spec, distance_free=["linears.7.weight"])
