"""bimt.core.swap: swap passes never change the function, never raise the cost, reach the same swaps
as the naive reference search, and commute with training when the optimizer state moves too."""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bimt
from bimt import ConnectionCost, Group, PermutationSpec
from bimt.core import geometry
from bimt.core.spec import fold_index
from bimt.core.swap import swap_pass
from conftest import apply_report, build, inputs, mlp_configs, state

ATOL = 1e-5


def _max_diff(a, b):
    return float((a - b).abs().max()) if a.numel() else 0.0


# -- (a) the function never changes -------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(cfg=mlp_configs(), mode=st.sampled_from(["greedy", "exact"]))
def test_swap_pass_keeps_outputs(cfg, mode):
    model = build(cfg)
    x = inputs(model)
    with torch.no_grad():
        y0 = model(x)
    before = copy.deepcopy(model)
    report = model.swap(cfg["top_k"], mode)
    with torch.no_grad():
        y1 = model(x)
    assert y1.dtype == torch.float32
    assert _max_diff(y0, y1) <= ATOL, report

    # the report's permutations, applied to an untouched copy, reproduce every tensor exactly
    assert set(report.permutations) <= set(model.spec.movable_groups())
    replay = copy.deepcopy(before)
    apply_report(replay, replay.spec, report)
    for k, v in state(model).items():
        assert torch.equal(v, state(replay)[k]), k

    # frozen groups did not move: the columns (inputs) / rows (outputs) they index are unchanged
    last = len(model.linears) - 1
    if cfg["freeze_inputs"]:
        assert "layer0" not in report.permutations
        rows = report.permutations.get("layer1", np.arange(model.widths[1]))
        if model.embedding is not None:
            assert torch.equal(model.embedding, before.embedding)
        else:
            assert torch.equal(model.input_order, torch.arange(model.widths[0]))
        assert torch.equal(model.linears[0].weight, before.linears[0].weight[rows])
    if cfg["freeze_outputs"]:
        assert f"layer{last + 1}" not in report.permutations
        assert torch.equal(model.output_order, torch.arange(model.widths[-1]))
        W = before.linears[last].weight
        n = model.spec.groups[f"layer{last}"].size
        perm = torch.as_tensor(report.permutations.get(f"layer{last}", np.arange(n)))
        assert torch.equal(model.linears[last].weight, W[:, fold_index(perm, n, W.shape[1])])
        if model.linears[last].bias is not None:
            assert torch.equal(model.linears[last].bias, before.linears[last].bias)


@pytest.mark.parametrize("mode", ["greedy", "exact"])
def test_swaps_move_input_and_output_neurons_and_keep_interface(mode):
    # every layer wired "crossed" (neuron j to neuron 5 - j): the best placement reverses a
    # layer, so interface neurons must move too
    torch.manual_seed(0)
    model = bimt.BioMLP([6, 6, 6], A=3.0, y_star=0.1)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(0.01)
            lin.weight[torch.arange(6), torch.arange(6).flip(0)] = 1.0
    x = torch.randn(5, 6)
    y0 = model(x).detach()
    report = model.swap(None, mode)
    assert report.cost_after < report.cost_before
    assert {"layer0", "layer2"} & set(report.moved)
    assert not (torch.equal(model.input_order, torch.arange(6))
                and torch.equal(model.output_order, torch.arange(6)))
    assert _max_diff(model(x).detach(), y0) <= ATOL


@pytest.mark.parametrize("mode", ["greedy", "exact"])
def test_a_pass_without_costs_moves_the_same_neurons(mode):
    # costs=False (what training asks) skips reading the totals and nothing else
    torch.manual_seed(3)
    model = bimt.BioMLP([6, 12, 12, 4], A=2.0)
    twin = copy.deepcopy(model)
    with_costs = swap_pass(model, model.spec, model.wiring.connection_cost, 4, mode)
    without = swap_pass(twin, twin.spec, twin.wiring.connection_cost, 4, mode, costs=False)
    assert with_costs.swaps == without.swaps > 0
    assert with_costs.permutations.keys() == without.permutations.keys()
    for g, perm in with_costs.permutations.items():
        assert np.array_equal(perm, without.permutations[g]), g
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert math.isnan(without.cost_before) and math.isnan(without.cost_after)
    assert "cost" not in str(without) and "cost" in str(with_costs)


