"""Spec builders by model family (bimt.models.families): GPT-2 and Llama from Hugging Face
``transformers`` (random weights from small configs), and torchvision's ResNet.

torchvision does not install beside the pinned CPU torch 2.13 (PyPI's 0.28.0 is a CUDA build
that needs libtorch_cuda; 0.29 pins torch 2.14), so the ResNet builder is tested here on
``ResNet`` / ``BasicBlock`` / ``Bottleneck`` classes written below with torchvision's module
names, sizes and forward (and on the real one when torchvision is importable).

Also the two spec extensions the families need: weights stored ``(in, out)`` (``transposed``)
and heads that move only whole with their folds inside the head (``rigid``,
``fold_order="heads"``).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bimt
from bimt import Group, PermutationSpec, analysis, apply_permutation, attach, swap_pass
from bimt.models import families
from bimt.training.runs import spec_from_dict, spec_to_dict

HAS_HF = importlib.util.find_spec("transformers") is not None
# skipped without transformers, unless BIMT_REQUIRE_EXTRAS is set (.ci/run): then they run, and fail
needs_hf = pytest.mark.skipif(not HAS_HF and not os.environ.get("BIMT_REQUIRE_EXTRAS"),
                              reason="transformers is not installed (pip install 'bimt[hf]')")

F32, F64 = 1e-4, 1e-10  # relative bounds on the outputs after a swap pass


def rel_diff(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def randomize(model: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Every parameter and float buffer random (norm gains around 1, variances positive), so no
    tensor is left at a value that any permutation leaves alone (a LayerNorm's 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = "Norm" in type(module).__name__
            for leaf, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if not t.is_floating_point() or "inv_freq" in leaf:
                    continue
                r = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
                if leaf == "running_var":
                    t.copy_(0.5 + r.abs())
                elif norm and leaf == "weight":
                    t.copy_(1 + 0.5 * r)
                else:
                    t.copy_(scale * r)


def assert_head_blocks(perm, heads: int, rigid: bool) -> None:
    """Every head's slots come from one old head (and, rigid, in their old order)."""
    perm = np.asarray(perm)
    d = len(perm) // heads
    for h in range(heads):
        block = perm[h * d:(h + 1) * d]
        assert (block // d == block[0] // d).all(), f"head {h} mixes heads: {perm}"
        if rigid:
            assert (block % d == np.arange(d)).all(), f"rigid head {h} reordered inside: {perm}"


def check_passes(model, x_fn, tol, seed, top_k=None):
    """Greedy and exact passes, each on its own copy from the same start: the function kept,
    greedy never raises the cost, exact never worse than greedy, heads kept whole."""
    y0 = x_fn(model)
    reports = {}
    for mode in ("greedy", "exact"):
        m = copy.deepcopy(model)
        wiring = m.bimt
        report = wiring.swap(top_k=top_k, mode=mode) if mode == "greedy" else \
            swap_pass(m, wiring.spec, wiring.connection_cost, top_k, mode)
        reports[mode] = report
        assert rel_diff(x_fn(m), y0) <= tol, (mode, seed, rel_diff(x_fn(m), y0))
        for g, perm in report.permutations.items():
            group = wiring.spec.groups[g]
            if group.heads > 1:
                assert_head_blocks(perm, group.heads, group.rigid)
    start = reports["greedy"].cost_before
    assert reports["exact"].cost_before == start
    assert reports["greedy"].cost_after <= start * (1 + 1e-9) + 1e-12
    assert reports["exact"].cost_after <= reports["greedy"].cost_after * (1 + 1e-9) + 1e-12
    return reports


# -- the registry ------------------------------------------------------------------------------
class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class PlainChild(Plain):
    pass


def plain_spec(module, layout="line"):
    groups = [Group("x", bimt.core.geometry.line(3), frozen=True), Group("h", bimt.core.geometry.layout(layout, 4)),
              Group("y", bimt.core.geometry.line(2), frozen=True)]
    axes = {"a.weight": ("h", "x"), "a.bias": ("h",), "b.weight": ("y", "h"), "b.bias": ("y",)}
    charges = {"a.weight": "weight", "a.bias": "bias", "b.weight": "weight", "b.bias": "bias"}
    return PermutationSpec(groups, axes, charges)


@pytest.fixture
def registry():
    saved = dict(families.BUILDERS)
    yield families.BUILDERS
    families.BUILDERS.clear()
    families.BUILDERS.update(saved)


def test_an_unregistered_class_gets_one_error_line_naming_it_and_the_ways_out():
    with pytest.raises(TypeError) as err:
        attach(Plain())
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{__name__}.Plain" in msg or "test_families.Plain" in msg
    assert "bimt.register_spec_builder(" in msg and "write a PermutationSpec" in msg
    assert "bimt.attach(module, spec)" in msg


def test_builders_are_found_by_class_or_qualified_name_along_the_mro(registry):
    bimt.register_spec_builder(Plain, plain_spec)
    w = attach(PlainChild())  # a subclass finds its base's builder
    assert list(w.spec.groups) == ["x", "h", "y"] and w.view == "layered"  # a bare spec: default view
    with pytest.raises(ValueError, match="exists; pass replace=True"):
        bimt.register_spec_builder(Plain, plain_spec)
    registry.pop(Plain)
    bimt.register_spec_builder(families.qualified_name(Plain), plain_spec)  # by name only
    model = Plain()
    x = torch.randn(5, 3)
    y0 = model(x)
    report = attach(model, layout="grid").swap(mode="exact")
    assert model.bimt.spec.groups["h"].coords.shape == (4, 2) and report.cost_after <= report.cost_before
    assert (model(x) - y0).abs().max() <= 1e-6


def test_importing_the_families_imports_neither_transformers_nor_torchvision():
    code = ("import sys, bimt; from bimt.models import families; bimt.attach;"
            "print('transformers' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- transposed weights ------------------------------------------------------------------------
class XW(nn.Module):
    """``y = x @ W + b`` with ``W`` stored ``(in, out)``, as Hugging Face's Conv1D."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Chain(nn.Module):
    def __init__(self, transposed: bool, widths=(3, 5, 4, 2)):
        super().__init__()
        make = (lambda a, b: XW(a, b)) if transposed else nn.Linear
        self.layers = nn.ModuleList(make(a, b) for a, b in zip(widths, widths[1:]))
        self.register_buffer("output_order", torch.arange(widths[-1]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.tanh(x) if i < len(self.layers) - 1 else x
        return torch.zeros_like(x).index_copy(-1, self.output_order, x)


def chain_spec(transposed: bool, widths=(3, 5, 4, 2)):
    groups = [Group(f"l{i}", bimt.core.geometry.line(w), frozen=i == 0) for i, w in enumerate(widths)]
    axes, charges = {"output_order": (f"l{len(widths) - 1}",)}, {}
    for i in range(len(widths) - 1):
        out_g, in_g = f"l{i + 1}", f"l{i}"
        axes[f"layers.{i}.weight"] = (in_g, out_g) if transposed else (out_g, in_g)
        axes[f"layers.{i}.bias"] = (out_g,)
        charges[f"layers.{i}.weight"], charges[f"layers.{i}.bias"] = "weight", "bias"
    names = [f"layers.{i}.weight" for i in range(len(widths) - 1)] if transposed else ()
    return PermutationSpec(groups, axes, charges, transposed=names)


def chain_pair(seed=0):
    torch.manual_seed(seed)
    plain = Chain(False)
    stored = Chain(True)
    with torch.no_grad():
        for a, b in zip(plain.layers, stored.layers):
            b.weight.copy_(a.weight.T)
            b.bias.copy_(a.bias)
    attach(plain, chain_spec(False), A=2.0, y_star=0.5)
    attach(stored, chain_spec(True), A=2.0, y_star=0.5)
    return plain, stored


def test_a_transposed_weight_is_read_as_out_by_in_everywhere():
    plain, stored = chain_pair()
    x = torch.randn(6, 3)
    assert (plain(x) - stored(x)).abs().max() <= 1e-6
    ps, ss = plain.bimt.spec, stored.bimt.spec
    assert ss.interface() == ps.interface() == {"l0": "input", "l3": "output"}
    assert ss.weight_groups("layers.0.weight") == ("l1", "l0") and ss.weight_dims("layers.0.weight") == (1, 0)
    assert stored.bimt.view == plain.bimt.view == "layered"
    assert stored.bimt.cost().item() == pytest.approx(plain.bimt.cost().item(), rel=1e-12)
    for g in ps.groups:
        np.testing.assert_allclose(stored.bimt.connection_cost.placement_matrix(stored, g),
                                   plain.bimt.connection_cost.placement_matrix(plain, g), rtol=1e-12)
    assert analysis.modularity(stored) == pytest.approx(analysis.modularity(plain), rel=1e-12)
    assert analysis.active_neurons(stored) == analysis.active_neurons(plain)
    with analysis.intervene(plain, knock_out={"l2": [1]}), analysis.intervene(stored, knock_out={"l2": [1]}):
        assert (plain(x) - stored(x)).abs().max() <= 1e-6
    for mode in ("greedy", "exact"):
        a, b = plain.bimt.swap(mode=mode), stored.bimt.swap(mode=mode)
        assert a.swaps == b.swaps and a.cost_after == pytest.approx(b.cost_after, rel=1e-12)
        for g in a.permutations:
            assert (a.permutations[g] == b.permutations[g]).all()
        assert (plain(x) - stored(x)).abs().max() <= 1e-6
    from bimt.models.drawing import drawing_of

    np.testing.assert_allclose(drawing_of(stored.bimt).edges[0].W, drawing_of(plain.bimt).edges[0].W)


def test_only_a_charged_two_axis_weight_may_be_declared_transposed():
    spec = chain_spec(False)
    with pytest.raises(ValueError, match="'layers.0.bias' is declared transposed"):
        PermutationSpec(spec.groups, spec.axes, spec.charges, transposed=("layers.0.bias",))


# -- rigid heads and folds laid out head by head -------------------------------------------------
def test_heads_fold_order_indexes_each_fold_inside_its_head():
    # 2 heads of 3 slots, an axis with 2 folds: head h holds entries [6h, 6h + 6), fold f of
    # slot h*3 + i at entry 6h + 3f + i
    g = Group("a", bimt.core.geometry.line(6), heads=2, fold_order="heads")
    spec = PermutationSpec([g], {"w": ("a",)})
    expected = np.array([[0, 3], [1, 4], [2, 5], [6, 9], [7, 10], [8, 11]])
    assert (spec.entry_table("a", 12) == expected).all()
    assert (spec.entry_slots("a", 12) == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]).all()
    w = torch.arange(12.0)
    assert spec.slot_sum(w, "a", 0).tolist() == [3, 5, 7, 15, 17, 19]
    perm = np.array([4, 5, 3, 1, 2, 0])  # head 1 to head 0 (rotated inside), head 0 to head 1
    index = spec.slot_index("a", perm, 12)
    moved = w[index]
    for s in range(6):
        for f in range(2):
            assert moved[expected[s, f]] == w[expected[perm[s], f]]
    assert sorted(spec.slot_index("a", [1, 4], 12).tolist()) == [1, 4, 7, 10]
    # with one head the two orders agree
    one = PermutationSpec([Group("a", bimt.core.geometry.line(6), fold_order="heads")], {"w": ("a",)})
    outer = PermutationSpec([Group("a", bimt.core.geometry.line(6))], {"w": ("a",)})
    assert (one.entry_table("a", 18) == outer.entry_table("a", 18)).all()
    assert torch.equal(one.slot_index("a", perm, 18), outer.slot_index("a", perm, 18))


def test_greedy_and_exact_move_a_rigid_group_by_whole_heads_only():
    from bimt.core.swap.exact import exact_positions
    from bimt.core.swap.greedy import greedy_positions

    rng = np.random.default_rng(0)
    for _ in range(20):
        heads, d = int(rng.integers(2, 5)), int(rng.integers(1, 4))
        n = heads * d
        C = rng.random((n, n))
        pos, _ = greedy_positions(C, rng.random(n), None, heads, rigid=True)
        exact = exact_positions(C, heads, rigid=True)
        for p in (pos, exact):
            perm = np.empty(n, dtype=int)
            perm[p] = np.arange(n)
            assert_head_blocks(perm, heads, rigid=True)
        # exact is the best whole-head placement: no other head assignment beats it
        best = min(sum(C[a * d + i, b * d + i] for a, b in enumerate(order) for i in range(d))
                   for order in __import__("itertools").permutations(range(heads)))
        assert C[np.arange(n), exact].sum() == pytest.approx(best)


def test_new_spec_fields_survive_the_run_files_and_old_files_still_load():
    groups = [Group("r", bimt.core.geometry.line(4)),
              Group("a", bimt.core.geometry.line(4), heads=2, rigid=True, fold_order="heads")]
    spec = PermutationSpec(groups, {"w": ("r", "a")}, {"w": "weight"}, transposed=("w",))
    back = spec_from_dict(spec_to_dict(spec))
    assert back.transposed == ("w",) and back.groups["a"].rigid and back.groups["a"].fold_order == "heads"
    plain = spec_to_dict(chain_spec(False))
    assert "transposed" not in plain and all("rigid" not in g for g in plain["groups"])
    assert spec_from_dict(plain).groups["l1"].fold_order == "outer"
    with pytest.raises(ValueError, match="unknown fold_order 'inner'; allowed: outer, heads"):
        Group("a", [0.5], fold_order="inner")


# -- GPT-2 -------------------------------------------------------------------------------------
def gpt2(seed, n_layer=2, n_head=2, d_head=2, n_inner=None, tied=True, vocab=13, n_positions=12,
         head=True, dtype=torch.float64):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * d_head, n_inner=n_inner,
                        vocab_size=vocab, n_positions=n_positions, tie_word_embeddings=tied,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = (GPT2LMHeadModel if head else GPT2Model)(config).to(dtype).eval()
    randomize(model, seed)
    return model


def hf_output(model, tokens):
    with torch.no_grad():
        out = model(tokens, use_cache=False)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def tokens(vocab, seq, seed, batch=2):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@needs_hf
def test_gpt2_spec_layout():
    model = gpt2(0, n_layer=2, n_head=3, d_head=2, tied=True)
    spec = attach(model).spec
    assert list(spec.groups) == ["resid", "attn0", "mlp0", "attn1", "mlp1"]
    assert spec.groups["attn0"].heads == 3 and spec.groups["mlp1"].size == 24
    assert "lm_head.weight" not in spec.axes  # tied: the same tensor as wte, listed once
    assert spec.charges["transformer.wte.weight"] == spec.charges["transformer.wpe.weight"] == "embedding"
    assert spec.axes["transformer.wte.weight"] == (None, "resid")
    assert spec.weight_groups("transformer.h.0.attn.c_attn.weight") == ("attn0", "resid")
    assert spec.fold(model, "transformer.h.0.attn.c_attn.weight", 1) == 3
    assert set(spec.transposed) == {n for n in spec.weights()}
    assert spec.interface() == {}
    assert ("transformer.ln_f.bias", 0) in spec.axes_of("resid")
    untied = attach(gpt2(0, tied=False)).spec
    assert untied.axes["lm_head.weight"] == (None, "resid") and untied.charges["lm_head.weight"] == "embedding"
    assert attach(gpt2(0, head=False)).spec.groups.keys() == attach(gpt2(0)).spec.groups.keys()


@needs_hf
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), n_layer=st.integers(1, 2), n_head=st.integers(1, 3),
       d_head=st.integers(1, 3), inner=st.sampled_from([None, 5, 7]), tied=st.booleans(),
       head=st.booleans(), seq=st.integers(1, 5), f64=st.booleans(),
       top_k=st.sampled_from([None, 2, 5]), A=st.sampled_from([0.5, 2.0]), p=st.sampled_from([1.0, 2.0]))
def test_gpt2_swap_passes_keep_the_function(seed, n_layer, n_head, d_head, inner, tied, head, seq,
                                            f64, top_k, A, p):
    model = gpt2(seed, n_layer, n_head, d_head, inner, tied, head=head,
                 dtype=torch.float64 if f64 else torch.float32)
    attach(model, A=A, p=p, y_star=0.5)
    x = tokens(13, seq, seed)
    check_passes(model, lambda m: hf_output(m, x), F64 if f64 else F32, seed, top_k)


@needs_hf
def test_gpt2_swaps_move_heads_residual_and_mlp_neurons_and_export_round_trips(tmp_path):
    from transformers import GPT2LMHeadModel

    for tied in (True, False):
        model = gpt2(1, n_layer=2, n_head=3, d_head=2, tied=tied, dtype=torch.float32)
        x = tokens(13, 5, 1)
        y0 = hf_output(model, x)
        wiring = attach(model, A=4.0, y_star=0.2)
        report = wiring.swap(mode="exact")
        assert {"resid", "attn0", "mlp0", "attn1", "mlp1"} <= set(report.moved)
        heads = [report.permutations[f"attn{b}"][::2] // 2 for b in range(2)]
        assert any((h != np.arange(3)).any() for h in heads)  # some head changed places
        assert rel_diff(hf_output(model, x), y0) <= F32
        plain = wiring.export()
        assert "bimt" not in vars(plain)
        plain.save_pretrained(tmp_path / f"gpt2-{tied}")
        back = GPT2LMHeadModel.from_pretrained(tmp_path / f"gpt2-{tied}").eval()
        assert (back.lm_head.weight is back.transformer.wte.weight) == tied
        assert (hf_output(back, x) - hf_output(model, x)).abs().max() <= 1e-5


# -- Llama -------------------------------------------------------------------------------------
def llama(seed, n_layer=2, n_kv=2, n_rep=2, d_head=4, hidden=10, inter=7, tied=False,
          attention_bias=False, mlp_bias=False, head=True, dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layer,
                         num_attention_heads=n_kv * n_rep, num_key_value_heads=n_kv, head_dim=d_head,
                         vocab_size=13, max_position_embeddings=16, tie_word_embeddings=tied,
                         attention_bias=attention_bias, mlp_bias=mlp_bias, rope_theta=100.0,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = (LlamaForCausalLM if head else LlamaModel)(config).to(dtype).eval()
    randomize(model, seed)
    return model


@needs_hf
def test_llama_spec_layout():
    model = llama(0, n_layer=1, n_kv=2, n_rep=3, d_head=4, hidden=24, inter=7, tied=True)
    spec = attach(model).spec
    attn = spec.groups["attn0"]
    assert (attn.size, attn.heads, attn.rigid, attn.fold_order) == (8, 2, True, "heads")
    assert spec.fold(model, "model.layers.0.self_attn.q_proj.weight", 0) == 3
    assert spec.fold(model, "model.layers.0.self_attn.o_proj.weight", 1) == 3
    assert {n for n, _ in spec.axes_of("mlp0")} == {
        f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    assert ("model.norm.weight", 0) in spec.axes_of("resid") and "lm_head.weight" not in spec.axes
    rotary = {n for n, _ in model.named_buffers() if "rotary_emb." in n}  # per layer before 4.45
    assert rotary and set(spec.free) == rotary


@needs_hf
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), n_layer=st.integers(1, 2), n_kv=st.integers(1, 3),
       n_rep=st.sampled_from([1, 1, 2, 3]), d_head=st.sampled_from([2, 4]),
       inter=st.integers(1, 8), tied=st.booleans(), bias=st.booleans(), head=st.booleans(),
       seq=st.integers(1, 5), f64=st.booleans(), top_k=st.sampled_from([None, 3]),
       A=st.sampled_from([0.5, 2.0]))
def test_llama_swap_passes_keep_the_function(seed, n_layer, n_kv, n_rep, d_head, inter, tied,
                                             bias, head, seq, f64, top_k, A):
    hidden = d_head * n_kv * n_rep  # older transformers take head_dim = hidden / heads
    model = llama(seed, n_layer, n_kv, n_rep, d_head, hidden, inter, tied, bias, bias, head,
                  dtype=torch.float64 if f64 else torch.float32)
    attach(model, A=A, y_star=0.5)
    x = tokens(13, seq, seed)
    # Llama's RMSNorm computes in float32 whatever the model's dtype, so reordered features
    # round differently there: a float64 Llama is held to the float32 bound
    check_passes(model, lambda m: hf_output(m, x), F32, seed, top_k)


@needs_hf
def test_llama_swaps_move_whole_kv_groups_and_export_round_trips(tmp_path):
    from transformers import LlamaForCausalLM

    model = llama(2, n_layer=2, n_kv=3, n_rep=2, d_head=2, hidden=12, inter=10, dtype=torch.float32)
    x = tokens(13, 6, 2)
    y0 = hf_output(model, x)
    wiring = attach(model, A=4.0, y_star=0.2)
    report = wiring.swap(mode="exact")
    assert {"resid", "mlp0", "mlp1"} <= set(report.moved)
    # the key/value groups are now at their best places; trade two, and exact trades them back
    apply_permutation(model, wiring.spec, "attn0", np.r_[2:4, 0:2, 4:6])
    back = wiring.swap(mode="exact", groups=["attn0"])
    assert back.cost_after < back.cost_before
    assert (back.permutations["attn0"] == np.r_[2:4, 0:2, 4:6]).all()
    assert rel_diff(hf_output(model, x), y0) <= F32
    wiring.export().save_pretrained(tmp_path / "llama")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert (hf_output(back, x) - hf_output(model, x)).abs().max() <= 1e-5


@needs_hf
def test_llama_needs_rigid_heads_and_folds_inside_heads():
    """Controls: rotary embeddings break under a move inside a head, and with grouped-query
    attention a head move laid out fold-major (the default order) breaks the function."""
    model = llama(3, n_layer=1, n_kv=2, n_rep=2, d_head=4, hidden=16, inter=5)
    x = tokens(13, 6, 3)
    y0 = hf_output(model, x)
    spec = attach(model).spec
    inside = np.array([1, 0, 2, 3, 4, 5, 6, 7])  # two dimensions of head 0 trade places
    whole = np.array([4, 5, 6, 7, 0, 1, 2, 3])  # the two key/value heads trade places
    m = copy.deepcopy(model)
    apply_permutation(m, spec, "attn0", whole)
    assert rel_diff(hf_output(m, x), y0) <= F32  # float32 RMSNorm: see above
    m = copy.deepcopy(model)
    apply_permutation(m, spec, "attn0", inside)
    assert rel_diff(hf_output(m, x), y0) > 1e-3
    outer = copy.deepcopy(spec)
    outer.groups["attn0"] = Group("attn0", spec.groups["attn0"].coords, heads=2, rigid=True)
    m = copy.deepcopy(model)
    apply_permutation(m, outer, "attn0", whole)
    assert rel_diff(hf_output(m, x), y0) > 1e-3


# -- ResNet ------------------------------------------------------------------------------------
# torchvision's ResNet, rewritten with its module names, shapes and forward (torchvision does not
# install beside the pinned CPU torch), with the stage widths as a parameter so tests stay small.
def conv3x3(a, b, stride=1):
    return nn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False)


def conv1x1(a, b, stride=1):
    return nn.Conv2d(a, b, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(inplanes, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=10, planes=(64, 128, 256, 512), stem=64):
        super().__init__()
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for s, (p, n) in enumerate(zip(planes, layers), 1):
            setattr(self, f"layer{s}", self._make_layer(block, p, n, stride=1 if s == 1 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture
def resnet_registered(registry):
    bimt.register_spec_builder(ResNet, families.resnet_spec)  # torchvision's is registered by name


def resnet(seed, block, layers, planes, stem, classes=5, train=False, dtype=torch.float64):
    torch.manual_seed(seed)
    model = ResNet(block, layers, classes, planes, stem).to(dtype)
    randomize(model, seed)
    return model.train(train)


def test_resnet_spec_layout(resnet_registered):
    basic = attach(resnet(0, BasicBlock, [2, 1, 1, 1], (3, 4, 4, 5), 3)).spec
    assert list(basic.groups) == ["image", "stem", "layer1.0.conv1", "layer1.1.conv1", "stage2",
                                  "layer2.0.conv1", "stage3", "layer3.0.conv1", "stage4",
                                  "layer4.0.conv1", "classes"]
    assert basic.groups["image"].frozen and basic.groups["classes"].frozen
    assert basic.axes["layer2.0.downsample.0.weight"] == ("stage2", "stem", None, None)
    assert basic.axes["layer1.1.conv2.weight"] == ("stem", "layer1.1.conv1", None, None)
    assert basic.axes["layer2.0.bn2.running_var"] == ("stage2",) and basic.weight_groups("fc.weight") == ("classes", "stage4")
    assert "layer2.0.downsample.1.num_batches_tracked" in basic.free
    bottle = attach(resnet(0, Bottleneck, [1, 1, 1, 1], (2, 2, 3, 3), 3)).spec
    assert bottle.axes["layer1.0.downsample.0.weight"] == ("stage1", "stem", None, None)
    assert bottle.axes["layer1.0.conv3.weight"] == ("stage1", "layer1.0.conv2", None, None)
    assert bottle.groups["stage1"].size == 8 and bottle.interface() == {"image": "input", "classes": "output"}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), bottleneck=st.booleans(),
       layers=st.sampled_from([(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 2)]),
       planes=st.tuples(*[st.integers(1, 4)] * 4), stem=st.integers(1, 5), train=st.booleans(),
       f64=st.booleans(), top_k=st.sampled_from([None, 2]), A=st.sampled_from([0.5, 2.0]))
def test_resnet_swap_passes_keep_the_function(seed, bottleneck, layers, planes, stem, train, f64,
                                              top_k, A):
    families.BUILDERS.setdefault(ResNet, families.resnet_spec)
    try:
        model = resnet(seed, Bottleneck if bottleneck else BasicBlock, layers, planes, stem,
                       train=train, dtype=torch.float64 if f64 else torch.float32)
        attach(model, A=A, y_star=0.5)
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).to(model.fc.weight.dtype)
        check_passes(model, lambda m: m(x).detach(), F64 if f64 else F32, seed, top_k)
    finally:
        families.BUILDERS.pop(ResNet, None)


def test_resnet_swaps_move_channels_and_export_loads_strictly(resnet_registered):
    for block in (BasicBlock, Bottleneck):
        model = resnet(4, block, [2, 1, 1, 1], (4, 4, 6, 6), 4, dtype=torch.float32)
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
        y0 = model(x).detach()
        wiring = attach(model, A=4.0, y_star=0.2)
        report = wiring.swap(mode="exact")
        assert {"stem", "stage2", "stage4"} <= set(report.moved)
        assert rel_diff(model(x).detach(), y0) <= F32
        fresh = ResNet(block, [2, 1, 1, 1], 5, (4, 4, 6, 6), 4).eval()
        fresh.load_state_dict(wiring.export().state_dict())  # strict
        assert (fresh(x) - model(x)).abs().max() <= 1e-5


def test_resnet_refuses_grouped_convolutions(resnet_registered):
    model = resnet(0, BasicBlock, [1, 1, 1, 1], (2, 2, 2, 2), 2)
    model.layer1[0].conv2 = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2 is a grouped convolution \(groups=2"):
        attach(model)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision is not installed (none installs beside the pinned CPU torch 2.13)")
def test_a_real_torchvision_resnet18():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    randomize(model, 0)
    x = torch.randn(2, 3, 32, 32)
    y0 = model(x).detach()
    report = attach(model).swap(top_k=8)
    assert report.swaps > 0 and rel_diff(model(x).detach(), y0) <= F32
