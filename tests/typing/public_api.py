"""The public API used as a user would, for mypy (``mypy``: pyproject.toml's [tool.mypy] points
here). Never run: it only has to type-check, so a signature that refuses what the README shows,
or returns something else than it says, fails CI. ``assert_type`` pins what users get back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from typing_extensions import assert_type

import bimt
from bimt import analysis
from bimt.analysis import find_circuit
from bimt.tasks.language import induction_accuracy, induction_data
from bimt.viz import Figure


def train_a_task() -> None:
    result = bimt.fit(task="two-moons", steps=100, progress=False)
    assert_type(result, bimt.TrainResult)
    assert_type(result.metrics, dict)
    assert_type(result.run_dir, Path | None)
    fig = bimt.viz.plot(result.model)
    assert_type(fig, Figure)
    bimt.viz.plot_decision_boundary(result.model, result.data.X_test, result.data.y_test)
    many = bimt.fit_many(seeds=[0, 1], task="symbolic-independence", steps=10, progress=False)
    assert_type(many, list[bimt.TrainResult])
    config = bimt.TrainConfig(task="two-moons", steps=10)
    bimt.fit(config, out="runs/moons", progress=False)
    model, saved = bimt.load_model("runs/moons")


def your_own_model() -> None:
    net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))
    wiring = bimt.attach(net, A=1.0, y_star=0.2)
    assert_type(wiring, bimt.Wiring)
    assert bimt.wiring_of(net) is wiring
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    report = wiring.step(opt, lam=1e-3, swap_every=100, top_k=5)
    if report is not None:
        assert_type(report, bimt.SwapReport)
    cost = wiring.cost()
    assert_type(cost, torch.Tensor)
    plain = wiring.export()
    assert_type(plain, nn.Module)
    X, Y = torch.rand(100, 2), torch.rand(100, 1)
    bimt.fit(model=net, data=(X[:80], Y[:80], X[80:], Y[80:]), loss="mse", steps=10, progress=False)


def models_and_swaps() -> None:
    mlp = bimt.BioMLP([4, 20, 20, 2], A=2.0, y_star=0.1)
    swaps = mlp.swap(top_k=6)
    assert_type(swaps, bimt.SwapReport)
    mlp.swap(mode="exact")
    settings = bimt.CostSettings(A=2.0, y_star=0.5)
    gpt = bimt.BioGPT(vocab_size=32, n_positions=32, d_model=32, n_layers=2, n_heads=4, settings=settings)
    batch = induction_data(8, vocab_size=32, length=32, seed=0)
    circuit = find_circuit(gpt, batch, induction_accuracy, neurons=False)
    assert_type(circuit.heads, list[str])
    cost = bimt.ConnectionCost(mlp.spec, settings)
    bimt.swap_pass(mlp, mlp.spec, cost, None, "greedy")


def tasks_and_analysis() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(300, 3)).astype("float32")
    task = bimt.task_from_arrays("my-task", X, X[:, 0] * X[:, 1], hidden=(16, 16), steps=800)
    assert_type(task, bimt.Task)
    bimt.register_task(task)
    formula = bimt.task_from_function("my-formula", lambda A: A[:, 0] * A[:, 1], n_inputs=2, steps=10)
    model = bimt.fit(task=formula, progress=False).model
    assert_type(analysis.modularity(model), float)
    modules = analysis.find_modules(model)
    with analysis.intervene(model, knock_out={"layer1": [0, 1]}):
        pass
    print(modules, analysis.crossings(model))
