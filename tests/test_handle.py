"""One handle on any module: attach / wiring_of, checked specs, export, fit(model=...), the
plain hook for a loop of one's own."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bimt
from bimt import CostSettings, Group, PermutationSpec, attach, wiring_of
from bimt.training.runs import load_checkpoint, load_model
from conftest import fit_interrupted

QUIET = dict(progress=False, plots=False)


class TwoBranch(nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        self.a1, self.a2 = nn.Linear(4, hidden), nn.Linear(hidden, 1)
        self.b1, self.b2 = nn.Linear(4, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        return torch.cat([self.a2(torch.tanh(self.a1(x))), self.b2(torch.tanh(self.b1(x)))], -1)


def two_branch_spec(hidden=6, drop=(), freeze_inputs=True, hidden_a=None):
    groups = [Group("x", bimt.core.geometry.line(4), frozen=freeze_inputs),
              Group("a", np.linspace(0.05, 0.45, hidden_a or hidden)),
              Group("b", np.linspace(0.55, 0.95, hidden)),
              Group("ya", [0.25], frozen=True), Group("yb", [0.75], frozen=True)]
    axes, charges = {}, {}
    for name, out_g, in_g in [("a1", "a", "x"), ("a2", "ya", "a"), ("b1", "b", "x"), ("b2", "yb", "b")]:
        for t, ax, kind in ((f"{name}.weight", (out_g, in_g), "weight"), (f"{name}.bias", (out_g,), "bias")):
            if t not in drop:
                axes[t], charges[t] = ax, kind
    return PermutationSpec(groups, axes, charges)


def data(seed=0, n=120):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 4, generator=g) * 2 - 1
    Y = torch.stack([X[:, 0] * X[:, 1], X[:, 2] + X[:, 3] ** 2], 1)
    return X[:80], Y[:80], X[80:], Y[80:]


def attached(seed=0):
    torch.manual_seed(seed)
    model = TwoBranch()
    attach(model, two_branch_spec(), A=1.0, y_star=0.1)
    return model


# -- the handle -----------------------------------------------------------------------------
def test_attach_keeps_the_wiring_on_the_module_and_wiring_of_finds_it(tmp_path):
    model = attached()
    w = model.bimt
    assert wiring_of(model) is w and wiring_of(w) is w and w.module is model
    assert w.view == "graph" and w.settings == CostSettings(A=1.0, y_star=0.1)
    assert bimt.analysis.modularity(model) == bimt.analysis.modularity(w)
    with pytest.raises(TypeError, match=r"bimt\.attach\(module, spec\)"):
        wiring_of(TwoBranch())
    with pytest.raises(TypeError, match="write a PermutationSpec"):
        attach(TwoBranch())


def test_models_attach_themselves():
    m = bimt.BioMLP([3, 5, 2], A=2.0)
    t = bimt.BioTransformer(2, 2, d_model=8, n_blocks=1)
    assert wiring_of(m) is m.bimt is m.wiring and m.bimt.view == "layered"
    assert t.bimt.view == "transformer" and "residual_stream" in t.bimt.probes
    assert bimt.BioMLP([16, 9, 4], layout="grid").bimt.view == "layered3d"
    assert m.bimt.settings.A == 2.0


def test_cost_settings_are_checked_once_and_derive_variants():
    s = CostSettings(A=2.0, y_star=0.5, distance_free="last")
    assert s.replace(A=0.0).A == 0.0 and s.replace(bias=False).bias is False
    assert s.distance_free == ("last",)
    with pytest.raises(ValueError, match=r"A must be a finite number >= 0, got -1"):
        CostSettings(A=-1)
    with pytest.raises(ValueError, match=r"unknown reduction 'max'; allowed: sum, mean"):
        CostSettings(reduction="max")
    m = bimt.BioMLP([3, 4, 2], settings=s)
    assert m.bimt.connection_cost.distance_free == {"linears.1.weight"}
    same = bimt.ConnectionCost(m.spec, A=2.0, y_star=0.5, distance_free=["linears.1.weight"])
    assert same.total(m) == m.bimt.connection_cost.total(m)


def test_swap_solvers_are_a_registry():
    calls = []

    def lazy(state):  # a global solver: sees every group at once, moves nothing
        calls.append(list(state.groups))

    bimt.register_solver("lazy-test", lazy)
    try:
        m = bimt.BioMLP([3, 4, 4, 2])
        report = m.swap(mode="lazy-test")
        assert calls == [["layer0", "layer1", "layer2", "layer3"]] and report.swaps == 0
        with pytest.raises(ValueError, match="exists"):
            bimt.register_solver("lazy-test", lazy)
    finally:
        bimt.SOLVERS.pop("lazy-test")


# -- checked specs --------------------------------------------------------------------------
def test_a_spec_missing_a_bias_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"tensor 'b2\.bias' .* not in the spec"):
        attach(TwoBranch(), two_branch_spec(drop=("b2.bias",)))


def test_a_spec_with_a_wrong_axis_size_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"axis 0 of 'a1\.weight' has length 6, which is not a positive multiple"):
        attach(TwoBranch(), two_branch_spec(hidden_a=4))


def test_moving_inputs_without_bookkeeping_is_refused_naming_the_group():
    with pytest.raises(ValueError, match=r"group 'x' is the module's input \(tensors 'a1\.weight', "
                                         r"'b1\.weight'\) and may move, but the module keeps no order"):
        attach(TwoBranch(), two_branch_spec(freeze_inputs=False))


def test_free_tensors_are_declared():
    class WithPReLU(TwoBranch):
        def __init__(self):
            super().__init__()
            self.act = nn.PReLU()

    spec = two_branch_spec()
    with pytest.raises(ValueError, match=r"'act\.weight'.*free=\('act\.weight',\)"):
        attach(WithPReLU(), spec)
    spec.free = ("act.weight",)
    attach(WithPReLU(), spec)


def test_a_spec_is_refused_before_the_module_is_touched():
    model = TwoBranch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        attach(model, two_branch_spec(drop=("a1.bias",)))
    assert "bimt" not in model.__dict__
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- export ---------------------------------------------------------------------------------
def _scramble(wiring, x):
    """Swap until the interface groups have moved, like a training run would."""
    torch.manual_seed(3)
    for g in wiring.spec.movable_groups():
        wiring.permute(g, torch.randperm(wiring.spec.groups[g].size).numpy())
    wiring.swap(mode="exact")
    return wiring.module(x).detach()


def _round_trip(wiring, fresh, x, y):
    plain = wiring.export()
    assert "bimt" not in plain.__dict__ or type(plain).owns_wiring
    assert not plain._forward_hooks and not plain._forward_pre_hooks
    fresh.load_state_dict(plain.state_dict())  # strict
    assert (fresh(x) - y).abs().max() <= 1e-5
    assert (plain(x) - y).abs().max() <= 1e-5
    assert (wiring.module(x) - y).abs().max() == 0  # the original is untouched


def test_export_round_trip_mlp():
    x = torch.randn(7, 5)
    m = bimt.BioMLP([5, 6, 6, 3])
    y = _scramble(m.bimt, x)
    assert not torch.equal(m.input_order, torch.arange(5))
    _round_trip(m.bimt, bimt.BioMLP([5, 6, 6, 3]), x, y)
    assert torch.equal(m.bimt.export().input_order, torch.arange(5))


def test_export_round_trip_token_mlp():
    x = torch.randint(5, (9, 2))
    m = bimt.BioMLP([8, 6, 5], vocab_size=5, n_tokens=2)
    y = _scramble(m.bimt, x)
    _round_trip(m.bimt, bimt.BioMLP([8, 6, 5], vocab_size=5, n_tokens=2), x, y)


def test_export_round_trip_transformer():
    x = torch.randn(4, 3, 2)
    t = bimt.BioTransformer(2, 3, d_model=8, n_blocks=2, n_heads=2)
    y = _scramble(t.bimt, x)
    assert not torch.equal(t.output_order, torch.arange(3))
    _round_trip(t.bimt, bimt.BioTransformer(2, 3, d_model=8, n_blocks=2, n_heads=2), x, y)


def test_export_round_trip_attached_sequential():
    make = lambda: nn.Sequential(nn.Linear(3, 7), nn.GELU(), nn.Linear(7, 2))
    net = make()
    x = torch.randn(6, 3)
    y = _scramble(attach(net), x)
    plain = net.bimt.export()
    assert type(plain) is nn.Sequential and "bimt" not in plain.__dict__
    assert set(plain.state_dict()) == set(make().state_dict())
    _round_trip(net.bimt, make(), x, y)


def test_export_round_trip_custom_module():
    model = attached()
    x = torch.randn(5, 4)
    y = _scramble(model.bimt, x)
    _round_trip(model.bimt, TwoBranch(), x, y)


# -- fit(model=...) -----------------------------------------------------------------------------
FIT = dict(data=data(), loss="mse", steps=24, lr=5e-3, swap_every=5, top_k=3, eval_every=4,
           checkpoint_every=8, batch_size=32, lambda_schedule=[[1e-3, 1], [1e-2, 1]], **QUIET)


def test_fit_a_module_writes_a_run_that_reloads_without_its_code(tmp_path):
    model = attached()
    result = bimt.fit(model=model, out=tmp_path / "run", **FIT)
    assert result.model is model and result.metrics["task"] == "module"
    assert result.metrics["connection_cost"] == pytest.approx(model.bimt.connection_cost.total(model))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["wiring"]["settings"]["y_star"] == 0.1
    weights, cfg = load_model(tmp_path / "run")  # no TwoBranch needed
    assert cfg.A == 1.0 and cfg.y_star == 0.1
    assert bimt.analysis.modularity(weights) == pytest.approx(result.metrics["modularity"])
    with pytest.raises(TypeError, match="fresh instance"):
        weights(torch.zeros(1, 4))
    again, _ = load_model(tmp_path / "run", model=TwoBranch())
    X = FIT["data"][2]
    assert torch.equal(again(X), model(X))


def test_fit_a_module_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    full = bimt.fit(model=attached(), out=tmp_path / "full", **FIT)
    # Ctrl-C at the third swap pass (step 15): the last checkpoint is step 8
    fit_interrupted(monkeypatch, 3, model=attached(), out=tmp_path / "cut", **FIT)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    torch.manual_seed(99)
    fresh = TwoBranch()  # not attached: the run's wiring comes from the checkpoint
    resumed = bimt.fit(model=fresh, data=FIT["data"], loss="mse", out=tmp_path / "cut", resume=True,
                       **QUIET)
    drop = lambda m: {k: v for k, v in m.items() if k != "wall_s"}
    assert drop(resumed.metrics) == drop(full.metrics)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_fit_a_module_from_data_loaders_resumes_exactly(tmp_path, monkeypatch):
    X, Y, Xt, Yt = data()
    loaders = lambda: (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16,
                                                   shuffle=True),
                       torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, Yt), batch_size=16))
    kw = dict(loss="mse", steps=14, swap_every=5, eval_every=7, checkpoint_every=7, **QUIET)
    full = bimt.fit(model=attached(), data=loaders(), out=tmp_path / "full", **kw)
    # Ctrl-C at the second swap pass (step 10): after the step-7 checkpoint
    fit_interrupted(monkeypatch, 2, model=attached(), data=loaders(), out=tmp_path / "cut", **kw)
    resumed = bimt.fit(model=TwoBranch(), data=loaders(), loss="mse", out=tmp_path / "cut",
                       resume=True, **QUIET)
    assert resumed.metrics["test_loss"] == full.metrics["test_loss"]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_fit_a_module_with_a_loss_function_and_classes(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    attach(net, A=0.5)
    X = torch.randn(60, 2)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    result = bimt.fit(model=net, data=(X[:40], y[:40], X[40:], y[40:]),
                      loss=nn.CrossEntropyLoss(), steps=20, **QUIET)
    assert result.metrics["test_acc"] is not None and result.config.A == 0.5
    with pytest.raises(ValueError, match="not both"):
        bimt.fit(model=net, task="two-moons", data=(X, y, X, y))
    with pytest.raises(ValueError, match="needs data"):
        bimt.fit(model=net)


def test_bimt_analyze_and_plot_on_a_module_run(tmp_path):
    bimt.fit(model=attached(), out=tmp_path / "run", **{**FIT, "plots": True})
    assert (tmp_path / "run" / "graph.png").exists()
    cli = [sys.executable, "-m", "bimt.cli"]
    out = subprocess.run(cli + ["analyze", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "run" / "analysis.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["modularity"] == pytest.approx(metrics["modularity"])
    assert report["test_loss"] == metrics["test_loss"]
    out = subprocess.run(cli + ["analyze", str(tmp_path / "run"), "--prune"], capture_output=True, text=True)
    assert out.returncode == 2 and "evaluate=" in out.stderr
    (tmp_path / "run" / "graph.png").unlink()
    out = subprocess.run(cli + ["plot", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "run" / "graph.png").exists(), out.stderr


# -- the plain hook -------------------------------------------------------------------------
def test_wiring_step_adds_the_cost_gradient_and_swaps_with_the_optimizer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    w = attach(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(32, 2)
    reports = []
    for _ in range(6):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        before = net[0].weight.grad.clone()
        w.connection_cost.add_grad_(net, 0.0)  # nothing
        report = w.step(opt, lam=0.1, swap_every=3, top_k=2)
        reports.append(report)
    assert [r is None for r in reports] == [True, True, False, True, True, False]
    assert not torch.equal(before, net[0].weight.grad)  # the cost's gradient was added
    assert opt.state[net[0].weight]["exp_avg"].shape == (6, 2)


def test_figures_show_inline_as_png():
    fig = bimt.viz.plot(bimt.BioMLP([2, 3, 1]))
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_configs_with_the_old_setting_name_still_load():
    from bimt.training.config import TrainConfig

    assert TrainConfig.from_dict({"last_distance_free": True}).distance_free == ["last"]
    assert TrainConfig.from_dict({"last_distance_free": False}).distance_free == []


def test_fit_a_biomlp_as_a_module_and_draw_its_run_without_code(tmp_path):
    torch.manual_seed(0)
    m = bimt.BioMLP([4, 6, 2], A=2.0, y_star=0.5)
    result = bimt.fit(model=m, out=tmp_path / "run", **{**FIT, "plots": True})
    assert result.config.A == 2.0 and result.config.y_star == 0.5
    weights, _ = load_model(tmp_path / "run")
    assert weights.bimt.view == "layered"
    assert bimt.analysis.modularity(weights) == pytest.approx(result.metrics["modularity"])
    assert len(bimt.viz.plot(weights).axes) == 1
