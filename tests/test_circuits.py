"""Circuits: on a BioGPT whose weights are set by hand so that head L0.h0 copies the previous
token and head L1.h1 is an induction head (and everything else is small random noise), the
probes, knock-outs, modules and find_circuit must name exactly that circuit."""

import math

import numpy as np
import pytest
import torch

from bimt.analysis.circuits import (
    find_circuit, induction_scores, knockout_effects, previous_token_scores, spatial_module,
    unit_modules, units,
)
from bimt.models.gpt import BioGPT
from bimt.core.swap import apply_permutation, swap_pass
from bimt.tasks.language import induction_accuracy, induction_data

V, T = 12, 24  # vocabulary, sequence length
D = 2 * V + T  # residual: token one-hot | position one-hot | previous-token one-hot
TOK, POS, PREV = 0, V, V + T
QK = math.sqrt(60.0)  # query and key entries: matching logits 60 / sqrt(d_head), near one-hot


def hand_built(seed=0):
    """Two layers of two heads (d_head 24), a 1x MLP, no LayerNorm, tied unembedding.

    L0.h0: the query at t holds position t - 1, keys hold their position, so it attends to
    t - 1 and writes that token (2x) into the PREV block. L1.h1: the query holds the current
    token, keys hold their previous token, so it attends to the position right after the
    current token's earlier occurrence and writes that position's token, 10x, into the TOK
    block, which the tied unembedding reads. L0.h1, L1.h0 and the MLPs keep GPT-2's small
    random initialisation. Every entry set by hand is at least a quarter of the largest in
    its tensor, so pruning at 10% keeps the circuit's wiring and drops the noise.
    """
    torch.manual_seed(seed)
    model = BioGPT(V, n_positions=T, d_model=D, n_layers=2, n_heads=2, mlp_ratio=1,
                   layer_norm=False)
    dh = D // 2
    with torch.no_grad():
        model.wte.weight.zero_()
        model.wte.weight[:, TOK:TOK + V] = torch.eye(V)
        model.wpe.weight.zero_()
        model.wpe.weight[:, POS:POS + T] = torch.eye(T)

        def head(layer, h, q, k, v, out):
            attn = model.blocks[layer].attn
            rows = slice(h * dh, (h + 1) * dh)
            Wq, Wk, Wv = attn.qkv.weight[:D], attn.qkv.weight[D:2 * D], attn.qkv.weight[2 * D:]
            for W in (Wq, Wk, Wv):
                W[rows] = 0.0
            attn.proj.weight[:, rows] = 0.0
            for i, col in q:
                Wq[h * dh + i, col] = QK
            for i, col in k:
                Wk[h * dh + i, col] = QK / 2 if layer == 1 else QK  # PREV holds 2x one-hot
            for i, col in v:
                Wv[h * dh + i, col] = 2.0
            for row, i, value in out:
                attn.proj.weight[row, h * dh + i] = value

        # previous-token head: q_i = [t == i + 1], k_i = [s == i], v = token, out -> PREV
        head(0, 0, q=[(i, POS + i + 1) for i in range(T - 1)], k=[(i, POS + i) for i in range(T)],
             v=[(i, TOK + i) for i in range(V)], out=[(PREV + i, i, 1.0) for i in range(V)])
        # induction head: q = current token, k = previous token, v = token, out -> TOK (x10)
        head(1, 1, q=[(i, TOK + i) for i in range(V)], k=[(i, PREV + i) for i in range(V)],
             v=[(i, TOK + i) for i in range(V)], out=[(TOK + i, i, 5.0) for i in range(V)])
    return model


@pytest.fixture(scope="module")
def batch():
    return induction_data(64, vocab_size=V, length=T, min_segment=3, max_segment=8, seed=5)


def test_the_hand_built_model_does_induction(batch):
    model = hand_built()
    with torch.no_grad():
        acc = induction_accuracy(model(batch.tokens), batch)
    assert acc > 0.95, acc
    # unpredictable positions stay near chance: the model cannot know a fresh filler token
    prev = previous_token_scores(model, batch)
    ind = induction_scores(model, batch)
    assert prev.shape == ind.shape == (2, 2)
    assert prev[0, 0] > 0.95 and prev[[0, 1, 1], [1, 0, 1]].max() < 0.5, prev
    assert ind[1, 1] > 0.9 and ind[[0, 0, 1], [0, 1, 0]].max() < 0.5, ind


def test_knockouts_single_out_the_two_heads(batch):
    model = hand_built()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    effects = knockout_effects(model, batch, induction_accuracy, neurons=False)
    assert set(effects) == {"L0.h0", "L0.h1", "L1.h0", "L1.h1"}
    assert effects["L0.h0"] > 0.5 and effects["L1.h1"] > 0.9, effects
    assert abs(effects["L0.h1"]) < 0.05 and abs(effects["L1.h0"]) < 0.05, effects
    for k, v in model.state_dict().items():  # left as it was found
        assert torch.equal(v, state[k]), k


