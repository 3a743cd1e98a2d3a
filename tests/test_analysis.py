"""bimt.analysis on hand-built networks whose answers are known."""

import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import bimt  # noqa: E402
import bimt.viz  # noqa: E402
from bimt import BioMLP, attach  # noqa: E402
from bimt import analysis as A  # noqa: E402

# Two disconnected modules in a 4-4-2 network:
#   inputs 0,1 -> hidden 0,1 -> output 0      inputs 2,3 -> hidden 2,3 -> output 1
W1 = {(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.8, (1, 1): 1.2,   # (hidden, input): w
      (2, 2): 2.0, (2, 3): 0.3, (3, 2): 0.7, (3, 3): 1.0}
W2 = {(0, 0): 1.5, (0, 1): -0.9, (1, 2): 0.6, (1, 3): -1.1}  # (output, hidden): w
MODULE_A = {("layer0", 0), ("layer0", 1), ("layer1", 0), ("layer1", 1), ("layer2", 0)}
MODULE_B = {("layer0", 2), ("layer0", 3), ("layer1", 2), ("layer1", 3), ("layer2", 1)}


def two_modules() -> BioMLP:
    m = BioMLP([4, 4, 2])
    with torch.no_grad():
        for lin, entries in zip(m.linears, (W1, W2)):
            lin.weight.zero_()
            for (i, j), w in entries.items():
                lin.weight[i, j] = w
        m.linears[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.05]))
        m.linears[1].bias.copy_(torch.tensor([-0.2, 0.4]))
    return m


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


# -- modularity -----------------------------------------------------------------------------
def test_modularity_matches_newman_by_hand():
    m = two_modules()
    # Newman: Q = 1/(2m) * sum_ij [A_ij - k_i k_j / (2m)] delta(c_i, c_j), with A_ij = |w_ij|.
    nodes = [("layer0", s) for s in range(4)] + [("layer1", s) for s in range(4)] + \
            [("layer2", s) for s in range(2)]
    idx = {n: i for i, n in enumerate(nodes)}
    Adj = np.zeros((10, 10))
    for (h, i), w in W1.items():
        Adj[idx[("layer1", h)], idx[("layer0", i)]] = Adj[idx[("layer0", i)], idx[("layer1", h)]] = abs(w)
    for (o, h), w in W2.items():
        Adj[idx[("layer2", o)], idx[("layer1", h)]] = Adj[idx[("layer1", h)], idx[("layer2", o)]] = abs(w)
    k = Adj.sum(1)
    two_m = Adj.sum()
    c = np.array([0 if n in MODULE_A else 1 for n in nodes])
    same = c[:, None] == c[None, :]
    Q = ((Adj - np.outer(k, k) / two_m) * same).sum() / two_m
    # the same number in closed form: two disjoint parts holding fractions p and 1-p of the
    # total weight give Q = p + (1-p) - p^2 - (1-p)^2 = 2 p (1-p)
    wa = sum(abs(w) for (h, _), w in W1.items() if h < 2) + sum(abs(w) for (o, _), w in W2.items() if o == 0)
    wb = sum(abs(w) for w in W1.values()) + sum(abs(w) for w in W2.values()) - wa
    p = wa / (wa + wb)
    assert Q == pytest.approx(2 * p * (1 - p), rel=1e-12)
    assert A.modularity(m) == pytest.approx(Q, rel=1e-9)
    assert A.communities(m) == [MODULE_A, MODULE_B]


