"""bimt.BioMLP and bimt.attach: construction, interface order under swaps, and clear errors."""

import copy
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bimt
from conftest import build, inputs, state

ATOL = 1e-5


def _max_diff(a, b):
    return float((a - b).detach().abs().max())


# -- BioMLP ------------------------------------------------------------------------------------
def test_biomlp_shapes_and_spec():
    model = build(dict(widths=[4, 6, 5, 2]))
    assert model(torch.randn(3, 4)).shape == (3, 2)
    assert list(model.spec.groups) == ["layer0", "layer1", "layer2", "layer3"]
    assert model.spec.axes["linears.1.weight"] == ("layer2", "layer1")
    assert model.spec.axes["input_order"] == ("layer0",)
    assert model.spec.axes["output_order"] == ("layer3",)
    assert model.spec.charges["linears.0.bias"] == "bias"
    hidden = model.hidden(torch.randn(3, 4))
    assert [h.shape[-1] for h in hidden] == [4, 6, 5, 2]


def test_token_model_embeds_and_folds():
    model = build(dict(widths=[6, 5, 4], vocab_size=7, n_tokens=2))
    assert model.embedding.shape == (7, 3)
    assert model.spec.groups["layer0"].size == 3
    assert model.spec.axes["embedding"] == (None, "layer0")
    x = torch.tensor([[1, 5], [6, 0]])
    assert model(x).shape == (2, 4)
    emb = model.hidden(x)[0]
    torch.testing.assert_close(emb[0], torch.cat([model.embedding[1], model.embedding[5]]))
    assert "input_order" not in dict(model.named_buffers())


def test_deepcopy_rebinds_wiring():
    model = build(dict(widths=[3, 4, 2]))
    other = copy.deepcopy(model)
    assert other.wiring.module is other and model.wiring.module is model
    other.swap(None, "exact")
    assert model.wiring.connection_cost.total(model) == pytest.approx(
        copy.deepcopy(model).wiring.connection_cost.total(model))


def test_state_dict_carries_interface_order():
    torch.manual_seed(0)
    model = bimt.BioMLP([5, 6, 4], A=3.0)
    x = torch.randn(4, 5)
    y0 = model(x).detach()
    model.swap(None, "exact")
    assert not torch.equal(model.input_order, torch.arange(5)) or \
        not torch.equal(model.output_order, torch.arange(4))
    fresh = bimt.BioMLP([5, 6, 4], A=3.0)
    fresh.load_state_dict(model.state_dict())
    assert _max_diff(fresh(x).detach(), y0) <= ATOL


def test_layout_single_array_for_all_layers():
    coords = np.array([[0.0], [0.5], [1.0]])
    model = bimt.BioMLP([3, 3, 3], layout=coords)
    for g in model.spec.groups.values():
        np.testing.assert_array_equal(g.coords, coords)
    per_layer = bimt.BioMLP([3, 2], layout=[coords, np.array([[0.2], [0.8]])])
    np.testing.assert_array_equal(per_layer.spec.groups["layer1"].coords, [[0.2], [0.8]])


def test_mnist_like_model():
    torch.manual_seed(0)
    model = bimt.BioMLP([16, 9, 9, 4], layout=["grid", "grid", "grid", "ring"], A=2.0,
                        y_star=0.5, reduction="mean", freeze_inputs=True, distance_free=["last"])
    assert model.spec.groups["layer0"].frozen and model.spec.groups["layer1"].coords.shape == (9, 2)
    assert model.wiring.connection_cost.distance_free == {"linears.2.weight"}
    x = torch.rand(5, 16)
    y0 = model(x).detach()
    report = model.swap(3, "exact")
    assert "layer0" not in report.permutations
    assert _max_diff(model(x).detach(), y0) <= ATOL


# -- BioMLP bad inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [[], [3]])
def test_widths_too_short(widths):
    with pytest.raises(ValueError, match=r"at least 2 layers .*got " + re.escape(str(widths))):
        bimt.BioMLP(widths)


@pytest.mark.parametrize("widths", [[3, 0], [3, -2, 1], [3, 2.5], [True, 2]])
def test_widths_not_positive_integers(widths):
    with pytest.raises(ValueError, match=r"positive integer, got " + re.escape(str(widths))):
        bimt.BioMLP(widths)


