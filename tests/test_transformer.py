"""BioTransformer: its spec keeps the function under every swap, and breaks it when one
residual tensor or one attention neuron moves alone; its cost covers every linear map."""

import copy
import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import nn

import bimt
import bimt.models.drawing
from bimt import apply_permutation, swap_pass
from bimt.models.transformer import BioTransformer
from bimt.viz import plot as plot_transformer_graph

TOL = 1e-5


def make(seed=0, d_in=2, d_out=2, d_model=8, n_blocks=2, n_heads=2, **kw):
    torch.manual_seed(seed)
    return BioTransformer(d_in, d_out, d_model=d_model, n_blocks=n_blocks, n_heads=n_heads, **kw)


def inputs(d_in, seq=4, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, d_in, generator=g)


def randomize_layer_norms(model, seed=2):
    """LayerNorm starts at gain 1, bias 0, which any permutation leaves alone; make it visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_heads_kept(perm, heads):
    """Every head's block of slots is filled from exactly one old head's block."""
    perm = np.asarray(perm)
    d = len(perm) // heads
    for h in range(heads):
        src = perm[h * d:(h + 1) * d] // d
        assert (src == src[0]).all(), f"head {h} mixes neurons of heads {sorted(set(src))}"
    assert sorted(perm[::d] // d) == list(range(heads))


# -- the function survives every swap pass ---------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_blocks=st.integers(1, 2),
    n_heads=st.integers(1, 4),
    d_head=st.integers(1, 4),
    d_in=st.integers(1, 3),
    d_out=st.integers(1, 3),
    seq=st.integers(2, 5),
    top_k=st.sampled_from([1, 3, 8, 30, None]),
    mode=st.sampled_from(["greedy", "exact"]),
    layer_norm=st.booleans(),
    positions=st.booleans(),
    A=st.sampled_from([0.5, 2.0, 5.0]),
    p=st.sampled_from([1.0, 2.0]),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_swap_passes_keep_the_function(seed, n_blocks, n_heads, d_head, d_in, d_out, seq, top_k,
                                       mode, layer_norm, positions, A, p, reduction):
    # float64, so a permutation's only trace is rounding far below the tolerance (in float32 a
    # LayerNorm over two features turns reordered sums into 1e-5 differences)
    model = make(seed, d_in, d_out, n_heads * d_head, n_blocks, n_heads, mlp_ratio=2,
                 layer_norm=layer_norm, n_positions=8 if positions else None, A=A, p=p,
                 reduction=reduction).double()
    if layer_norm:
        randomize_layer_norms(model, seed)
    x = inputs(d_in, seq, seed=seed + 1).double()
    with torch.no_grad():
        y0 = model(x)
    for _ in range(2):  # the second pass starts from permuted tensors and order buffers
        report = swap_pass(model, model.spec, model.wiring.connection_cost, top_k, mode)
        assert report.cost_after <= report.cost_before * (1 + 1e-9) + 1e-12
        for b in range(n_blocks):
            assert_heads_kept(report.permutations.get(f"attn{b}", np.arange(n_heads * d_head)),
                              n_heads)
        with torch.no_grad():
            assert max_diff(model(x), y0) <= 1e-10


def test_swaps_happen_on_the_papers_model():
    model = make(0, 2, 2, d_model=32, n_blocks=2, n_heads=1)
    x = inputs(2, 5)
    y0 = model(x).detach()
    for mode in ("greedy", "exact"):
        report = model.swap(top_k=30, mode=mode)
        assert report.swaps > 0 and report.cost_after < report.cost_before
        assert {"resid", "attn0", "mlp0", "attn1", "mlp1"} <= set(report.moved)
        assert max_diff(model(x).detach(), y0) <= TOL


def test_optimizer_state_moves_with_the_neurons():
    a = make(3, n_heads=2, layer_norm=True)
    b = copy.deepcopy(a)
    x, target = inputs(2, 4), inputs(2, 4, seed=9)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (a, b)]

    def step(m, opt):
        opt.zero_grad()
        ((m(x) - target) ** 2).mean().backward()
        opt.step()

    for m, opt in zip((a, b), opts):
        step(m, opt)
    report = b.swap(top_k=None, mode="exact", optimizer=opts[1])
    assert report.swaps > 0
    for m, opt in zip((a, b), opts):
        step(m, opt)
    assert max_diff(a(x), b(x)) <= TOL


# -- the residual tie is necessary --------------------------------------------------------
RESID_AXES = lambda n_blocks: {
    ("embed.weight", 0), ("embed.bias", 0), ("unembed.weight", 1), ("ln_f.weight", 0),
    ("ln_f.bias", 0),
} | {
    (f"blocks.{b}.{name}", dim)
    for b in range(n_blocks)
    for name, dim in [
        ("attn.qkv.weight", 1), ("attn.proj.weight", 0), ("attn.proj.bias", 0),
        ("mlp.fc1.weight", 1), ("mlp.fc2.weight", 0), ("mlp.fc2.bias", 0),
        ("ln1.weight", 0), ("ln1.bias", 0), ("ln2.weight", 0), ("ln2.bias", 0),
    ]
}


def test_spec_layout():
    model = make(0, 3, 2, d_model=8, n_blocks=2, n_heads=4, layer_norm=True)
    spec = model.spec
    assert list(spec.groups) == ["input", "resid", "attn0", "mlp0", "attn1", "mlp1", "output"]
    assert set(spec.axes_of("resid")) == RESID_AXES(2)
    assert set(make(n_blocks=1).spec.axes_of("resid")) == {
        a for a in RESID_AXES(1) if ".ln" not in f".{a[0]}"
    }
    for b in range(2):
        assert spec.groups[f"attn{b}"].heads == 4 and spec.groups[f"attn{b}"].size == 8
        assert set(spec.axes_of(f"attn{b}")) == {
            (f"blocks.{b}.attn.qkv.weight", 0), (f"blocks.{b}.attn.qkv.bias", 0),
            (f"blocks.{b}.attn.proj.weight", 1),
        }
        assert spec.fold(model, f"blocks.{b}.attn.qkv.weight", 0) == 3
        assert spec.fold(model, f"blocks.{b}.attn.proj.weight", 1) == 1
        assert spec.groups[f"mlp{b}"].size == 32
    assert set(spec.axes_of("input")) == {("input_order", 0), ("embed.weight", 1)}
    assert set(spec.axes_of("output")) == {
        ("output_order", 0), ("unembed.weight", 0), ("unembed.bias", 0)
    }


@pytest.mark.parametrize("name,dim", sorted(RESID_AXES(2)))
def test_permuting_one_residual_tensor_alone_breaks_the_function(name, dim):
    model = make(4, n_heads=2, layer_norm=True)
    randomize_layer_norms(model)
    x = inputs(2, 4)
    y0 = model(x).detach()
    perm = torch.roll(torch.arange(8), 3)

    alone = copy.deepcopy(model)
    with torch.no_grad():
        t = alone.get_parameter(name)
        t.copy_(t.index_select(dim, perm))
    assert max_diff(alone(x).detach(), y0) > 1e-3

    tied = copy.deepcopy(model)
    apply_permutation(tied, tied.spec, "resid", perm.numpy())
    assert max_diff(tied(x).detach(), y0) <= TOL


def test_residual_stream_is_in_slot_order():
    model = make(5, n_heads=2)
    x = inputs(2, 4)
    before = [s.detach() for s in model.residual_stream(x)]
    assert len(before) == 1 + 2 * model.n_blocks
    assert max_diff(model.unembed(before[-1]), model(x)) <= TOL  # output_order is identity
    report = model.swap(top_k=None, mode="exact")
    perm = torch.as_tensor(report.permutations["resid"])
    assert not torch.equal(perm, torch.arange(8))
    after = model.residual_stream(x)
    for s_before, s_after in zip(before, after):
        assert max_diff(s_after, s_before[..., perm]) <= TOL
    single = model.residual_stream(x[0])
    assert single[0].shape == (4, 8)


# -- attention neurons stay in their head ------------------------------------------------
def test_a_neuron_leaving_its_head_changes_the_function():
    model = make(6, d_model=6, n_blocks=1, n_heads=2)  # heads {0,1,2}, {3,4,5}
    x = inputs(2, 5)
    y0 = model(x).detach()

    def permuted(perm):
        m = copy.deepcopy(model)
        apply_permutation(m, m.spec, "attn0", perm)
        return m(x).detach()

    assert max_diff(permuted([3, 1, 2, 0, 4, 5]), y0) > 1e-4  # q, k, v of slot 0 cross heads
    assert max_diff(permuted([1, 2, 0, 4, 3, 5]), y0) <= TOL  # moves inside each head
    assert max_diff(permuted([4, 3, 5, 1, 2, 0]), y0) <= TOL  # heads trade places, reshuffled


def test_permuting_q_k_or_v_alone_changes_the_function():
    """The three folds must move together: q_j with k_j (scores), v_j with proj column j."""
    model = make(7, d_model=6, n_blocks=1, n_heads=2)
    x = inputs(2, 5)
    y0 = model(x).detach()
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    for fold in range(3):
        m = copy.deepcopy(model)
        with torch.no_grad():
            w = m.blocks[0].attn.qkv.weight
            rows = torch.arange(18)
            rows[fold * 6:(fold + 1) * 6] = perm + fold * 6
            w.copy_(w[rows])
        assert max_diff(m(x).detach(), y0) > 1e-4


@pytest.mark.parametrize("mode", ["greedy", "exact"])
def test_heads_trade_places_and_keep_the_function(mode):
    """Head 0 (left slots) talks only to the right end of the residual stream and head 1 to the
    left end: no move inside a head helps much, trading the heads does."""
    torch.manual_seed(8)
    model = BioTransformer(2, 2, d_model=4, n_blocks=1, n_heads=2, A=2.0)
    with torch.no_grad():
        qkv, proj = model.blocks[0].attn.qkv, model.blocks[0].attn.proj
        qkv.weight.mul_(0.01)
        proj.weight.mul_(0.01)
        for j in range(4):
            target = 3 if j < 2 else 0
            for f in range(3):
                qkv.weight[f * 4 + j, target] = 1.0 + 0.1 * j + 0.3 * f
            proj.weight[target, j] = 1.0 - 0.2 * j
    x = inputs(2, 5)
    y0 = model(x).detach()
    report = model.swap(top_k=None, mode=mode, groups=["attn0"])
    perm = report.permutations["attn0"]
    assert_heads_kept(perm, 2)
    assert perm[0] // 2 == 1 and perm[2] // 2 == 0, perm  # the heads traded places
    assert report.cost_after < report.cost_before
    assert max_diff(model(x).detach(), y0) <= TOL


# -- the cost covers every linear map -----------------------------------------------------
def brute_force_cost(model, A, y_star):
    """Every nn.Linear of the model charged by hand: |w| * (A |x_out - x_in| + y*), |b| * y*."""
    total, linears = 0.0, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        linears += 1
        W = module.weight.detach().double()
        n_out = W.shape[0] // (3 if name.endswith("attn.qkv") else 1)  # Q, K, V share a slot
        x_out = (torch.arange(W.shape[0]) % n_out + 0.5) / n_out
        x_in = (torch.arange(W.shape[1]) + 0.5) / W.shape[1]
        total += float((W.abs() * (A * (x_out[:, None] - x_in[None, :]).abs() + y_star)).sum())
        if module.bias is not None:
            total += float(module.bias.detach().double().abs().sum()) * y_star
    if model.pos_embed is not None:
        total += float(model.pos_embed.detach().double().abs().sum()) * y_star
    return total, linears


@pytest.mark.parametrize("n_blocks,n_heads,positions", [(1, 1, False), (2, 4, True)])
def test_cost_covers_every_linear_map(n_blocks, n_heads, positions):
    model = make(9, 3, 2, d_model=8, n_blocks=n_blocks, n_heads=n_heads, layer_norm=True,
                 n_positions=6 if positions else None, A=2.0, y_star=0.5)
    cost = model.wiring.connection_cost
    linear_params = {
        f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.Linear)
        for p, _ in mod.named_parameters()
    }
    charged = {n for n, _ in cost.terms()}
    assert charged == linear_params | ({"pos_embed"} if positions else set())
    for stage in ("before", "after"):
        expected, linears = brute_force_cost(model, 2.0, 0.5)
        assert linears == 2 + 4 * n_blocks
        assert cost.total(model) == pytest.approx(expected, rel=1e-9)
        assert float(model.cost().detach()) == pytest.approx(expected, rel=1e-5)
        model.swap(top_k=5)


# -- causality ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer_norm", [False, True])
def test_causal_mask(layer_norm):
    model = make(10, n_heads=2, layer_norm=layer_norm, n_positions=6)
    x = inputs(2, 6)
    y = model(x).detach()
    for t in range(5):
        x2 = x.clone()
        x2[:, t + 1:] = 10 * torch.randn_like(x2[:, t + 1:])
        y2 = model(x2).detach()
        assert torch.allclose(y2[:, :t + 1], y[:, :t + 1], atol=1e-6)
        assert max_diff(y2[:, t + 1:], y[:, t + 1:]) > 1e-3


def test_shapes_and_errors():
    model = make(11, 3, 1, n_heads=2)
    assert model(inputs(3, 5)).shape == (3, 5, 1)
    assert model(inputs(3, 5)[0]).shape == (5, 1)
    assert [a.shape for a in model.attention_patterns(inputs(3, 5))] == [(3, 2, 5, 5)] * 2
    with pytest.raises(ValueError, match="n_heads"):
        BioTransformer(2, 2, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="features"):
        model(inputs(2, 5))
    with pytest.raises(ValueError, match="n_positions"):
        make(n_positions=3)(inputs(2, 5))


# -- the Fig. 7 plot -----------------------------------------------------------------------
def test_plot_transformer_graph():
    model = make(12, n_heads=2, input_labels=["x", "y"], output_labels=["yhat", "zero"])
    model.swap(top_k=None, mode="exact")
    fig = plot_transformer_graph(model)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    weights = [c for c in ax.collections if (c.get_gid() or "").startswith("weights-")]
    assert len(weights) == 2 + 4 * 2  # embed, per block qkv, proj, fc1, fc2, unembed
    assert max(np.max(c.get_linewidths()) for c in weights) == pytest.approx(2.0)
    texts = {t.get_text() for t in ax.texts}
    assert {"x", "y", "yhat", "zero", "Embed", "Atn0", "Atn1", "MLP0", "Res1", "Res4", "output"} <= texts
    # the residual stream: each of its neurons joined to its next state, four times
    streams = [c for c in ax.collections if c.get_gid() == "streams"]
    assert sum(len(c.get_segments()) for c in streams) == 4 * model.d_model
    # the output projection reads the v neurons (the third fold row of the attention row)
    drawing = bimt.models.drawing.drawing_of(model.bimt)
    proj = next(e for e in drawing.edges if e.name == "blocks.0.attn.proj.weight")
    assert (proj.out_fold, proj.in_fold) == (0, 2) and drawing.rows[proj.inp].fold == 3
    fig = plot_transformer_graph(model, input_labels=["a", "b"])
    assert {"a", "b"} <= {t.get_text() for t in fig.axes[0].texts}
    fig.savefig(io.BytesIO(), format="png")  # renders without pyplot
