"""Recurrent groups and BioRNN: swaps keep outputs, never raise the cost, exact pairwise deltas
match brute force, the greedy pass makes the naive search's swaps, optimizer state moves."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bimt
from bimt import ConnectionCost, Group, PermutationSpec
from bimt.core import geometry
from bimt.experiments.bench import naive_greedy_pass
from bimt.core.recurrent import linearised, quadratic_cost, quadratic_gains, recurrent_terms

ATOL = 1e-5


@st.composite
def rnn_configs(draw):
    cell = draw(st.sampled_from(["elman", "gru"]))
    hidden = draw(st.sampled_from([1, 2, 5, 8, 9, 12, 16]))
    layouts = ["line"] + (["grid"] if hidden in (4, 9, 16) else []) + (
        [(2, 2, 2)] if hidden == 8 else []) + ([(2, 3, 2)] if hidden == 12 else [])
    return dict(
        d_in=draw(st.integers(1, 4)), hidden=hidden, d_out=draw(st.integers(1, 3)), cell=cell,
        nonlinearity="tanh" if cell == "gru" else draw(st.sampled_from(["tanh", "relu", "silu"])),
        layout=draw(st.sampled_from(layouts)), bias=draw(st.booleans()),
        freeze_inputs=draw(st.booleans()), freeze_outputs=draw(st.booleans()),
        A=draw(st.sampled_from([0.0, 0.5, 2.0])), y_star=draw(st.sampled_from([0.1, 1.0])),
        p=draw(st.sampled_from([1.0, 2.0, float("inf")])),
        reduction=draw(st.sampled_from(["sum", "mean"])),
    ), draw(st.integers(0, 2**16)), draw(st.one_of(st.none(), st.integers(1, 6)))


def _build(kw, seed):
    torch.manual_seed(seed)
    return bimt.BioRNN(**kw)


@settings(max_examples=60, deadline=None)
@given(cfg=rnn_configs(), mode=st.sampled_from(["greedy", "exact"]))
def test_rnn_swap_keeps_outputs_and_never_raises_cost(cfg, mode):
    kw, seed, top_k = cfg
    model = _build(kw, seed)
    x = torch.randn(3, 5, kw["d_in"])
    y0 = model(x).detach()
    report = model.swap(top_k, mode)
    assert float((model(x).detach() - y0).abs().max()) <= ATOL, report
    assert report.cost_after <= report.cost_before * (1 + 1e-12) + 1e-12
    assert report.cost_after == pytest.approx(model.wiring.connection_cost.total(model), rel=1e-12)
    if kw["freeze_inputs"]:
        assert torch.equal(model.input_order, torch.arange(kw["d_in"]))


@settings(max_examples=40, deadline=None)
@given(cfg=rnn_configs())
def test_exact_never_worse_than_greedy(cfg):
    kw, seed, top_k = cfg
    model = _build(kw, seed)
    other = copy.deepcopy(model)
    greedy = model.swap(top_k, "greedy")
    exact = other.swap(top_k, "exact")
    assert exact.cost_after <= greedy.cost_after * (1 + 1e-12) + 1e-12


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 999), A=st.sampled_from([0.0, 1.0, 3.0]),
       p=st.sampled_from([1.0, 2.0, float("inf")]), dim=st.integers(1, 3))
def test_quadratic_gains_match_brute_force(n, seed, A, p, dim):
    rng = np.random.default_rng(seed)
    coords = rng.random((n, dim))
    D = geometry.pairwise_distance(coords, coords, A, 0.3, p)
    M = rng.standard_normal((n, n))
    F = np.abs(M) + np.abs(M).T
    pos = rng.permutation(n)
    base = quadratic_cost(F, D, pos)
    assert base == pytest.approx(float((np.abs(M) * D[np.ix_(pos, pos)]).sum()))
    for j in range(n):
        gains = quadratic_gains(F, D, pos, j)
        for m in range(n):
            moved = pos.copy()
            moved[j], moved[m] = moved[m], moved[j]
            assert gains[m] == pytest.approx(quadratic_cost(F, D, moved) - base, abs=1e-9)
    # the linearisation: neuron j's own cost at slot q, everyone else where they are
    L = linearised(F, D)
    for j in range(n):
        for q in range(n):
            own = sum(F[j, c] * D[q, c] for c in range(n) if c != j) + np.abs(M)[j, j] * D[q, q]
            assert L[j, q] == pytest.approx(own, abs=1e-9)


def _recurrent_spec(n=6, d_in=3, fold=1):
    groups = {"x": Group("x", geometry.line(d_in), frozen=True), "h": Group("h", geometry.grid((2, n // 2)))}
    axes = {"w_in": ("h", "x"), "w_hh": ("h", "h")}
    return PermutationSpec(groups, axes, {"w_in": "weight", "w_hh": "weight"})


def test_placement_matrix_handles_recurrent_weights():
    spec = _recurrent_spec()
    torch.manual_seed(0)
    tensors = {"w_in": torch.randn(6, 3), "w_hh": torch.randn(6, 6)}
    cost = ConnectionCost(spec, A=2.0, y_star=0.5)
    without = ConnectionCost(PermutationSpec(spec.groups, {"w_in": ("h", "x")}, {"w_in": "weight"}),
                             A=2.0, y_star=0.5)
    C_lin = cost.placement_matrix(tensors, "h", recurrent=False)
    np.testing.assert_allclose(C_lin, without.placement_matrix(tensors, "h"))
    (F, D), = recurrent_terms(cost, tensors, "h")
    np.testing.assert_allclose(cost.placement_matrix(tensors, "h"), C_lin + linearised(F, D))
    # the recurrent cost is 1/2 sum F * D at the identity placement
    W = tensors["w_hh"].abs().double().numpy()
    assert quadratic_cost(F, D, np.arange(6)) == pytest.approx(float((W * D).sum()))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 9999), top_k=st.integers(1, 9), layout=st.sampled_from(["line", "grid"]),
       cell=st.sampled_from(["elman", "gru"]))
def test_greedy_makes_the_naive_searchs_swaps(seed, top_k, layout, cell):
    model = _build(dict(d_in=2, hidden=9, d_out=2, layout=layout, A=2.0, y_star=0.5, cell=cell),
                   seed)
    naive = copy.deepcopy(model)
    cost = model.wiring.connection_cost
    report = model.swap(top_k)
    perms = naive_greedy_pass(naive, model.spec, cost, top_k)
    for g, perm in perms.items():
        np.testing.assert_array_equal(report.permutations.get(g, np.arange(len(perm))), perm, g)


@pytest.mark.parametrize("cell", ["elman", "gru"])
def test_swapping_commutes_with_training(cell):
    torch.manual_seed(3)
    model = bimt.BioRNN(3, 8, 2, cell=cell, layout=(2, 2, 2), A=2.0)
    twin = copy.deepcopy(model)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, twin)]
    xs = [torch.randn(4, 6, 3) for _ in range(4)]
    ys = [torch.randn(4, 6, 2) for _ in range(4)]

    def step(m, opt, i):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(xs[i]), ys[i]).backward()
        opt.step()

    for i in range(2):
        step(model, opts[0], i)
        step(twin, opts[1], i)
    report = model.swap(None, "exact", optimizer=opts[0])
    assert report.moved.get("hidden", 0) > 0
    for i in range(2, 4):
        step(model, opts[0], i)
        step(twin, opts[1], i)
    x = torch.randn(5, 7, 3)
    with torch.no_grad():
        assert float((model(x) - twin(x)).abs().max()) <= ATOL


def test_recurrent_cost_charges_within_group_distance():
    model = _build(dict(d_in=1, hidden=4, d_out=1, layout="grid", A=2.0, y_star=0.5), 0)
    c = model.wiring.connection_cost
    W = model.recurrent.weight.detach().abs().double()
    coords = geometry.grid(4)
    D = 2.0 * np.abs(coords[:, None] - coords[None]).sum(-1) + 0.5
    np.testing.assert_allclose(c.distance(model, "recurrent.weight"), D)
    expected = float((W.numpy() * D).sum())
    terms = {n: float((model.get_parameter(n).detach().abs().double().numpy()
                       * c.distance(model, n)).sum()) for n in model.spec.weights()}
    assert terms["recurrent.weight"] == pytest.approx(expected)


def test_bad_rnn_arguments_are_named():
    with pytest.raises(ValueError, match="unknown cell 'lstm'"):
        bimt.BioRNN(2, 4, 2, cell="lstm")
    with pytest.raises(ValueError, match=r"hidden layout \(5, 5, 3\) must be"):
        bimt.BioRNN(2, 100, 2, layout=(5, 5, 3))
    with pytest.raises(ValueError, match="nearest cubes: 64 and 125"):
        bimt.BioRNN(2, 100, 2, layout="grid3d")
    with pytest.raises(ValueError, match=r"batch-first sequences \(batch, time, 2\)"):
        bimt.BioRNN(2, 4, 2)(torch.randn(5, 2))
    groups = {"h": Group("h", geometry.line(4), heads=2)}
    spec = PermutationSpec(groups, {"w": ("h", "h")}, {"w": "weight"})
    with pytest.raises(ValueError, match="recurrent weights and heads=2"):
        bimt.swap_pass({"w": torch.randn(4, 4)}, spec, ConnectionCost(spec))


def test_grid3d_layout():
    c = geometry.grid3d((5, 5, 4))
    assert c.shape == (100, 3)
    np.testing.assert_allclose(c[1], [0.1, 0.1, 0.375])
    assert geometry.layout("grid3d", 8).shape == (8, 3)


# -- seRNN's regulariser ------------------------------------------------------------------------
def test_communicability_cost_matches_formula_and_gradient():
    from scipy.linalg import expm

    from bimt.core.communicability import CommunicabilityCost

    model = _build(dict(d_in=2, hidden=8, d_out=2, layout=(2, 2, 2), A=2.0, y_star=0.5), 1)
    cost = CommunicabilityCost(model.spec, A=2.0, y_star=0.5)
    base = ConnectionCost(model.spec, A=2.0, y_star=0.5)
    W = model.recurrent.weight.detach().abs().double().numpy()
    s = W.sum(1) ** -0.5
    C = expm(s[:, None] * W * s[None, :])
    coords = geometry.grid3d((2, 2, 2))
    D = 2.0 * np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    rest = base.total(model) - float((W * base.distance(model, "recurrent.weight")).sum())
    assert cost.total(model) == pytest.approx(rest + float((W * D * C).sum()), rel=1e-9)
    assert float(cost.value(model).detach()) == pytest.approx(cost.total(model), rel=1e-5)
    # add_grad_ is lam times autograd's gradient of value
    model.zero_grad()
    (0.3 * cost.value(model)).backward()
    auto = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    cost.add_grad_(model, 0.3)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, auto[n], rtol=1e-5, atol=1e-7)


def test_sernn_method_trains_without_swaps(monkeypatch):
    import bimt.training.loop as bt

    calls = []
    monkeypatch.setattr(bt, "swap_pass", lambda *a, **k: calls.append(1))
    r = bimt.fit(task="two-stream", method="sernn", steps=6, swap_every=2, progress=False)
    assert calls == [] and np.isfinite(r.metrics["test_loss"])
    assert r.model.recurrent.weight.grad is not None


# -- tasks --------------------------------------------------------------------------------------
def test_two_stream_data():
    two_stream_data = bimt.tasks.get_task("two-stream").make_data
    d = two_stream_data(3)
    assert d.X_train.shape == (1000, 20, 2) and d.y_test.shape == (500, 20, 2)
    X, y = d.X_train, d.y_train
    torch.testing.assert_close(y[:, :, 0], 0.25 * X[:, :, 0].cumsum(1))
    assert torch.equal(y[:, 5, 1], X[:, 3, 1]) and torch.equal(y[:, :2, 1], torch.zeros(1000, 2))
    assert torch.equal(two_stream_data(3).X_test, d.X_test)
    assert not torch.equal(two_stream_data(4).X_test, d.X_test)


def test_goal_inference_labels_reach_the_goal():
    from bimt.tasks.extra import MOVES, goal_inference_arrays

    d = bimt.tasks.Data(*goal_inference_arrays(0, n_train=200, n_test=10, noise=0.0))
    goal = d.X_train[:, 0, :9].argmax(1)
    here = d.X_train[:, -1, 9:].argmax(1)
    assert torch.equal(d.X_train[:, 5:10], torch.zeros(200, 5, 18))  # the delay shows nothing
    for g, h, m in zip(goal.tolist(), here.tolist(), d.y_train.tolist()):
        dr, dc = MOVES[m]
        assert (h // 3 + dr, h % 3 + dc) == (g // 3, g % 3)


@pytest.mark.parametrize("task", ["two-stream", "goal-inference"])
def test_rnn_tasks_train_and_draw(task, tmp_path):
    r = bimt.fit(task=task, method="bimt", steps=8, swap_every=4, out=tmp_path / "run",
                 progress=False)
    assert np.isfinite(r.metrics["test_loss"]) and 0 <= r.metrics["modularity"] <= 1
    assert (tmp_path / "run" / "graph.png").is_file()
    model, _ = bimt.load_model(tmp_path / "run")
    x = r.data.X_test[:4]
    torch.testing.assert_close(model(x), r.model(x))


# -- which output hears which input -------------------------------------------------------------
def test_input_output_paths_follow_the_interface_through_swaps():
    from bimt.analysis import depends_only_on, input_output_paths

    torch.manual_seed(0)
    model = bimt.BioRNN(2, 6, 2, layout="line", A=2.0)
    with torch.no_grad():  # two separate chains: input 0 -> units 0-2 -> output 1, 1 -> 3-5 -> 0
        model.input_layer.weight.zero_()
        model.recurrent.weight.zero_()
        model.readout.weight.zero_()
        model.input_layer.weight[0, 0] = model.input_layer.weight[3, 1] = 1.0
        model.recurrent.weight[1, 0] = model.recurrent.weight[2, 1] = 0.5
        model.recurrent.weight[4, 3] = model.recurrent.weight[5, 4] = -0.5
        model.readout.weight[1, 2] = model.readout.weight[0, 5] = 1.0
    expected = np.array([[0, 1], [1, 0]], dtype=bool)
    np.testing.assert_array_equal(input_output_paths(model), expected)
    for g in ("input", "hidden", "output"):
        model.wiring.permute(g, np.random.default_rng(1).permutation(model.spec.groups[g].size))
    np.testing.assert_array_equal(input_output_paths(model), expected)
    assert depends_only_on(model, {0: 1, 1: 0}) and not depends_only_on(model, {0: 0})
    with torch.no_grad():
        model.recurrent.weight.add_(0.01)  # below the 10% threshold: still separate
    assert depends_only_on(model, {0: 1, 1: 0})
    assert input_output_paths(model, threshold=0.0).all()


def test_analysis_accepts_the_rnn():
    from bimt import analysis

    model = _build(dict(d_in=2, hidden=9, d_out=2, layout="grid"), 0)
    assert 0 <= analysis.modularity(model) <= 1
    assert analysis.find_modules(model, threshold=0.0)
    x = torch.randn(4, 5, 2)
    rows = analysis.knockout_table(model, {"h0": {"hidden": [0, 1]}},
                                   lambda m: float(m(x).pow(2).mean()))
    assert len(rows) == 2
    frontier = analysis.pruning_frontier(model, lambda m: float(m(x).pow(2).mean()), n_points=3)
    assert frontier[0][0] == 0


@pytest.mark.parametrize("layout", ["line", "grid", (2, 2, 4)])
def test_plot_rnn(layout):
    model = _build(dict(d_in=2, hidden=16, d_out=3, layout=layout), 0)
    with torch.no_grad():
        model.recurrent.weight.fill_diagonal_(0.5)
    fig = bimt.viz.plot(model, title="x")
    drawing = bimt.models.drawing.drawing_of(model.bimt)
    recurrent = next(i for i, e in enumerate(drawing.edges) if e.out == e.inp)
    gids = {a.get_gid() for a in fig.axes[0].get_children()}
    assert {f"weights-{recurrent}", "neurons-hidden", "input-label", "output-label"} <= gids
    rec = [c for c in fig.axes[0].collections if c.get_gid() == f"weights-{recurrent}"][0]
    assert len(rec.get_paths()) == 16 * 16  # every weight, as a curve (self-connections: loops)
    hidden = drawing.rows[drawing.row("hidden")]
    assert hidden.spatial == (layout != "line")


def test_bench_times_the_rnn_and_cnn_swap():
    from bimt.experiments.bench import bench_task_swap, format_table

    assert bench_task_swap("two-stream", repeats=1) > 0
    assert bench_task_swap("cnn-mnist", repeats=1) > 0
    table = format_table({"rnn.swap_ms": 1.0, "cnn.swap_ms": 2.0})
    assert "RNN greedy swap pass" in table and "CNN greedy swap pass" in table


def test_rnn_task_widths():
    with pytest.raises(ValueError, match="this task has 2 inputs and 2 outputs"):
        bimt.fit(task="two-stream", widths=[3, 16, 2], steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[hidden\] or \[2, hidden, 2\]"):
        bimt.fit(task="two-stream", widths=[16, 16], steps=1, progress=False)
    model = bimt.fit(task="two-stream", widths=[12], steps=1, progress=False).model
    assert model.spec.groups["hidden"].coords.shape == (12, 1)  # 12 is no square: a line


def test_rnn_and_cnn_export_keep_outputs_with_identity_orders():
    torch.manual_seed(0)
    rnn = bimt.BioRNN(3, 9, 2, layout="grid", A=2.0)
    cnn = bimt.BioCNN(image=(1, 8, 8), channels=(4, 5), hidden=(6,), n_classes=3).eval()
    rng = np.random.default_rng(0)
    for model, x in ((rnn, torch.randn(4, 5, 3)), (cnn, torch.randn(2, 64))):
        for g in model.spec.movable_groups():
            model.wiring.permute(g, rng.permutation(model.spec.groups[g].size))
        plain = model.bimt.export()
        with torch.no_grad():
            assert float((plain(x) - model(x)).abs().max()) <= ATOL
        assert torch.equal(plain.output_order, torch.arange(len(plain.output_order)))