def test_grid_layer_not_square():
    with pytest.raises(ValueError, match="square number of neurons, got 5"):
        bimt.BioMLP([4, 5, 4], layout="grid")
    with pytest.raises(ValueError, match="square number of neurons, got 3"):
        bimt.BioMLP([6, 4], layout="grid", vocab_size=5, n_tokens=2)  # 3 embedding slots


@pytest.mark.parametrize("n_tokens", [2, 4, 0, -1, True])
def test_fold_must_divide_its_layer(n_tokens):
    with pytest.raises(ValueError, match=rf"n_tokens={n_tokens!r} must .* input width 5"):
        bimt.BioMLP([5, 3], vocab_size=4, n_tokens=n_tokens)


def test_other_bad_settings():
    with pytest.raises(ValueError, match="vocab_size must be a positive integer, got 0"):
        bimt.BioMLP([4, 2], vocab_size=0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        bimt.BioMLP([4, 2], activation="swish")
    with pytest.raises(ValueError, match="layout lists 2 layers, but the network has 3"):
        bimt.BioMLP([4, 3, 2], layout=["line", "line"])
    with pytest.raises(ValueError, match=r"layer of 3 neurons must have shape \(3, d\), got \(2, 1\)"):
        bimt.BioMLP([3, 2], layout=[np.zeros((2, 1)), "line"])
    with pytest.raises(ValueError, match="unknown layout 'hex'"):
        bimt.BioMLP([3, 2], layout="hex")


# -- attach: any user Sequential -------------------------------------------------------------
ACTS = [nn.ReLU, nn.SiLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Identity, nn.LeakyReLU]


@st.composite
def sequentials(draw):
    widths = draw(st.lists(st.integers(1, 7), min_size=2, max_size=5))
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=draw(st.booleans())))
        if i < len(widths) - 2 or draw(st.booleans()):
            layers.append(draw(st.sampled_from(ACTS))())
    return widths, layers


@settings(max_examples=80, deadline=None)
@given(net=sequentials(), mode=st.sampled_from(["greedy", "exact"]),
       top_k=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 999),
       A=st.sampled_from([0.5, 2.0]), p=st.sampled_from([1.0, 2.0]),
       freeze=st.tuples(st.booleans(), st.booleans()))
def test_attach_keeps_outputs(net, mode, top_k, seed, A, p, freeze):
    widths, layers = net
    torch.manual_seed(seed)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    module = nn.Sequential(*layers)
    x = torch.randn(5, widths[0])
    y0 = module(x).detach()
    wiring = bimt.attach(module, A=A, y_star=0.3, p=p, freeze_inputs=freeze[0],
                         freeze_outputs=freeze[1])
    assert isinstance(module, nn.Sequential)
    assert _max_diff(module(x).detach(), y0) == 0  # attaching alone changes nothing
    report = wiring.swap(top_k, mode)
    assert report.cost_after <= report.cost_before + 1e-9 * max(1.0, report.cost_before)
    assert _max_diff(module(x).detach(), y0) <= ATOL
    if freeze[0]:
        assert torch.equal(module.bimt_input_order, torch.arange(widths[0]))
    if freeze[1]:
        assert torch.equal(module.bimt_output_order, torch.arange(widths[-1]))
    # attaching again reuses the buffers and hooks, and swaps on through the new handle
    again = bimt.attach(module, A=A, y_star=0.3, p=p)
    assert len(module._forward_pre_hooks) == 1 and len(module._forward_hooks) == 1
    again.swap(top_k, "exact")
    assert _max_diff(module(x).detach(), y0) <= ATOL


def test_attach_moves_interface_neurons_but_hooks_keep_order():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 5))
    with torch.no_grad():  # every layer wired "crossed": the best placement reverses the inputs
        for lin in (module[0], module[2]):
            lin.weight.mul_(0.01)
            lin.weight[torch.arange(6), torch.arange(6).flip(0)] = 1.0
    x = torch.randn(7, 6)
    y0 = module(x).detach()
    wiring = bimt.attach(module, A=3.0, y_star=0.1)
    assert set(wiring.spec.groups) == {"layer0", "layer1", "layer2", "layer3"}
    assert wiring.spec.axes["2.weight"] == ("layer2", "layer1")
    for mode in ("greedy", "exact"):
        wiring.swap(None, mode)
        assert _max_diff(module(x).detach(), y0) <= ATOL
    assert not torch.equal(module.bimt_input_order, torch.arange(6))
    # the layers alone now compute in slot order, which has changed: the hooks translate
    def raw(v):
        for layer in module:
            v = layer(v)
        return v
    assert _max_diff(raw(x), y0) > 1e-3
    slots_in = x.index_select(-1, module.bimt_input_order)
    by_interface = bimt.models.wiring.restore_order(raw(slots_in), module.bimt_output_order)
    assert _max_diff(by_interface, y0) <= ATOL