def test_find_circuit_on_the_hand_built_model(batch):
    model = hand_built()
    circuit = find_circuit(model, batch, induction_accuracy)
    assert circuit.heads == ["L0.h0", "L1.h1"]
    assert circuit.neurons == []  # 2 x 48 MLP neurons were knocked out one by one too
    assert len(circuit.effects) == 4 + 2 * D
    assert circuit.baseline > 0.95
    assert circuit.set_effect > 0.9
    assert circuit.heads_effect == circuit.set_effect  # no neurons: the heads are the circuit
    assert circuit.other_head in ("L0.h1", "L1.h0") and abs(circuit.other_effect) < 0.05
    assert circuit.one_module, circuit.module
    # the two heads meet in the residual stream at the previous-token block
    assert set(range(PREV, PREV + V)) <= set(circuit.module["slots"]["resid"])
    assert circuit.scores["L0.h0"]["previous_token"] > 0.95
    assert circuit.scores["L1.h1"]["induction"] > 0.9


def test_the_circuit_follows_its_heads_through_swaps(batch):
    """Heads trade places (by hand in block 1, then wherever an exact pass puts them) and the
    residual stream is shuffled: the logits and the circuit stay, named by the new places."""
    model = hand_built()
    with torch.no_grad():
        before = model(batch.tokens)
    dh = D // 2
    apply_permutation(model, model.spec, "attn1", np.r_[np.arange(dh, D), np.arange(dh)])
    apply_permutation(model, model.spec, "resid", np.random.default_rng(0).permutation(D))
    report = swap_pass(model, model.spec, model.wiring.connection_cost, None, "exact")
    with torch.no_grad():
        assert (model(batch.tokens) - before).abs().max() <= 1e-4 * before.abs().max()
    # the head now at place p of block b came from place start[b][p * dh] // dh
    start = {0: np.arange(D), 1: np.r_[np.arange(dh, D), np.arange(dh)]}
    moved = {b: start[b][report.permutations.get(f"attn{b}", np.arange(D))] for b in (0, 1)}
    expect = sorted(f"L{b}.h{p}" for b, h0 in ((0, 0), (1, 1)) for p in range(2)
                    if moved[b][p * dh] // dh == h0)
    assert "L1.h0" in expect  # the induction head now sits in head place 0
    circuit = find_circuit(model, batch, induction_accuracy, neurons=False)
    assert circuit.heads == expect
    assert circuit.set_effect > 0.9 and circuit.one_module


def test_spatial_module_definition():
    model = hand_built()
    assert spatial_module(model, ["L0.h0", "L1.h1"])["one_module"]
    # the noise heads keep no weight above 10% of their tensors' largest: not connected
    noise = spatial_module(model, ["L0.h1", "L1.h0"])
    assert not noise["connected"] and not noise["one_module"]
    # one head of the circuit and a noise head of another layer: not connected either
    assert not spatial_module(model, ["L0.h0", "L1.h0"])["connected"]
    # MLP neurons 3 and 5 of block 0 with 4 between them left out: not contiguous
    gaps = spatial_module(model, ["L0.n3", "L0.n5"], threshold=0.0)
    assert gaps["connected"] and not gaps["contiguous"] and not gaps["one_module"]
    assert spatial_module(model, ["L0.n3", "L0.n4", "L0.n5"], threshold=0.0)["contiguous"]
    with pytest.raises(ValueError, match="L9.h0"):
        spatial_module(model, ["L9.h0"])


def test_unit_modules_group_heads_by_kept_weights():
    model = hand_built()
    modules = unit_modules(model)
    circuit = [m for m in modules if "L0.h0" in m["heads"]]
    assert len(circuit) == 1 and circuit[0]["heads"] == ["L0.h0", "L1.h1"]
    assert all("L0.h1" not in m["heads"] and "L1.h0" not in m["heads"] for m in modules)
    table = units(model)
    assert table["L1.h1"] == ("attn1", list(range(D // 2, D)))
    assert table["L0.n7"] == ("mlp0", [7])


def test_find_circuit_checks_its_threshold(batch):
    with pytest.raises(ValueError, match="threshold"):
        find_circuit(hand_built(), batch, induction_accuracy, threshold=0.0)


def test_heads_effect_knocks_out_only_the_circuits_heads(batch, monkeypatch):
    # a circuit of a head and an MLP neuron: heads_effect is the drop without the head alone
    import bimt.analysis.circuits as circuits

    model = hand_built()
    effects = {name: 0.0 for name in circuits.units(model)}
    effects["L1.h1"], effects["L0.n3"] = 0.9, 0.5
    monkeypatch.setattr(circuits, "knockout_effects", lambda *a, **k: dict(effects))
    circuit = find_circuit(model, batch, induction_accuracy)
    assert circuit.heads == ["L1.h1"] and circuit.neurons == ["L0.n3"]
    alone = circuit.baseline - circuits._knocked(model, batch, induction_accuracy, ["L1.h1"],
                                                 circuits.units(model))
    assert circuit.heads_effect == pytest.approx(alone) and circuit.heads_effect > 0.5