@settings(max_examples=80, deadline=None)
@given(cfg=mlp_configs(), data=st.data(), via=st.sampled_from(["apply_permutation", "permute"]))
def test_manual_permutations_keep_outputs(cfg, data, via):
    model = build(cfg)
    x = inputs(model)
    y0 = model(x).detach()
    cost0 = model.wiring.connection_cost.total(model)
    for g, group in model.spec.groups.items():
        perm = data.draw(st.permutations(list(range(group.size))))
        if via == "permute":
            model.wiring.permute(g, perm)
        else:
            bimt.apply_permutation(model, model.spec, g, np.array(perm))
    assert _max_diff(model(x).detach(), y0) <= ATOL
    if cfg["A"] == 0:  # without locality, positions cost nothing
        assert model.wiring.connection_cost.total(model) == pytest.approx(cost0, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_big_tensors_are_permuted_in_place_as_index_select_would(dtype):
    """Big tensors take other routes (rows through a kept buffer, columns slice by slice, only
    the moved slices when few move); each gives what ``index_select`` gives, twice in a row
    (the buffer reused)."""
    from bimt.core.swap.core import _permute_

    g = torch.Generator().manual_seed(0)
    for shape in ((700, 400), (300, 900), (5000, 70, 3)):
        t = torch.randn(shape, generator=g, dtype=dtype)
        for dim in (0, 1):
            for moves in (None, None, 3, 1):  # every slice moves (twice), or a few swap places
                index = torch.randperm(t.shape[dim], generator=g)
                if moves is not None:
                    pairs = torch.randperm(t.shape[dim], generator=g)[:2 * moves].view(-1, 2)
                    index = torch.arange(t.shape[dim])
                    index[pairs[:, 0]], index[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
                want = t.index_select(dim, index)
                _permute_(t, dim, index)
                assert torch.equal(t, want)


def test_apply_permutation_rejects_non_permutations():
    model = build(dict(widths=[3, 4, 2]))
    for bad in ([0, 1, 2], [0, 1, 2, 2], [1, 2, 3, 4], [[0, 1], [2, 3]]):
        with pytest.raises(ValueError, match=r"permutation of group 'layer1' must list 0\.\.3"):
            bimt.apply_permutation(model, model.spec, "layer1", bad)


def test_optimizer_state_and_grads_move_with_weights():
    torch.manual_seed(1)
    model = bimt.BioMLP([3, 5, 2])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, 3)
    model(x).pow(2).mean().backward()
    opt.step()
    model(x).pow(2).mean().backward()
    W, b = model.linears[0].weight, model.linears[0].bias
    before = {k: v.clone() for k, v in opt.state[W].items()}
    before_b = {k: v.clone() for k, v in opt.state[b].items()}
    g0 = W.grad.clone()
    perm = [4, 2, 0, 1, 3]
    model.wiring.permute("layer1", perm, optimizer=opt)
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[W][k], before[k][perm])
        assert torch.equal(opt.state[b][k], before_b[k][perm])
    assert torch.equal(opt.state[W]["step"], before["step"])
    assert torch.equal(W.grad, g0[perm])


