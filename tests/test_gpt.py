"""BioGPT: every swap pass keeps the logits (float32 and float64), the residual tie and the
heads are what keep them, the optimizer's state moves along, and the cost charges what the
spec says."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bimt import CostSettings, apply_permutation, swap_pass
from bimt.models.gpt import BioGPT


def make(seed=0, vocab=11, n_positions=8, d_head=3, n_heads=2, n_layers=2, dtype=torch.float32,
         **kw):
    torch.manual_seed(seed)
    model = BioGPT(vocab, n_positions, d_head * n_heads, n_layers, n_heads, **kw).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # GPT-2's init is tiny; make every weight, gain and bias count
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.5 if p.dim() > 1 else 0.3))
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
    return model


def tokens(vocab, seq=6, batch=3, seed=2):
    return torch.randint(vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(2, 13),
    n_layers=st.integers(1, 2),
    n_heads=st.integers(1, 3),
    d_head=st.integers(1, 4),
    mlp_ratio=st.sampled_from([0, 1, 2]),
    tie=st.booleans(),
    layer_norm=st.booleans(),
    bias=st.booleans(),
    seq=st.integers(1, 7),
    top_k=st.sampled_from([1, 3, None]),
    mode=st.sampled_from(["greedy", "exact", "untangle"]),
    A=st.sampled_from([0.5, 2.0]),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_swap_passes_keep_the_logits(seed, vocab, n_layers, n_heads, d_head, mlp_ratio, tie,
                                     layer_norm, bias, seq, top_k, mode, A, reduction):
    kw = dict(seed=seed, vocab=vocab, d_head=d_head, n_heads=n_heads, n_layers=n_layers,
              mlp_ratio=mlp_ratio, tie=tie, layer_norm=layer_norm, bias=bias,
              settings=CostSettings(A=A, y_star=0.5, reduction=reduction))
    x = tokens(vocab, seq, seed=seed)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        model = make(dtype=dtype, **kw)
        with torch.no_grad():
            y0 = model(x)
        for _ in range(2):  # the second pass starts from permuted tensors
            report = swap_pass(model, model.spec, model.wiring.connection_cost, top_k, mode)
            assert report.cost_after <= report.cost_before * (1 + 1e-9) + 1e-12
            with torch.no_grad():
                assert rel_diff(model(x), y0) <= tol, (dtype, mode)
            for b in range(n_layers):  # whole heads only
                perm = report.permutations.get(f"attn{b}", np.arange(n_heads * d_head))
                src = perm.reshape(n_heads, d_head) // d_head
                assert (src == src[:, :1]).all()


def test_swaps_happen_and_lower_the_cost():
    model = make(0, vocab=16, d_head=4, n_heads=2, mlp_ratio=4)
    x = tokens(16)
    y0 = model(x).detach()
    for mode in ("greedy", "exact"):
        report = model.swap(top_k=8, mode=mode)
        assert report.swaps > 0 and report.cost_after < report.cost_before
        assert report.cost_after == pytest.approx(model.wiring.connection_cost.total(model),
                                                  rel=1e-12)
        assert {"resid", "mlp0", "mlp1"} <= set(report.moved)
        assert {"attn0", "attn1"} & set(report.moved)
        assert rel_diff(model(x).detach(), y0) <= 1e-5


def test_optimizer_state_moves_with_the_neurons():
    a = make(3, vocab=9, d_head=2, n_heads=2, mlp_ratio=2, tie=False)
    b = copy.deepcopy(a)
    x = tokens(9, 6)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (a, b)]

    def step(m, opt):
        opt.zero_grad()
        logits = m(x)
        nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 9), x[:, 1:].reshape(-1)).backward()
        opt.step()

    for m, opt in zip((a, b), opts):
        step(m, opt)
    report = b.swap(top_k=None, mode="exact", optimizer=opts[1])
    assert report.swaps > 0
    for _ in range(2):
        for m, opt in zip((a, b), opts):
            step(m, opt)
    assert rel_diff(b(x).detach(), a(x).detach()) <= 1e-5
    # without the optimizer the moments stay behind and the runs part
    c, d = make(3, vocab=9, d_head=2, n_heads=2, mlp_ratio=2, tie=False), None
    d = copy.deepcopy(c)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (c, d)]
    for m, opt in zip((c, d), opts):
        step(m, opt)
    d.swap(top_k=None, mode="exact")
    for _ in range(2):
        for m, opt in zip((c, d), opts):
            step(m, opt)
    assert rel_diff(d(x).detach(), c(x).detach()) > 1e-4


RESID = lambda n_layers, tie: {
    ("wte.weight", 1), ("wpe.weight", 1), ("ln_f.weight", 0), ("ln_f.bias", 0),
} | ({("lm_head.weight", 1)} if not tie else set()) | {
    (f"blocks.{b}.{name}", dim)
    for b in range(n_layers)
    for name, dim in [
        ("ln1.weight", 0), ("ln1.bias", 0), ("attn.qkv.weight", 1), ("attn.proj.weight", 0),
        ("attn.proj.bias", 0), ("ln2.weight", 0), ("ln2.bias", 0), ("mlp.fc1.weight", 1),
        ("mlp.fc2.weight", 0), ("mlp.fc2.bias", 0),
    ]
}


@pytest.mark.parametrize("tie", [True, False])
def test_spec_ties_the_residual_stream(tie):
    model = make(0, tie=tie, mlp_ratio=2)
    spec = model.spec
    assert list(spec.groups) == ["resid", "attn0", "mlp0", "attn1", "mlp1"]
    assert set(spec.axes_of("resid")) == RESID(2, tie)
    assert spec.interface() == {}  # tokens in, logits out: nothing to keep in order
    for b in range(2):
        assert spec.groups[f"attn{b}"].heads == 2
        assert spec.fold(model, f"blocks.{b}.attn.qkv.weight", 0) == 3
        assert spec.groups[f"mlp{b}"].size == 12
    embeddings = {n for n, k in spec.charges.items() if k == "embedding"}
    assert embeddings == {"wte.weight", "wpe.weight"} | (set() if tie else {"lm_head.weight"})
    assert not any(".ln" in n or n.startswith("ln_f") for n in spec.charges)


@pytest.mark.parametrize("name,dim", sorted(RESID(2, False)))
def test_permuting_one_residual_tensor_alone_changes_the_logits(name, dim):
    model = make(4, tie=False, mlp_ratio=1)
    x = tokens(11)
    y0 = model(x).detach()
    perm = torch.roll(torch.arange(6), 2)
    alone = copy.deepcopy(model)
    with torch.no_grad():
        t = alone.get_parameter(name)
        t.copy_(t.index_select(dim, perm))
    assert rel_diff(alone(x).detach(), y0) > 1e-3
    apply_permutation(model, model.spec, "resid", perm.numpy())
    assert rel_diff(model(x).detach(), y0) <= 1e-5


def test_a_neuron_leaving_its_head_changes_the_logits():
    model = make(6, d_head=3, n_heads=2, n_layers=1)
    x = tokens(11)
    y0 = model(x).detach()

    def permuted(perm):
        m = copy.deepcopy(model)
        apply_permutation(m, m.spec, "attn0", perm)
        return m(x).detach()

    assert rel_diff(permuted([3, 1, 2, 0, 4, 5]), y0) > 1e-4
    assert rel_diff(permuted([1, 2, 0, 4, 3, 5]), y0) <= 1e-5
    assert rel_diff(permuted([4, 3, 5, 1, 2, 0]), y0) <= 1e-5


def test_cost_charges_embeddings_and_linear_maps():
    model = make(9, mlp_ratio=1, tie=True)
    s = model.wiring.settings
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            W = module.weight.detach().double()
            n_out = W.shape[0] // (3 if name.endswith("attn.qkv") else 1)
            x_out = (torch.arange(W.shape[0], dtype=torch.float64) % n_out + 0.5) / n_out
            x_in = (torch.arange(W.shape[1], dtype=torch.float64) + 0.5) / W.shape[1]
            total += float((W.abs() * (s.A * (x_out[:, None] - x_in[None, :]).abs() + s.y_star)).sum())
            total += float(module.bias.detach().double().abs().sum()) * s.y_star
    for E in (model.wte.weight, model.wpe.weight):
        total += float(E.detach().double().abs().sum()) * s.y_star
    assert model.wiring.connection_cost.total(model) == pytest.approx(total, rel=1e-10)
    assert float(model.cost().detach()) == pytest.approx(total, rel=1e-5)


def test_causal_and_shapes():
    model = make(10, mlp_ratio=1)
    x = tokens(11, 7)
    y = model(x).detach()
    assert y.shape == (3, 7, 11)
    assert model(x[0]).shape == (7, 11)
    for t in range(6):
        x2 = x.clone()
        x2[:, t + 1:] = (x2[:, t + 1:] + 1) % 11
        y2 = model(x2).detach()
        assert torch.allclose(y2[:, :t + 1], y[:, :t + 1], atol=1e-6)
        assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-4
    stream = model.residual_stream(x)
    assert len(stream) == 1 + 2 * 2 and stream[-1].shape == (3, 7, 6)
    assert torch.allclose(model.unembed(stream[-1]), y, atol=1e-5)
    patterns = model.attention_patterns(x)
    assert [p.shape for p in patterns] == [(3, 2, 7, 7)] * 2
    assert torch.allclose(patterns[0].sum(-1), torch.ones(3, 2, 7), atol=1e-6)
    assert (patterns[0].triu(1) == 0).all()
    assert len(make(0, mlp_ratio=0).residual_stream(x)) == 1 + 2


def test_bad_inputs_are_refused():
    model = make(11)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(ValueError, match="n_positions=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="n_heads=4 must divide d_model=6"):
        BioGPT(5, 8, 6, 1, 4)
    with pytest.raises(ValueError, match="mlp_ratio"):
        BioGPT(5, 8, 6, 1, 2, mlp_ratio=-1)
    with pytest.raises(TypeError, match="CostSettings"):
        BioGPT(5, 8, 6, 1, 2, settings={"A": 2.0})
    with pytest.raises(ValueError, match="layout names unknown groups"):
        BioGPT(5, 8, 6, 1, 2, layout={"mlp7": "line"})


def test_gpt_bench_times_a_pass_as_training_runs_it_and_reports_its_costs():
    from bimt.experiments.bench_gpt import _timed_pass

    torch.manual_seed(0)
    model = BioGPT(40, n_positions=16, d_model=16, n_layers=2, n_heads=2)
    before = model.wiring.connection_cost.total(model)
    for mode in ("greedy", "exact"):
        seconds, report = _timed_pass(model, 4, mode)
        assert seconds > 0
        assert report.cost_before == pytest.approx(before, rel=1e-12)  # read off the clock
        assert report.cost_after <= report.cost_before * (1 + 1e-9)
    assert model.wiring.connection_cost.total(model) == before  # the pass ran on a copy
