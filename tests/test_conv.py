"""BioCNN and normalisation layers: swaps keep outputs (Flatten into linear, BatchNorm,
LayerNorm), never raise the cost, exact never worse than greedy, optimizer state moves."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bimt

ATOL = 1e-5


@st.composite
def cnn_configs(draw):
    n_conv = draw(st.integers(1, 2))
    return dict(
        image=(draw(st.integers(1, 3)), draw(st.sampled_from([4, 6, 8])), draw(st.sampled_from([4, 8]))),
        channels=[draw(st.integers(1, 6)) for _ in range(n_conv)],
        kernel=draw(st.sampled_from([1, 3])), pool=2,
        hidden=[draw(st.integers(1, 7)) for _ in range(draw(st.integers(0, 2)))],
        n_classes=draw(st.integers(1, 4)), norm=draw(st.sampled_from([None, "batch", "layer"])),
        activation=draw(st.sampled_from(["relu", "tanh"])),
        A=draw(st.sampled_from([0.0, 1.0, 2.0])), p=draw(st.sampled_from([1.0, 2.0])),
        reduction=draw(st.sampled_from(["sum", "mean"])),
    ), draw(st.integers(0, 2**16)), draw(st.one_of(st.none(), st.integers(1, 5)))


def _build(kw, seed):
    torch.manual_seed(seed)
    model = bimt.BioCNN(**kw)
    with torch.no_grad():  # norms start at 1/0: make their per-channel state distinct
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "norms" in name and t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    model.eval()
    return model


def _max_diff(a, b):
    return float((a - b).abs().max())


@settings(max_examples=50, deadline=None)
@given(cfg=cnn_configs(), mode=st.sampled_from(["greedy", "exact"]))
def test_cnn_swaps_keep_outputs(cfg, mode):
    kw, seed, top_k = cfg
    model = _build(kw, seed)
    x = torch.randn(3, int(np.prod(kw["image"])))
    with torch.no_grad():
        y0 = model(x)
    report = model.swap(top_k, mode)
    with torch.no_grad():
        assert _max_diff(model(x), y0) <= ATOL, report
    assert report.cost_after <= report.cost_before * (1 + 1e-12) + 1e-12
    model.train()  # batch statistics are permutation-equivariant too
    twin = copy.deepcopy(model)
    for g in model.spec.movable_groups():
        twin.wiring.permute(g, np.random.default_rng(seed).permutation(model.spec.groups[g].size))
    with torch.no_grad():
        assert _max_diff(model(x), twin(x)) <= ATOL


@settings(max_examples=30, deadline=None)
@given(cfg=cnn_configs())
def test_cnn_exact_never_worse_than_greedy(cfg):
    kw, seed, top_k = cfg
    model = _build(kw, seed)
    other = copy.deepcopy(model)
    assert other.swap(top_k, "exact").cost_after <= model.swap(top_k, "greedy").cost_after + 1e-9


def test_conv_weight_charged_per_channel_pair():
    model = _build(dict(image=(2, 4, 4), channels=[3], hidden=[], n_classes=2, A=2.0,
                        y_star=0.5), 0)
    cost = model.wiring.connection_cost
    W = model.convs[0].weight.detach().abs().double()
    d = bimt.core.geometry.pairwise_distance(bimt.core.geometry.line(3), bimt.core.geometry.line(2), 2.0, 0.5)
    expected_conv = float((W.sum((2, 3)).numpy() * d).sum())
    lin = model.linears[0].weight.detach().abs().double()
    d_lin = np.tile(bimt.core.geometry.pairwise_distance(bimt.core.geometry.line(2), bimt.core.geometry.line(3),
                                                    2.0, 0.5), (1, 4))  # 2x2 positions, folds
    biases = sum(float(t.detach().abs().sum()) * 0.5 for n, t in model.named_parameters()
                 if n.endswith("bias"))
    assert cost.total(model) == pytest.approx(expected_conv + float((lin.numpy() * d_lin).sum())
                                              + biases)
    # a channel swap moves the next linear layer's whole fold of positions
    perm = [2, 0, 1]
    before = model.linears[0].weight.detach().clone()
    model.wiring.permute("conv1", perm)
    idx = torch.tensor([f * 3 + s for f in range(4) for s in perm])
    assert torch.equal(model.linears[0].weight, before[:, idx])


@pytest.mark.parametrize("norm, optim", [(None, "adamw"), ("layer", "adamw"), ("batch", "sgd")])
def test_cnn_optimizer_state_moves_with_channels(norm, optim):
    # with BatchNorm, the biases before it get a zero gradient up to float rounding, which Adam
    # would blow up to full steps in a rounding-dependent direction; SGD's momentum shows the
    # state moving without that noise
    torch.manual_seed(0)
    kw = dict(image=(1, 8, 8), channels=[4, 5], hidden=[6], n_classes=3, norm=norm, A=2.0)
    model = bimt.BioCNN(**kw)
    twin = copy.deepcopy(model)
    make = (lambda p: torch.optim.AdamW(p, lr=1e-2)) if optim == "adamw" else (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    opts = [make(m.parameters()) for m in (model, twin)]
    xs, ys = torch.randn(4, 8, 64), torch.randint(3, (4, 8))

    def step(m, opt, i):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xs[i]), ys[i]).backward()
        opt.step()

    for i in range(2):
        step(model, opts[0], i), step(twin, opts[1], i)
    report = model.swap(None, "exact", optimizer=opts[0])
    assert set(report.moved) & {"conv1", "conv2", "fc1"}
    for i in range(2, 4):
        step(model, opts[0], i), step(twin, opts[1], i)
    model.eval(), twin.eval()
    with torch.no_grad():
        x = torch.randn(5, 64)
        assert _max_diff(model(x), twin(x)) <= ATOL


def test_cnn_analysis_and_picture():
    model = _build(dict(image=(1, 8, 8), channels=[4, 5], hidden=[6], n_classes=3), 0)
    assert 0 <= bimt.analysis.modularity(model) <= 1
    assert bimt.analysis.find_modules(model, threshold=0.0)
    x = torch.randn(4, 64)
    rows = bimt.analysis.knockout_table(model, {"c": {"conv1": [0]}},
                                        lambda m: float(m(x).pow(2).mean()))
    assert rows[1]["metric"] != rows[0]["metric"]
    fig = bimt.viz.plot(model)
    gids = {a.get_gid() for a in fig.axes[0].get_children()}
    assert {"weights-0", "weights-3", "neurons-conv1", "output-label"} <= gids


def test_cnn_bad_arguments():
    with pytest.raises(ValueError, match="unknown norm 'group'"):
        bimt.BioCNN(norm="group")
    with pytest.raises(ValueError, match="too small for 2 poolings"):
        bimt.BioCNN(image=(1, 2, 2))


# -- normalisation layers in attach --------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 9999), kind=st.sampled_from(["batch", "layer"]),
       mode=st.sampled_from(["greedy", "exact"]), first=st.booleans())
def test_attach_with_norms_keeps_outputs(seed, kind, mode, first):
    torch.manual_seed(seed)
    norm = lambda n: nn.BatchNorm1d(n) if kind == "batch" else nn.LayerNorm(n)
    layers = ([norm(3)] if first else []) + [nn.Linear(3, 6), norm(6), nn.ReLU(), nn.Linear(6, 5),
                                             nn.Tanh(), norm(5), nn.Linear(5, 2)]
    module = nn.Sequential(*layers)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and t.dim() == 1 and not name.endswith("bias") or "running" in name:
                t.copy_(torch.rand_like(t) + 0.5)
    module.eval()
    wiring = bimt.attach(module, A=2.0)
    x = torch.randn(7, 3)
    with torch.no_grad():
        y0 = module(x)
    report = wiring.swap(None, mode)
    assert report.cost_after <= report.cost_before + 1e-9
    with torch.no_grad():
        assert _max_diff(module(x), y0) <= ATOL
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    assert {n for n in names if "running" in n} <= set(wiring.spec.axes)


def test_attach_norm_size_mismatch_is_named():
    with pytest.raises(ValueError, match=r"LayerNorm\(4,\)\) must normalise the 6 features"):
        bimt.attach(nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(4), nn.Linear(6, 2)))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\)\) follows 6 features"):
        bimt.attach(nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(4), nn.Linear(6, 2)))