def test_several_optimizers_and_column_axes():
    torch.manual_seed(2)
    model = bimt.BioMLP([3, 5, 2])
    first, second = model.linears
    adam = torch.optim.AdamW(first.parameters(), lr=1e-2)
    sgd = torch.optim.SGD(second.parameters(), lr=1e-2, momentum=0.9)
    model(torch.randn(8, 3)).pow(2).mean().backward()
    adam.step()
    sgd.step()
    m_adam = adam.state[first.weight]["exp_avg"].clone()
    m_sgd = sgd.state[second.weight]["momentum_buffer"].clone()
    perm = [1, 4, 3, 0, 2]
    bimt.apply_permutation(model, model.spec, "layer1", perm, optimizer=[adam, sgd])
    assert torch.equal(adam.state[first.weight]["exp_avg"], m_adam[perm])
    assert torch.equal(sgd.state[second.weight]["momentum_buffer"], m_sgd[:, perm])


# -- (c) the cost never rises; exact never worse than greedy --------------------------------
@settings(max_examples=120, deadline=None)
@given(cfg=mlp_configs())
def test_greedy_never_raises_cost_and_exact_is_at_least_as_good(cfg):
    model = build(cfg)
    g_model, e_model = copy.deepcopy(model), copy.deepcopy(model)
    tol = 1e-9 * max(1.0, model.wiring.connection_cost.total(model))
    greedy = g_model.swap(cfg["top_k"], "greedy")
    exact = e_model.swap(cfg["top_k"], "exact")
    assert greedy.cost_before == exact.cost_before
    assert greedy.cost_after <= greedy.cost_before + tol
    assert exact.cost_after <= greedy.cost_after + tol
    assert greedy.cost_after == pytest.approx(g_model.wiring.connection_cost.total(g_model))
    # exact is block-coordinate descent (one group at a time), not a global optimum: a later
    # pass may still gain, but never lose
    again = e_model.swap(cfg["top_k"], "exact")
    assert again.cost_after <= again.cost_before + tol


def test_exact_finds_relocations_greedy_cannot():
    strictly_better = 0
    for seed in range(6):
        torch.manual_seed(seed)
        model = bimt.BioMLP([6, 8, 8, 4], A=2.0, y_star=0.2)
        greedy = copy.deepcopy(model).swap(None, "greedy")
        exact = model.swap(None, "exact")
        assert exact.cost_after <= greedy.cost_after + 1e-9
        strictly_better += exact.cost_after < greedy.cost_after - 1e-6
    assert strictly_better > 0


# -- the greedy pass reaches the naive reference search's swaps ------------------------------
def naive_greedy(model, spec, cost, top_k):
    """The paper's reference search: swap, recompute the whole cost, swap back, per candidate.

    Returns ``{group: perm}`` (slot ``s`` holds the neuron that was at slot ``perm[s]`` when the
    pass reached the group), having applied them to ``model``.
    """
    perms = {}
    for g in spec.movable_groups():
        n = spec.groups[g].size
        if n < 2:
            continue
        score = np.zeros(n)  # summed |w| of every weight and embedding touching each neuron
        for name, kind in spec.charges.items():
            if kind == "bias":
                continue
            t = model.get_parameter(name).detach().abs().double()
            for dim, grp in enumerate(spec.axes[name]):
                if grp == g:
                    tt = t.movedim(dim, 0)
                    for row in range(tt.shape[0]):
                        score[row % n] += float(tt[row].sum())
        k = n if top_k is None else min(top_k, n)
        order = np.argsort(-score, kind="stable")[:k]
        slot_of = np.arange(n)  # neuron (by identity = slot at start) -> current slot
        for j in order:
            base = cost.total(model)
            best, best_cost = None, None
            for other in range(n):
                if other == j:
                    continue
                a, b = slot_of[j], slot_of[other]
                swap = np.arange(n)
                swap[a], swap[b] = b, a
                bimt.apply_permutation(model, spec, g, swap)
                c = cost.total(model)
                bimt.apply_permutation(model, spec, g, swap)  # swap back
                if best_cost is None or c < best_cost:
                    best, best_cost = other, c
            if best_cost < base - 1e-12 * max(abs(base), 1.0):
                a, b = slot_of[j], slot_of[best]
                swap = np.arange(n)
                swap[a], swap[b] = b, a
                bimt.apply_permutation(model, spec, g, swap)
                slot_of[j], slot_of[best] = b, a
        perm = np.empty(n, dtype=int)
        perm[slot_of] = np.arange(n)
        perms[g] = perm
    return perms


