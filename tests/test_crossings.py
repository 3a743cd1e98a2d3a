"""crossings / module_crossings on hand-built networks whose counts are known."""

import numpy as np
import pytest
import torch

import bimt
from bimt import BioMLP
from bimt.analysis import crossings


def _mlp(*weights, widths):
    model = BioMLP(widths)
    with torch.no_grad():
        for lin, w in zip(model.linears, weights):
            lin.weight.copy_(torch.tensor(w, dtype=torch.float32))
            lin.bias.zero_()
    return model


def test_parallel_wires_do_not_cross():
    m = _mlp([[1, 0], [0, 1]], widths=[2, 2])
    assert crossings(m) == {"crossings": 0, "module_crossings": 0, "n_modules": 2}


def test_two_modules_crossing_once():
    m = _mlp([[0, 1], [1, 0]], widths=[2, 2])
    assert crossings(m) == {"crossings": 1, "module_crossings": 1, "n_modules": 2}


def test_one_module_crossing_is_not_a_module_crossing():
    m = _mlp([[1, 1], [1, 1]], widths=[2, 2])
    assert crossings(m) == {"crossings": 1, "module_crossings": 0, "n_modules": 1}


def test_weak_weights_are_pruned_at_five_percent():
    m = _mlp([[0, 1], [1, 0.04]], widths=[2, 2])  # 0.04 < 5% of 1: gone
    assert crossings(m)["crossings"] == 1
    m = _mlp([[0, 1], [1, 0.06]], widths=[2, 2])  # kept: joins both wires into one module
    assert crossings(m) == {"crossings": 1, "module_crossings": 0, "n_modules": 1}


def test_counts_over_two_layers_and_modules_through_depth():
    # module A: in0 -> h2 -> out1; module B: in2 -> h0 -> out0; in1 unused
    w1 = [[0, 0, 1], [0, 0, 0], [1, 0, 0]]  # (hidden, in)
    w2 = [[1, 0, 0], [0, 0, 1]]  # (out, hidden)
    m = _mlp(w1, w2, widths=[3, 3, 2])
    # layer 1: in0->h2 and in2->h0 cross; layer 2: h0->out0, h2->out1 do not
    assert crossings(m) == {"crossings": 1, "module_crossings": 1, "n_modules": 2}


def test_three_edges_fanning_out_and_back():
    # in0 -> out2, in1 -> out1, in2 -> out0: every pair crosses (3 pairs), three modules
    m = _mlp([[0, 0, 1], [0, 1, 0], [1, 0, 0]], widths=[3, 3])
    assert crossings(m) == {"crossings": 3, "module_crossings": 3, "n_modules": 3}


def test_counts_follow_positions_not_indices():
    m = _mlp([[0, 1], [1, 0]], widths=[2, 2])
    m.swap(mode="exact")  # untangles by moving neurons; the function is unchanged
    assert crossings(m)["crossings"] == 0


def test_folded_token_inputs_share_their_slot():
    model = BioMLP([4, 2, 2], vocab_size=3, n_tokens=2)  # 2 slots, each holding 2 folded neurons
    w = torch.zeros(2, 4)
    w[0, 0] = w[0, 2] = 1.0  # both folds of slot 0 -> hidden 0: one drawn wire
    w[1, 1] = 1.0  # slot 1 -> hidden 1
    with torch.no_grad():
        model.linears[0].weight.copy_(w)
        model.linears[1].weight.copy_(torch.eye(2))
    assert crossings(model) == {"crossings": 0, "module_crossings": 0, "n_modules": 2}


def test_not_a_line_gives_none():
    from bimt.models.transformer import BioTransformer

    assert crossings(BioTransformer(2, 2, d_model=8))["crossings"] is None
    grid = BioMLP([4, 4, 2], layout=["grid", "grid", "line"])
    assert crossings(grid) == {"crossings": None, "module_crossings": None, "n_modules": None}


def test_conv_and_recurrent_networks_give_none():
    from bimt.tasks import get_task
    from bimt.training.config import TrainConfig

    for name in ("cnn-mnist", "two-stream"):
        cfg = TrainConfig(task=name).resolved()
        model = get_task(name).make_model(__import__("dataclasses").asdict(cfg))
        spec = bimt.wiring_of(model).spec if not hasattr(model, "spec") else model.spec
        assert crossings(model, spec)["crossings"] is None, name
