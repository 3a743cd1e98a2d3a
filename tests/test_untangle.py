"""bimt.untangle: the untangle pass keeps the function, never raises the cost, and removes
crossings between modules that no single-layer move can remove."""

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bimt
from bimt import BioMLP
from bimt.analysis import crossings
from conftest import apply_report, build, inputs, mlp_configs, state


def _sparsify(model, keep: float, seed: int):
    """Zero most weights, so the pruned graph falls apart into several modules."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_((torch.rand(lin.weight.shape, generator=g) < keep).float())


@settings(max_examples=120, deadline=None)
@given(cfg=mlp_configs(), keep=st.sampled_from([1.0, 0.5, 0.25, 0.12]))
def test_untangle_keeps_outputs_and_never_raises_the_cost(cfg, keep):
    model = build(cfg)
    _sparsify(model, keep, cfg["seed"])
    x = inputs(model)
    with torch.no_grad():
        y0 = model(x)
    before = copy.deepcopy(model)
    cost = bimt.wiring_of(model).connection_cost
    start = cost.total(model)
    report = model.swap(cfg["top_k"], "untangle")
    with torch.no_grad():
        y1 = model(x)
    assert float((y0 - y1).abs().max()) <= 1e-5 if y0.numel() else True
    assert report.cost_before == start
    assert report.cost_after <= start, report
    assert cost.total(model) == report.cost_after
    # the reported permutations replay exactly
    replay = copy.deepcopy(before)
    apply_report(replay, replay.spec, report)
    for k, v in state(model).items():
        assert torch.equal(v, state(replay)[k]), k
    # frozen groups never move
    if cfg["freeze_inputs"]:
        assert "layer0" not in report.moved
    if cfg["freeze_outputs"]:
        assert f"layer{len(model.linears)}" not in report.moved


@settings(max_examples=60, deadline=None)
@given(cfg=mlp_configs(grid=False, tokens=False), keep=st.sampled_from([0.5, 0.25, 0.12]))
def test_untangle_never_ends_with_more_module_crossings(cfg, keep):
    model = build(cfg)
    _sparsify(model, keep, cfg["seed"] + 1)
    before = crossings(model)["module_crossings"]
    model.swap(None, "untangle")
    assert crossings(model)["module_crossings"] <= before


def _crossed_modules():
    """Two modules, in0 -> h3 -> out1 and in1 -> h0 -> out0, with long wires everywhere but
    the output layer."""
    model = BioMLP([2, 4, 2], A=1.0, y_star=0.1)
    with torch.no_grad():
        model.linears[0].weight.zero_()
        model.linears[1].weight.zero_()
        model.linears[0].weight[3, 0] = 1.0
        model.linears[0].weight[0, 1] = 1.0
        model.linears[1].weight[1, 3] = 1.0
        model.linears[1].weight[0, 0] = 1.0
        for lin in model.linears:
            lin.bias.zero_()
    return model


def test_untangle_resolves_two_crossed_modules():
    exact = _crossed_modules()
    assert crossings(exact)["module_crossings"] == 1
    untangled = copy.deepcopy(exact)
    x = torch.rand(16, 2)
    y0 = exact(x)
    exact.swap(None, "exact")
    report = untangled.swap(None, "untangle")
    assert crossings(untangled)["module_crossings"] == 0
    assert torch.allclose(untangled(x), y0, atol=1e-6)
    assert report.cost_after <= report.cost_before
    assert report.cost_after <= bimt.wiring_of(exact).connection_cost.total(exact) + 1e-12


def test_ctrl_c_during_an_untangle_commit_waits_for_the_whole_layout(monkeypatch):
    """A layout cheaper as a whole can cost more with one group moved alone, so the pass commits
    all its groups in one critical section: a Ctrl-C arriving after the first group is raised
    only when every group has moved; the network ends in the chosen layout, never in between."""
    import os
    import signal

    import pytest

    import bimt.core.swap.core as core

    for seed in range(100):  # a sparse network whose untangled layout moves several groups
        torch.manual_seed(seed)
        reference = BioMLP([4, 8, 8, 3], A=1.0, y_star=0.1)
        _sparsify(reference, 0.25, seed)
        interrupted = copy.deepcopy(reference)
        want = copy.deepcopy(reference).swap(None, "untangle")
        if len([g for g, n in want.moved.items() if n]) >= 2:
            break
    assert len([g for g, n in want.moved.items() if n]) >= 2  # the commit spans several groups
    x = torch.rand(16, 4)
    y0 = reference(x)
    reference.swap(None, "untangle")
    real, calls = core._commit, []

    def interrupt_after_first(*a, **k):  # a Ctrl-C right after the first group is committed
        real(*a, **k)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(core, "_commit", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        interrupted.swap(None, "untangle")
    assert len(calls) == len(want.permutations)  # every group moved before the interrupt
    for k, v in state(reference).items():
        assert torch.equal(v, state(interrupted)[k]), k
    assert torch.allclose(interrupted(x), y0, atol=1e-6)