@settings(max_examples=60, deadline=None)
@given(cfg=mlp_configs(max_width=6, max_depth=3, grid=False))
def test_greedy_matches_naive_reference(cfg):
    model = build(cfg)
    naive_model = copy.deepcopy(model)
    report = model.swap(cfg["top_k"], "greedy")
    perms = naive_greedy(naive_model, naive_model.spec, naive_model.wiring.connection_cost,
                         cfg["top_k"])
    for g, perm in perms.items():
        np.testing.assert_array_equal(report.permutations.get(g, np.arange(len(perm))), perm,
                                      err_msg=g)
    for k, v in state(model).items():
        assert torch.equal(v, state(naive_model)[k]), k
    assert report.cost_after == pytest.approx(naive_model.wiring.connection_cost.total(naive_model),
                                              rel=1e-12)


def test_greedy_matches_naive_reference_mnist_like():
    torch.manual_seed(3)
    model = bimt.BioMLP([16, 9, 9, 4], layout=["grid", "grid", "grid", "ring"], A=2.0,
                        y_star=0.5, reduction="mean", freeze_inputs=True)
    naive_model = copy.deepcopy(model)
    report = model.swap(5, "greedy")
    assert report.swaps > 0
    perms = naive_greedy(naive_model, naive_model.spec, naive_model.wiring.connection_cost, 5)
    for g, perm in perms.items():
        np.testing.assert_array_equal(report.permutations.get(g, np.arange(len(perm))), perm)


