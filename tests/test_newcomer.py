"""A new researcher's own models, end to end: attached Sequentials (with norms) reloaded, pruned
and resumed from a fresh instance; a residual module trained, drawn, analysed, viewed and
exported; crossings on anything ``wiring_of`` accepts; the pictures' keys and colours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import bimt
from bimt import Group, PermutationSpec, attach, wiring_of
from bimt.core import geometry
from bimt.training.runs import analyze_run, load_model

QUIET = dict(progress=False, plots=False)


def _data(n_in=4, n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, n_in, generator=g) * 2 - 1
    Y = torch.stack([X[:, 0] * X[:, 1], X[:, 2] - X[:, 3] ** 2], 1)
    return X[:90], Y[:90], X[90:], Y[90:]


def _sequential(norm=None):
    def make():
        torch.manual_seed(0)
        layers = [nn.Linear(4, 8)]
        if norm == "layer":
            layers.append(nn.LayerNorm(8))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.SiLU(), nn.Linear(8, 2)]
        return nn.Sequential(*layers)
    return make


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_attached_sequential_reloads_prunes_and_resumes_from_a_fresh_instance(tmp_path, norm):
    make = _sequential(norm)
    data = _data()
    run = tmp_path / "seq"
    model = make()
    attach(model, A=1.0, y_star=0.2)
    kw = dict(data=data, loss="mse", steps=40, lr=1e-2, swap_every=10, top_k=4, out=run, **QUIET)
    result = bimt.fit(model=model, **kw)
    x = data[2]
    model.eval()
    # reload into a fresh (unattached) instance: the run's wiring and order buffers come with it
    fresh, cfg = load_model(run, model=make())
    assert cfg.task == "module" and torch.allclose(fresh(x), model(x), atol=1e-6)
    # prune and knock out through the run directory, as the CLI's message recommends
    evaluate = lambda m: float(nn.functional.mse_loss(m(x), data[3]))
    report = analyze_run(run, prune=True, knockout=True, echo=False, model=make(), evaluate=evaluate)
    assert report["pruning_frontier"] and report["test_loss"] == pytest.approx(result.metrics["test_loss"], rel=1e-5)
    # resume from a fresh instance (the run is complete: its final numbers again)
    resumed = bimt.fit(model=make(), data=data, loss="mse", out=run, resume=True, **QUIET)
    assert resumed.metrics["test_loss"] == result.metrics["test_loss"]


def test_a_resumed_module_run_continues_exactly(tmp_path, monkeypatch):
    """Interrupted at its 2nd checkpoint (a KeyboardInterrupt there), then resumed from a fresh
    instance: the numbers of the run that never stopped."""
    import bimt.training.loop as loop

    make, data = _sequential("layer"), _data()
    kw = dict(data=data, loss="mse", steps=30, lr=1e-2, swap_every=5, top_k=4, checkpoint_every=10,
              **QUIET)
    whole = make()
    attach(whole)
    full = bimt.fit(model=whole, out=tmp_path / "whole", **kw)
    real, saves = loop.save_checkpoint, []

    def stop_after_second(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_second)
    first = make()
    attach(first)
    with pytest.raises(KeyboardInterrupt):
        bimt.fit(model=first, out=tmp_path / "cut", **kw)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    resumed = bimt.fit(model=make(), data=data, loss="mse", out=tmp_path / "cut", resume=True, **QUIET)
    for key in ("train_loss", "test_loss", "connection_cost"):
        assert resumed.metrics[key] == full.metrics[key], key


class ResMLP(nn.Module):
    """x -> x + W2 silu(W1 x) -> readout: a residual stream the blocks read and write."""

    def __init__(self, d=6, hidden=8, n_blocks=2):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, d))
                                    for _ in range(n_blocks))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def res_spec(model: ResMLP) -> PermutationSpec:
    d, hidden = model.out.in_features, model.blocks[0][0].out_features
    groups = [Group("x", geometry.line(4), frozen=True), Group("stream", geometry.line(d)),
              Group("y", geometry.line(2), frozen=True)]
    groups += [Group(f"h{b}", geometry.line(hidden)) for b in range(len(model.blocks))]
    axes, charges = {}, {}

    def linear(name, out_g, in_g):
        axes[f"{name}.weight"], axes[f"{name}.bias"] = (out_g, in_g), (out_g,)
        charges[f"{name}.weight"], charges[f"{name}.bias"] = "weight", "bias"

    linear("inp", "stream", "x")
    for b in range(len(model.blocks)):
        linear(f"blocks.{b}.0", f"h{b}", "stream")
        linear(f"blocks.{b}.2", "stream", f"h{b}")
    linear("out", "y", "stream")
    return PermutationSpec(groups, axes, charges)


def test_a_residual_module_trains_and_is_drawn_analysed_viewed_and_exported(tmp_path):
    from bimt.training.view import write_report

    torch.manual_seed(0)
    model = ResMLP()
    attach(model, res_spec(model), y_star=0.5)
    run = tmp_path / "res"
    data = _data()
    result = bimt.fit(model=model, data=data, loss="mse", steps=60, lr=1e-2, swap_every=20, top_k=4,
                      out=run, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_loss"] == result.metrics["test_loss"]
    assert (run / "graph.png").exists() and (run / "graph.svg").exists()
    drawing = bimt.models.drawing.drawing_of(model.bimt)
    assert [r.name for r in drawing.rows] == ["x", "stream", "h0", "stream 1", "h1", "stream 2", "y"]
    assert len(drawing.streams) == 2
    report = analyze_run(run, echo=False)
    assert report["modularity"] is not None and (run / "analysis.md").exists()
    page = write_report(run)
    assert page.exists() and "stream 2" in page.read_text()
    plain = wiring_of(model).export()
    fresh = ResMLP()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert torch.allclose(fresh(data[2]), model(data[2]), atol=1e-6)


def test_a_figure_that_fails_is_a_warning_and_the_run_is_kept(tmp_path, monkeypatch, capsys):
    import bimt.viz

    def broken(*a, **k):
        raise RuntimeError("no drawing today")

    monkeypatch.setattr(bimt.viz, "plot", broken)
    run = tmp_path / "r"
    bimt.fit(task="two-moons", steps=20, out=run, progress=False)
    err = capsys.readouterr().err
    assert "warning: could not draw" in err and "graph.png" in err and "no drawing today" in err
    assert (run / "metrics.json").exists() and (run / "checkpoint.pt").exists()
    assert (run / "decision_boundary.png").exists()


def test_crossings_takes_anything_wiring_of_takes():
    from bimt.analysis import crossings

    seq = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        seq[0].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    wiring = attach(seq)
    want = {"crossings": 1, "module_crossings": 1, "n_modules": 2}
    assert crossings(seq) == crossings(wiring) == crossings((seq, wiring.spec)) == want
    with pytest.raises(TypeError, match="load_model"):
        crossings("some/run/dir")


def test_graph_png_has_module_colours_and_a_key():
    import bimt.viz as viz

    torch.manual_seed(0)
    model = bimt.BioMLP([4, 6, 2], bias=False)
    with torch.no_grad():  # two separate modules: inputs 0,1 -> hidden 0-2 -> output 0; the rest
        w0, w1 = torch.zeros(6, 4), torch.zeros(2, 6)
        w0[:3, :2], w0[3:, 2:], w1[0, :3], w1[1, 3:] = 1.0, -1.0, 1.0, 0.5
        model.linears[0].weight.copy_(w0)
        model.linears[1].weight.copy_(w1)
    fig = viz.plot(model)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"w > 0", "w < 0", "module A", "module B"} <= set(labels)
    dots = next(c for c in ax.collections if c.get_gid() == "neurons-layer1")
    colours = {tuple(np.round(c, 3)) for c in dots.get_facecolors()}
    assert len(colours) == 2  # the two modules' hidden neurons differ in colour


def test_the_cnn_graph_names_its_image_input():
    import bimt.viz as viz

    model = bimt.BioCNN((1, 8, 8), channels=[3, 4], hidden=[5], n_classes=3)
    fig = viz.plot(model)
    shown = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "input-label"]
    assert shown == ["image"]


def _wrong_shapes():
    """(model, data with one feature too many) for each model family."""
    torch.manual_seed(0)
    X = torch.rand(20, 5)
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    attach(seq)
    res = ResMLP()
    attach(res, res_spec(res))
    return {
        "mlp": (bimt.BioMLP([4, 6, 2]), (X, torch.rand(20, 2))),
        "sequential": (seq, (X, torch.rand(20, 2))),
        "transformer": (bimt.BioTransformer(2, 1, d_model=8, n_blocks=1),
                        (torch.rand(20, 3, 3), torch.rand(20, 3, 1))),
        "rnn": (bimt.BioRNN(2, 4, 1), (torch.rand(20, 6, 3), torch.rand(20, 6, 1))),
        "cnn": (bimt.BioCNN((1, 8, 8), channels=[2, 2], hidden=[4], n_classes=3),
                (torch.rand(20, 65), torch.randint(3, (20,)))),
        "module": (res, (X, torch.rand(20, 2))),
    }


@pytest.mark.parametrize("family", ["mlp", "sequential", "transformer", "rnn", "cnn", "module"])
def test_data_that_does_not_fit_the_model_is_one_clear_line(family, tmp_path):
    """Where data meets a model the feature count is checked (never silently dropped or
    broadcast), naming the data's shape, before anything is written."""
    model, (X, y) = _wrong_shapes()[family]
    loss = "ce" if family == "cnn" else "mse"
    with pytest.raises(ValueError, match=r"does not fit .*inputs of shape") as info:
        bimt.fit(model=model, data=(X, y, X, y), loss=loss, steps=2, out=tmp_path / "r", **QUIET)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "r").exists()


def test_targets_of_the_wrong_shape_are_refused_naming_both():
    model = bimt.BioMLP([4, 6, 2])
    X = torch.rand(20, 4)
    with pytest.raises(ValueError, match=r"targets of shape \(3,\)"):
        bimt.fit(model=model, data=(X, torch.rand(20, 3), X, torch.rand(20, 3)), loss="mse",
                 steps=2, **QUIET)


def test_data_problems_are_named_for_what_they_are():
    model = bimt.BioMLP([4, 6, 2])
    X, y = torch.rand(20, 4), torch.rand(20, 2)
    bad = X.clone()
    bad[3, 1] = float("nan")
    cases = [((X[:0], y[:0], X, y), "training inputs are empty"),
             ((X, y, X[:0], y[:0]), "test inputs are empty"),
             ((bad, y, X, y), "training inputs hold 1 NaN or infinite values"),
             ((X, torch.full_like(y, float("inf")), X, y), "training targets hold 40 NaN"),
             ((X, y, X, y), "needs integer class labels, got targets of dtype float32")]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            bimt.fit(model=model, data=data, loss="ce" if "class labels" in message else "mse",
                     steps=2, **QUIET)