def test_attach_cost_and_manual_permute():
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    wiring = bimt.attach(module, A=1.0, y_star=1.0)
    W0, b0, W1 = module[0].weight, module[0].bias, module[2].weight
    d0 = torch.tensor([[abs((j + 0.5) / 3 - (k + 0.5) / 4) + 1 for j in range(3)]
                       for k in range(4)])
    d1 = torch.tensor([[abs((j + 0.5) / 4 - (k + 0.5) / 2) + 1 for j in range(4)]
                       for k in range(2)])
    expected = (W0.abs() * d0).sum() + b0.abs().sum() + (W1.abs() * d1).sum()
    torch.testing.assert_close(wiring.cost(), expected)
    x = torch.randn(4, 3)
    y0 = module(x).detach()
    wiring.permute("layer1", [3, 1, 0, 2])
    wiring.permute("layer0", [2, 0, 1])
    wiring.permute("layer2", [1, 0])
    assert _max_diff(module(x).detach(), y0) <= ATOL
    assert "Wiring(Sequential" in repr(wiring)
    l1 = wiring.with_cost(A=0.0)
    assert l1.A == 0 and l1.y_star == 1.0


@pytest.mark.parametrize("bad, name", [(nn.Conv1d(4, 4, 1), "Conv1d"),
                                       (nn.Softmax(dim=-1), "Softmax")])
def test_attach_refuses_non_elementwise_layers(bad, name):
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), bad, nn.Linear(4, 2))
    with pytest.raises(ValueError, match=rf"layer 2 \({name}\) cannot be handled"):
        bimt.attach(module)
    assert not hasattr(module, "bimt_input_order")  # nothing attached on failure


def test_attach_other_bad_inputs():
    with pytest.raises(ValueError, match="layer 0 gives 4 features but layer 2 expects 5"):
        bimt.attach(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match=r"layer 1 \(PReLU with 4 parameters\)"):
        bimt.attach(nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no nn.Linear"):
        bimt.attach(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match=r"no spec builder for torch\.nn\.modules\.linear\.Linear"):
        bimt.attach(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="square number of neurons, got 3"):
        bimt.attach(nn.Sequential(nn.Linear(4, 3)), layout="grid")
    module = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="A must be a finite number >= 0, got -2"):
        bimt.attach(module, A=-2)
    assert not hasattr(module, "bimt_input_order") and not module._forward_pre_hooks
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        bimt.attach(module, reduction="median")
    with pytest.raises(ValueError, match="y_star must be a finite number >= 0, got -0.5"):
        bimt.attach(nn.Sequential(nn.Linear(4, 3)), y_star=-0.5)


def test_reattach_after_interface_change_refused():
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 4))
    bimt.attach(module)
    module.append(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="attached with 4 inputs and 4 outputs, but now has 4 "
                                         "inputs and 2 outputs"):
        bimt.attach(module)


def test_attach_on_a_prebuilt_spec_mismatch():
    module = nn.Sequential(nn.Linear(3, 4))
    spec = bimt.models.sequential_spec(nn.Sequential(nn.Linear(3, 5)), input_order=None,
                                       output_order=None)
    with pytest.raises(ValueError, match=r"'0.weight' has length 4, which is not a positive multiple"):
        bimt.Wiring(module, spec)


def test_token_model_swaps_keep_outputs_and_embedding_moves():
    torch.manual_seed(2)
    model = bimt.BioMLP([8, 6, 5], vocab_size=6, n_tokens=2, A=2.0, y_star=0.5,
                        reduction="mean")
    x = inputs(model, batch=9)
    y0 = model(x).detach()
    before = state(model)
    report = model.swap(None, "exact")
    assert _max_diff(model(x).detach(), y0) <= ATOL
    perm = report.permutations.get("layer0")
    assert perm is not None and (perm != np.arange(4)).any()
    torch.testing.assert_close(model.embedding, before["embedding"][:, perm], rtol=0, atol=0)
    cols = np.concatenate([perm, perm + 4])
    rows = report.permutations.get("layer1", np.arange(6))
    torch.testing.assert_close(model.linears[0].weight,
                               before["linears.0.weight"][rows][:, cols], rtol=0, atol=0)