def test_weight_graph_construction_and_folds():
    m = two_modules()
    G = A.weight_graph(m)
    assert G.number_of_nodes() == 10 and G.number_of_edges() == 12
    assert G[("layer1", 1)][("layer0", 0)]["weight"] == pytest.approx(0.8)
    assert G[("layer2", 0)][("layer1", 1)]["weight"] == pytest.approx(0.9)  # |w|

    # token model: input slot s holds neurons s and s + 2 (two tokens); their entries sum
    torch.manual_seed(0)
    t = BioMLP([4, 3, 2], vocab_size=5, n_tokens=2)
    with torch.no_grad():
        t.linears[0].weight[2].zero_()       # hidden neuron 2 gets nothing in ...
        t.linears[1].weight[:, 2].zero_()    # ... and sends nothing: isolated, still a node
    W = t.linears[0].weight.detach().abs()
    G = A.weight_graph(t)
    assert G.number_of_nodes() == 2 + 3 + 2
    for i in range(2):
        for s in range(2):
            assert G[("layer1", i)][("layer0", s)]["weight"] == pytest.approx(float(W[i, s] + W[i, s + 2]))
    assert G.degree(("layer1", 2)) == 0
    assert {("layer1", 2)} in A.communities(t)
    assert {("layer1", 2)} not in A.communities(t, min_size=2)


def test_every_form_of_the_network_gives_the_same_number():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    w = attach(seq)
    q = A.modularity(w)
    assert A.modularity((w.module, w.spec)) == q
    assert A.modularity(A.weight_graph(w)) == q
    assert "connection_cost" in A.summary(w)
    assert A.modularity(seq) == q  # the handle lives on the module
    with pytest.raises(TypeError, match=r"bimt\.attach"):
        A.modularity(nn.Sequential(nn.Linear(4, 6)))


def test_modularity_is_deterministic_across_hash_seeds():
    torch.manual_seed(2)
    m = BioMLP([6, 10, 10, 3])
    q = A.modularity(m)
    assert A.modularity(m) == q
    code = (
        "import torch; from bimt import BioMLP; from bimt.analysis import modularity;"
        "torch.manual_seed(2); print(repr(modularity(BioMLP([6, 10, 10, 3]))))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert float(out.stdout.strip()) == q


def test_all_zero_network_has_no_modularity():
    m = BioMLP([3, 4, 2])
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    with pytest.raises(ValueError, match="zero"):
        A.modularity(m)
    s = A.summary(m)
    assert s["modularity"] is None and s["n_modules"] == 0 and s["n_nonzero"] == 0


# -- modules and active neurons -------------------------------------------------------------
def test_find_modules_and_relative_threshold():
    m = two_modules()
    assert [set(c) for c in A.find_modules(m)] == [MODULE_A, MODULE_B]
    assert A.module_slots(A.find_modules(m)[1]) == {"layer0": [2, 3], "layer1": [2, 3], "layer2": [1]}
    with torch.no_grad():  # a weak link (0.05 of layer 1's max 2.0) between the modules
        m.linears[0].weight[0, 3] = 0.1
    assert len(A.find_modules(m, threshold=0.1)) == 2
    assert len(A.find_modules(m, threshold=0.0)) == 1


def test_tree_roots_cut_the_shared_output_layer():
    # two modules that both vote on outputs 0 and 1 (embedding slots 0,1 and 2,3)
    m = BioMLP([8, 4, 3], vocab_size=7, n_tokens=2)
    with torch.no_grad():
        W = torch.zeros(4, 8)
        for h, slots in ((0, (0, 1)), (1, (0, 1)), (2, (2, 3)), (3, (2, 3))):
            for s in slots:
                W[h, s] = 1.0       # token a
                W[h, s + 4] = -1.0  # token b, same slot
        m.linears[0].weight.copy_(W)
        m.linears[1].weight.zero_()
        m.linears[1].weight[:2, :] = 0.5
    assert len(A.find_modules(m)) == 1
    roots = A.tree_roots(m)
    assert [r["name"] for r in roots] == ["A", "B"]
    assert [r["input_slots"] for r in roots] == [[0, 1], [2, 3]]
    assert roots[0]["neurons"] == [("layer0", 0), ("layer0", 1), ("layer1", 0), ("layer1", 1)]
    assert roots[1]["output_slots"] == {"layer2": [0, 1]}


def test_active_neurons():
    m = two_modules()
    with torch.no_grad():
        m.linears[0].weight[3].zero_()        # hidden 3: nothing in ...
        m.linears[1].weight[:, 3].zero_()     # ... nothing out: dead
        m.linears[0].weight[1] *= 0.01        # hidden 1: weak (bias does not count)
        m.linears[1].weight[:, 1] *= 0.01
    active = A.active_neurons(m)
    assert active["layer1"] == [0, 2]
    assert A.active_neurons(m, threshold=0)["layer1"] == [0, 1, 2]
    assert list(active) == ["layer0", "layer1", "layer2"]


# -- pruning frontier -----------------------------------------------------------------------
def test_pruning_frontier_ends_at_the_nonzero_count_and_restores():
    m = two_modules()
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    target = m(x).detach()

    def mse(model):
        return float(((model(x) - target) ** 2).mean())

    k = 12 + 6  # 12 nonzero weights + 6 nonzero biases
    before = snapshot(m)
    frontier = A.pruning_frontier(m, mse, n_points=7)
    assert_same(m, before)
    counts = [n for n, _ in frontier]
    assert counts[0] == 0 and counts[-1] == k and counts == sorted(set(counts))
    assert frontier[-1][1] == 0.0
    assert frontier[0][1] == pytest.approx(float((target ** 2).mean()))  # all zero -> outputs 0
    assert A.pruning_frontier(m, mse, counts=[0, 5, k])[1][0] == 5
    # pruning weights only: keeping all 12 nonzero weights changes nothing
    assert A.pruning_frontier(m, mse, counts=[12], kinds=("weight",))[0][1] == 0.0

    def boom(model):
        raise RuntimeError("evaluation failed")

    with pytest.raises(RuntimeError):
        A.pruning_frontier(m, boom)
    assert_same(m, before)
    fig = bimt.viz.plot_pruning_frontier({"bimt": frontier, "other": frontier[1:]})
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)