# -- groups with heads -------------------------------------------------------------------------
def _head_model(seed, heads=3, d=2):
    torch.manual_seed(seed)
    n = heads * d
    groups = {"in": Group("in", geometry.line(4), frozen=True),
              "h": Group("h", geometry.line(n), heads=heads),
              "out": Group("out", geometry.line(3), frozen=True)}
    spec = PermutationSpec(groups, {"w1": ("h", "in"), "b1": ("h",), "w2": ("out", "h")},
                           {"w1": "weight", "b1": "bias", "w2": "weight"})
    m = torch.nn.Module()
    m.w1 = torch.nn.Parameter(torch.randn(n, 4))
    m.b1 = torch.nn.Parameter(torch.randn(n))
    m.w2 = torch.nn.Parameter(torch.randn(3, n))
    return m, spec


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["greedy", "exact"])
def test_heads_move_as_blocks(seed, mode):
    m, spec = _head_model(seed)
    x = torch.randn(5, 4)
    f = lambda: torch.tanh(x @ m.w1.T + m.b1) @ m.w2.T
    y0 = f().detach()
    cost = ConnectionCost(spec, A=2.0, y_star=0.3)
    report = bimt.swap_pass(m, spec, cost, mode=mode)
    assert report.cost_after <= report.cost_before + 1e-9
    assert _max_diff(f().detach(), y0) <= ATOL
    perm = report.permutations.get("h", np.arange(6))
    # every head's slots hold exactly the neurons of one former head
    for h in range(3):
        assert len({int(v) // 2 for v in perm[2 * h:2 * h + 2]}) == 1


@pytest.mark.parametrize("seed", range(6))
def test_heads_exact_never_worse_than_greedy(seed):
    m, spec = _head_model(seed, heads=2, d=3)
    cost = ConnectionCost(spec, A=2.0, y_star=0.3)
    greedy = bimt.swap_pass(copy.deepcopy(m), spec, cost, mode="greedy")
    exact = bimt.swap_pass(m, spec, cost, mode="exact")
    assert greedy.cost_after <= greedy.cost_before + 1e-9
    assert exact.cost_after <= greedy.cost_after + 1e-9


# -- folds on the output axis (a gated layer: [value; gate] rows share one position) -----------
class Gated(torch.nn.Module):
    """y = W2 (tanh(a) * sigmoid(g)), [a; g] = W1 x + b1: rows j and n + j of W1 are one neuron."""

    def __init__(self, d_in, n, d_out):
        super().__init__()
        self.n = n
        self.w1 = torch.nn.Parameter(torch.randn(2 * n, d_in))
        self.b1 = torch.nn.Parameter(torch.randn(2 * n))
        self.w2 = torch.nn.Parameter(torch.randn(d_out, n))

    def forward(self, x):
        z = x @ self.w1.T + self.b1
        return (torch.tanh(z[..., :self.n]) * torch.sigmoid(z[..., self.n:])) @ self.w2.T

    @staticmethod
    def spec(d_in, n, d_out, layout="line"):
        groups = {"in": Group("in", geometry.layout(layout, d_in)),
                  "h": Group("h", geometry.layout(layout, n)),
                  "out": Group("out", geometry.layout(layout, d_out))}
        return PermutationSpec(groups, {"w1": ("h", "in"), "b1": ("h",), "w2": ("out", "h")},
                               {"w1": "weight", "b1": "bias", "w2": "weight"})


@settings(max_examples=60, deadline=None)
@given(d_in=st.integers(1, 5), n=st.integers(1, 6), d_out=st.integers(1, 4),
       seed=st.integers(0, 999), mode=st.sampled_from(["greedy", "exact"]),
       top_k=st.one_of(st.none(), st.integers(1, 4)))
def test_output_axis_folds(d_in, n, d_out, seed, mode, top_k):
    torch.manual_seed(seed)
    m, spec = Gated(d_in, n, d_out), Gated.spec(d_in, n, d_out)
    cost = ConnectionCost(spec, A=2.0, y_star=0.2)
    x = torch.randn(4, d_in)
    # interface groups have no order buffer here, so only the hidden group may move
    y0 = m(x).detach()
    naive = copy.deepcopy(m)
    report = bimt.swap_pass(m, spec, cost, top_k=top_k, mode=mode, groups=["h"])
    assert _max_diff(m(x).detach(), y0) <= ATOL
    assert report.cost_after <= report.cost_before + 1e-9
    if mode == "greedy":
        spec_h = PermutationSpec({k: Group(k, g.coords, frozen=k != "h")
                                  for k, g in spec.groups.items()}, spec.axes, spec.charges)
        perms = naive_greedy(naive, spec_h, ConnectionCost(spec_h, A=2.0, y_star=0.2), top_k)
        if "h" in perms:
            np.testing.assert_array_equal(report.permutations.get("h", np.arange(n)), perms["h"])
    # the placement matrix predicts a random relocation of the folded group
    perm = np.random.default_rng(seed).permutation(n)
    C, before = cost.placement_matrix(m, "h"), cost.total(m)
    bimt.apply_permutation(m, spec, "h", perm)
    predicted = C[np.arange(n), np.argsort(perm)].sum() - np.trace(C)
    assert cost.total(m) - before == pytest.approx(predicted, abs=1e-9 * max(1.0, before))
    assert _max_diff(m(x).detach(), y0) <= ATOL


# -- (d) swapping commutes with training -------------------------------------------------------
def _train(model, opt, batches, lam, cost, path="autograd"):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if path == "autograd":
            loss = loss + lam * cost.value(model)
        loss.backward()
        if path == "add_grad_":
            cost.add_grad_(model, lam)
        opt.step()


def _commute_setup(seed, tokens):
    torch.manual_seed(seed)
    if tokens:
        model = bimt.BioMLP([6, 7, 5, 4], vocab_size=5, n_tokens=2, A=0.0, y_star=0.5)
        xs = [torch.randint(0, 5, (16, 2)) for _ in range(10)]
    else:
        model = bimt.BioMLP([4, 7, 6, 3], A=0.0, y_star=1.0)
        xs = [torch.rand(16, 4) * 2 - 1 for _ in range(10)]
    batches = [(x, torch.randn(16, model.widths[-1])) for x in xs]
    return model, batches


@pytest.mark.parametrize("tokens, seed, mode, path", [
    (False, 0, "exact", "autograd"), (False, 1, "greedy", "add_grad_"),
    (True, 0, "greedy", "autograd"), (True, 1, "exact", "add_grad_"),
])
def test_swapping_commutes_with_training(seed, tokens, mode, path):
    """Train, swap (optimizer passed), train more == train all the way, then permute.

    The training cost has A = 0 (plain L1: position-independent), because with A > 0 the
    locality gradient ``sign(w) * A * |dx|`` depends on *where* a neuron sits, so a neuron that
    moved feels a different gradient and the property does not hold. The swaps are judged by
    a local cost (A = 2), as in the L1+Swap ablation, so that neurons really move.
    """
    model, batches = _commute_setup(seed, tokens)
    other = copy.deepcopy(model)
    lam, train_cost = 1e-2, model.wiring.connection_cost
    assert train_cost.A == 0
    swap_cost = model.wiring.with_cost(A=2.0)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, batches[:5], lam, train_cost, path)
    report = model.swap(top_k=None, mode=mode, optimizer=opt, cost=swap_cost)
    assert report.swaps > 0 and report.moved
    _train(model, opt, batches[5:], lam, train_cost, path)

    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    _train(other, opt2, batches, lam, other.wiring.connection_cost, path)
    apply_report(other, other.spec, report)
    for k, v in state(model).items():
        torch.testing.assert_close(v, state(other)[k], atol=1e-5, rtol=0, msg=k)


def test_swapping_without_the_optimizer_breaks_commutation():
    model, batches = _commute_setup(0, False)
    other = copy.deepcopy(model)
    lam, train_cost = 1e-2, model.wiring.connection_cost
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, batches[:5], lam, train_cost)
    report = model.swap(top_k=None, mode="exact", optimizer=None,
                        cost=model.wiring.with_cost(A=2.0))
    assert report.swaps > 0
    _train(model, opt, batches[5:], lam, train_cost)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    _train(other, opt2, batches, lam, other.wiring.connection_cost)
    apply_report(other, other.spec, report)
    worst = max(_max_diff(v, state(other)[k]) for k, v in state(model).items()
                if v.is_floating_point())
    assert worst > 1e-3