# -- interventions --------------------------------------------------------------------------
def test_knocking_out_one_module_leaves_the_other_output():
    m = two_modules()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    base = m(x).detach()
    before = snapshot(m)
    with A.intervene(m, knock_out={"layer1": [2, 3]}):
        y = m(x).detach()
    assert torch.equal(y[:, 0], base[:, 0])
    assert not torch.allclose(y[:, 1], base[:, 1])
    assert torch.allclose(y[:, 1], torch.full_like(y[:, 1], 0.4))  # only the bias is left
    assert_same(m, before)
    # a whole module from find_modules, output neuron included: that output reads 0
    with A.intervene(m, knock_out=A.find_modules(m)[1]):
        y = m(x).detach()
    assert torch.equal(y[:, 0], base[:, 0]) and torch.equal(y[:, 1], torch.zeros(16))
    assert_same(m, before)


def test_intervene_restores_exactly_even_on_error():
    m = two_modules()
    before = snapshot(m)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(KeyError):
        with A.intervene(m, zero={"linears.0.weight": (2, 2), "linears.1.weight": mask,
                                  "linears.0.bias": None}, knock_out=[("layer0", 0)]):
            assert m.linears[0].weight[2, 2] == 0 and m.linears[1].weight[0, 1] == 0
            assert not m.linears[0].bias.any() and not m.linears[0].weight[:, 0].any()
            assert m.linears[0].weight[1, 1] == 1.2
            raise KeyError("user code fails inside")
    assert_same(m, before)
    with pytest.raises(ValueError, match="groups"):
        with A.intervene(m, knock_out={"layer9": [0]}):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with A.intervene(m, knock_out={"layer1": [4]}):
            pass
    assert_same(m, before)


def test_knockout_table_and_folds():
    m = two_modules()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    base = m(x).detach()

    def err(i):
        return lambda model: float(((model(x) - base)[:, i] ** 2).mean())

    rows = A.knockout_table(m, {"A": A.find_modules(m)[0], "B": {"layer1": [2, 3]}}, err(0))
    assert [r["module"] for r in rows] == ["baseline", "A", "B"]
    assert rows[0]["metric"] == 0.0 and rows[1]["metric"] > 0 and rows[2]["metric"] == 0.0
    assert rows[2]["knocked_out"] == {"layer1": [2, 3]} and rows[1]["n_neurons"] == 5
    json.dumps(rows)
    # knocking out an embedding slot zeroes the outgoing weights of both tokens' neurons
    t = BioMLP([4, 3, 2], vocab_size=5, n_tokens=2)
    with A.intervene(t, knock_out={"layer0": [1]}):
        assert not t.linears[0].weight[:, [1, 3]].any() and t.linears[0].weight[:, [0, 2]].all()


# -- neurons that carry a quantity ----------------------------------------------------------
def test_neuron_correlation_finds_a_planted_neuron():
    rng = np.random.default_rng(0)
    q = rng.uniform(-1, 1, 300)
    acts = rng.normal(size=(300, 8))
    acts[:, 5] = -3 * q + 0.01 * rng.normal(size=300)
    acts[:, 2] = 0.1  # constant neuron
    r = A.neuron_correlation(acts, q)
    assert r.shape == (8,) and r[2] == 0.0 and np.all(np.isfinite(r))
    for i in (0, 1, 5, 7):
        assert r[i] == pytest.approx(np.corrcoef(acts[:, i], q)[0, 1], abs=1e-12)
    i, best = A.best_neuron(torch.tensor(acts), torch.tensor(q))
    assert i == 5 and best < -0.99
    with pytest.raises(ValueError, match="samples"):
        A.neuron_correlation(acts, q[:10])
    with pytest.raises(ValueError, match="constant"):
        A.neuron_correlation(acts, np.ones(300))
    # straight from a model's activations
    m = two_modules()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    h = A.activations(m, x)
    assert list(h) == ["layer0", "layer1", "layer2"] and h["layer1"].shape == (64, 4)
    assert A.best_neuron(h["layer0"], x[:, 3])[0] == 3


# -- embeddings -----------------------------------------------------------------------------
def token_model():
    m = BioMLP([6, 4, 3], vocab_size=8, n_tokens=2)
    angles = 2 * np.pi * np.arange(8) / 8
    E = np.zeros((8, 3))
    E[:, 0] = 2.0 * np.cos(angles)
    E[:, 1] = 0.5 * np.sin(angles)  # slot 2 stays zero: a dead neuron
    with torch.no_grad():
        m.embedding.copy_(torch.tensor(E, dtype=torch.float32))
        m.linears[0].weight.zero_()
        m.linears[0].weight[0, [0, 1, 3, 4]] = 1.0  # hidden 0 reads slots 0 and 1 of both tokens
    return m, E


def test_embedding_matrix_is_normalized_per_neuron():
    m, E = token_model()
    raw = A.embedding_matrix(m, normalize=False)
    assert raw.shape == (8, 3) and np.allclose(raw, E, atol=1e-6)
    norm = A.embedding_matrix(m)
    top = np.abs(raw).max(0)
    assert np.allclose(norm[:, :2], raw[:, :2] / top[:2])
    assert np.allclose(np.abs(norm[:, :2]).max(0), 1.0) and not norm[:, 2].any()
    with pytest.raises(ValueError, match="embedding"):
        A.embedding_matrix(two_modules())


def test_embedding_plots():
    m, _ = token_model()
    fig = bimt.viz.plot_embedding_pairs(m)
    assert fig.axes[0].get_xlabel() == "neuron 0" and fig.axes[0].get_ylabel() == "neuron 1"
    plt.close(fig)
    fig = bimt.viz.plot_embedding_pairs(m, pairs=[(0, 1), (1, 2)])
    plt.close(fig)
    fig = bimt.viz.plot_embedding_heatmap(m)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["0", "1"]  # the active embedding neurons
    plt.close(fig)
    plt.close(bimt.viz.plot_embedding_heatmap(m, active_only=False))


# -- summary ---------------------------------------------------------------------------------
def test_summary_is_json():
    m = two_modules()
    s = A.summary(m, evaluate=lambda model: torch.tensor(0.25))
    json.loads(json.dumps(s, allow_nan=False))
    assert s["n_modules"] == 2 and s["n_communities"] == 2 and s["module_sizes"] == [5, 5]
    assert s["modularity"] == pytest.approx(A.modularity(m))
    assert s["n_params"] == 16 + 8 + 6 and s["n_nonzero"] == 18 and s["metric"] == 0.25
    assert s["active_neurons"] == {"layer0": 4, "layer1": 4, "layer2": 2}