def test_locality_gradient_breaks_commutation():
    """Why the commutation tests train with A = 0: with A > 0 a moved neuron feels another
    locality gradient, so swap-then-train differs from train-then-permute even with the
    optimizer state moved."""
    torch.manual_seed(0)
    model = bimt.BioMLP([4, 7, 6, 3], A=2.0, y_star=1.0)
    _, batches = _commute_setup(0, False)
    other = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, batches[:5], 1e-2, model.wiring.connection_cost)
    report = model.swap(top_k=None, mode="exact", optimizer=opt)
    assert report.swaps > 0
    _train(model, opt, batches[5:], 1e-2, model.wiring.connection_cost)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    _train(other, opt2, batches, 1e-2, other.wiring.connection_cost)
    apply_report(other, other.spec, report)
    worst = max(_max_diff(v, state(other)[k]) for k, v in state(model).items()
                if v.is_floating_point())
    assert worst > 1e-4


# -- bad inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_top_k_raises(bad):
    model = build(dict(widths=[3, 4, 2]))
    with pytest.raises(ValueError, match=rf"top_k must be a positive integer .*got {bad!r}"):
        model.swap(bad)


def test_unknown_mode_and_group_raise():
    model = build(dict(widths=[3, 4, 2]))
    with pytest.raises(ValueError, match="unknown swap mode 'optimal'"):
        model.swap(3, "optimal")
    with pytest.raises(ValueError, match="unknown group 'layer9'"):
        model.swap(3, groups=["layer9"])


# -- the exact pass's local solver and its proof ----------------------------------------------
def _line_placement_matrix(rng, n: int, m: int = 12, spread: float = 0.1,
                           shift: int | None = None) -> np.ndarray:
    """``C[j, p] = sum_k W[j, k] |x_p - y_k|``, each neuron wired near a place of its own: the
    shape a trained network's placement matrices have. The places are a shuffle of the slots
    (``shift``: each at most ``shift`` slots from the neuron's own), so the optimum moves
    neurons."""
    x, y = np.linspace(0, 1, n), np.linspace(0, 1, m)
    if shift is None:
        centre = rng.permutation(n) / n
    else:
        centre = np.argsort(np.arange(n) + rng.uniform(0, shift, n)) / n
    W = np.exp(-np.abs(centre[:, None] - y[None, :]) / spread) * rng.uniform(0.5, 1.5, (n, m))
    return W @ np.abs(x[:, None] - y[None, :]).T


def _optimum(C: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(C)
    return float(C[r, c].sum())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000), local=st.booleans())
def test_certified_placements_are_optimal_and_optima_are_certified(n, seed, local):
    from scipy.optimize import linear_sum_assignment

    from bimt.core.swap.exact import certified_optimal

    rng = np.random.default_rng(seed)
    C = _line_placement_matrix(rng, n) if local else rng.random((n, n))
    r, c = linear_sum_assignment(C)
    best = np.empty(n, dtype=int)
    best[r] = c
    assert certified_optimal(C, best, sweeps=n + 2)  # an optimum always has its proof
    for _ in range(3):  # and a proof is only ever given for an optimum
        pos = rng.permutation(n)
        if certified_optimal(C, pos, sweeps=n + 2):
            assert C[np.arange(n), pos].sum() <= _optimum(C) + 1e-12 * n


def test_certificate_refuses_a_placement_one_swap_improves():
    from bimt.core.swap.exact import certified_optimal

    C = np.array([[0.0, 1.0, 5.0], [1.0, 0.0, 5.0], [5.0, 5.0, 0.0]])
    assert certified_optimal(C, np.array([0, 1, 2]))
    assert not certified_optimal(C, np.array([1, 0, 2]))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 300), seed=st.integers(0, 10_000), window=st.integers(2, 64))
def test_local_first_exact_positions_reach_the_dense_optimum(n, seed, window):
    # the exact pass's big-group path (local windows, then the proof, else the dense solver)
    # always ends at an optimum, whether or not the windows found it
    import bimt.core.swap.exact as exact

    rng = np.random.default_rng(seed)
    C = _line_placement_matrix(rng, n, shift=int(rng.integers(1, 30)))
    old = exact.LOCAL_FIRST, exact.WINDOW
    exact.LOCAL_FIRST, exact.WINDOW = 2, window
    try:
        pos = exact.exact_positions(C, heads=1)
    finally:
        exact.LOCAL_FIRST, exact.WINDOW = old
    assert sorted(pos) == list(range(n))
    assert C[np.arange(n), pos].sum() == pytest.approx(_optimum(C), rel=1e-12, abs=1e-12)


def test_local_assignment_finds_a_shuffled_optimum_within_its_windows():
    from bimt.core.swap.exact import certified_optimal, local_assignment

    rng = np.random.default_rng(0)
    C = _line_placement_matrix(rng, 600, m=40, spread=0.02, shift=20)
    pos = local_assignment(C, window=64)
    assert (pos != np.arange(600)).sum() > 100
    assert C[np.arange(600), pos].sum() == pytest.approx(_optimum(C), rel=1e-12)
    assert certified_optimal(C, pos)
