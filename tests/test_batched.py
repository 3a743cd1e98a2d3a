"""bimt.training.batched: a stacked run of S members gives each member the numbers of its own run.

In float64 the two agree to rounding (bmm and mm sum in different orders); float32 would let a
one-ulp difference flip an L1 subgradient sign(w) at w ~ 0 or a swap decision, so the equality
tests run in float64 (the drift in float32 is in the issue-11 report).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build, inputs, mlp_configs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bimt
import bimt.training.loop as bb
from bimt.models.stacked import StackedMLP
from bimt.training.loop import fit_many
from bimt.training.loop import fit as train
from bimt.training.runs import load_checkpoint, load_model

QUIET = dict(progress=False, plots=False)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


class SwapCounter:
    """Wraps ``bimt.training.batched.swap_pass``; counts the swaps made (so a test knows swaps happened)."""

    def __init__(self, monkeypatch, interrupt_at_call=None):
        self.real, self.calls, self.swaps = bb.swap_pass, 0, 0
        self.interrupt_at_call = interrupt_at_call
        monkeypatch.setattr(bb, "swap_pass", self)

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt("simulated interruption in a batched swap pass")
        report = self.real(*args, **kw)
        self.swaps += report.swaps
        return report


# -- 1. the must-show: symbolic (a), 2000 steps, each member equals its own run ----------------
def test_members_match_unbatched_runs_float64(monkeypatch):
    counter = SwapCounter(monkeypatch)
    kw = dict(task="symbolic-independence", steps=2000, eval_every=500, dtype="float64",
              swap_mode="greedy")  # the mode this equivalence was established for (see issue 9 report)
    results = fit_many(seeds=[0, 1], methods=["vanilla", "l1-swap", "bimt"], **kw, **QUIET)
    assert counter.swaps > 0  # the swap engine moved neurons (and their Adam moments)
    assert [(r.config.method, r.config.seed) for r in results] == [
        (m, s) for m in ("vanilla", "l1-swap", "bimt") for s in (0, 1)]
    for r in results:
        u = train(method=r.config.method, seed=r.config.seed, **kw, **QUIET)
        assert r.metrics["test_loss"] == pytest.approx(u.metrics["test_loss"], rel=1e-4)
        assert _max_diff(r.model, u.model) < 1e-8
        assert r.metrics["modularity"] == pytest.approx(u.metrics["modularity"], abs=1e-6)
        assert [h["step"] for h in r.history] == [h["step"] for h in u.history]
        for hb, hu in zip(r.history, u.history):
            assert hb["connection_cost"] == pytest.approx(hu["connection_cost"], rel=1e-8)
        assert set(u.metrics) <= set(r.metrics) and r.metrics["batched_members"] == 6


@pytest.mark.parametrize("task,steps", [
    ("two-moons", 60), ("modular-addition", 20),
    pytest.param("mnist", 12, marks=pytest.mark.slow),  # ~2 min: MNIST's modularity, 4 times
])
def test_members_match_on_other_mlp_tasks(task, steps):
    """Cross-entropy, token embeddings with mean reduction, minibatches and a frozen grid."""
    kw = dict(task=task, steps=steps, swap_every=steps // 4, eval_every=steps // 2,
              dtype="float64")
    if task == "mnist":
        configs = [dict(kw, method="vanilla", seed=0), dict(kw, method="bimt", seed=1)]
    else:
        configs = [dict(kw, method="l1", seed=0), dict(kw, method="bimt", seed=3)]
    results = fit_many(configs, **QUIET)
    for cfg, r in zip(configs, results):
        u = train(cfg, **QUIET)
        assert _max_diff(r.model, u.model) < 1e-9
        assert r.metrics["test_loss"] == pytest.approx(u.metrics["test_loss"], rel=1e-9)
        assert r.metrics["test_acc"] == u.metrics["test_acc"]


# -- 2. the hand-written backward pass equals autograd -----------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlp_configs(max_width=6), st.integers(1, 3), st.sampled_from(["mse", "ce"]),
       st.sampled_from(["silu", "relu", "tanh", "gelu", "sigmoid", "identity"]))
def test_loss_and_grad_equals_autograd(cfg, S, loss, activation):
    cfg = dict(cfg, activation=activation)
    members = []
    for s in range(S):
        m = build(dict(cfg, seed=cfg["seed"] + s)).double()
        if m.spec.groups["layer0"].size > 1 and not m.spec.groups["layer0"].frozen:
            perm = np.random.default_rng(s).permutation(m.spec.groups["layer0"].size)
            bimt.apply_permutation(m, m.spec, "layer0", perm)  # non-trivial interface orders
        last = f"layer{len(m.widths) - 1}"
        if m.spec.groups[last].size > 1:
            perm = np.random.default_rng(s + 7).permutation(m.spec.groups[last].size)
            bimt.apply_permutation(m, m.spec, last, perm)
        members.append(m)
    X = torch.stack([inputs(m, batch=5, seed=s) for s, m in enumerate(members)])
    X = X.double() if X.is_floating_point() else X
    n_out = members[0].widths[-1]
    g = torch.Generator().manual_seed(1)
    y = (torch.randint(n_out, (S, 5), generator=g) if loss == "ce"
         else torch.randn(S, 5, n_out, generator=g, dtype=torch.float64))
    stack = StackedMLP(members)
    losses = stack.loss_and_grad(X, y, loss)
    fn = torch.nn.MSELoss() if loss == "mse" else torch.nn.CrossEntropyLoss()
    for s, m in enumerate(members):
        m.zero_grad()
        value = fn(m(X[s]), y[s])
        value.backward()
        assert float(losses[s]) == pytest.approx(float(value.detach()), rel=1e-12, abs=1e-14)
        for name, p in m.named_parameters():
            assert torch.allclose(stack.get(name).grad[s], p.grad, rtol=1e-10, atol=1e-12), name
        with torch.no_grad():
            assert torch.allclose(stack(X)[s], m(X[s]), rtol=1e-12, atol=1e-14)


# -- 3. run directories, checkpoints, resume -------------------------------------------------
def test_run_dirs_resume_and_unbatched_tools(tmp_path, monkeypatch):
    kw = dict(task="two-moons", steps=40, swap_every=10, eval_every=10, checkpoint_every=20,
              dtype="float64")
    straight = fit_many(seeds=[0, 1], methods=["bimt"], out=tmp_path / "a", **kw, **QUIET)
    for r in straight:
        d = r.run_dir
        assert d == tmp_path / "a" / f"bimt-s{r.config.seed}"
        assert {"config.json", "checkpoint.pt", "history.csv", "metrics.json"} <= {
            p.name for p in d.iterdir()}
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["test_loss"] == r.metrics["test_loss"]
        model, cfg = load_model(d)  # what bimt analyze / plot read
        assert _max_diff(model, r.model) == 0 and cfg.seed == r.config.seed
        assert load_checkpoint(d / "checkpoint.pt")["step"] == 40

    # interrupted in its 5th swap pass (step 30, after the step-20 checkpoint), then resumed
    counter = SwapCounter(monkeypatch, interrupt_at_call=5)
    with pytest.raises(KeyboardInterrupt):
        fit_many(seeds=[0, 1], methods=["bimt"], out=tmp_path / "b", **kw, **QUIET)
    assert load_checkpoint(tmp_path / "b" / "bimt-s0" / "checkpoint.pt")["step"] == 20
    monkeypatch.setattr(bb, "swap_pass", counter.real)
    resumed = fit_many(seeds=[0, 1], methods=["bimt"], out=tmp_path / "b", resume=True, **kw,
                       **QUIET)
    for a, b in zip(straight, resumed):
        assert _max_diff(a.model, b.model) == 0
        assert a.metrics["test_loss"] == b.metrics["test_loss"]
        assert [h["test_loss"] for h in a.history] == [h["test_loss"] for h in b.history]

    # a member's checkpoint is an ordinary one: the unbatched trainer resumes it
    one = train(out=tmp_path / "b" / "bimt-s1", resume=True, **QUIET)
    assert _max_diff(one.model, straight[1].model) < 1e-12
    # a finished stack is skipped on resume
    again = fit_many(seeds=[0, 1], methods=["bimt"], out=tmp_path / "a", resume=True, **kw, **QUIET)
    assert [r.metrics for r in again] == [json.loads((r.run_dir / "metrics.json").read_text())
                                          for r in straight]


# -- 4. stacks, API and errors ----------------------------------------------------------------
def test_runs_that_cannot_share_a_stack_are_split(monkeypatch):
    made = []
    real = bb.StackedMLP

    def spy(members):
        made.append(len(members))
        return real(members)

    monkeypatch.setattr(bb, "StackedMLP", spy)
    configs = [dict(task="symbolic-independence", steps=30, seed=s, lr=lr, dtype="float64")
               for s, lr in ((0, 1e-3), (1, 2e-3), (2, 1e-3))]
    results = fit_many(configs, **QUIET)
    assert sorted(made) == [1, 2]
    for c, r in zip(configs, results):
        assert r.config.lr == c["lr"] and r.config.seed == c["seed"]
        assert _max_diff(r.model, train(c, **QUIET).model) < 1e-12


def test_bimt_fit_with_seeds_returns_one_result_per_seed():
    results = bimt.fit(task="two-moons", seeds=[2, 5], steps=5, **QUIET)
    assert [r.config.seed for r in results] == [2, 5]
    assert isinstance(bimt.fit(task="two-moons", steps=5, **QUIET), bimt.training.loop.TrainResult)


def test_runs_that_cannot_stack_train_one_after_another():
    results = fit_many(task="in-context", seeds=[0, 1], steps=2, **QUIET)
    single = train(task="in-context", seed=1, steps=2, **QUIET)
    assert [r.config.seed for r in results] == [0, 1]
    assert "batched_members" not in results[1].metrics
    assert results[1].metrics["test_loss"] == single.metrics["test_loss"]


def test_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="seeds must be an integer"):
        fit_many(task="two-moons", seeds=[0, "1"], steps=2, **QUIET)
    with pytest.raises(ValueError, match="share one run directory"):
        fit_many(task="two-moons", seeds=[0, 0], steps=2, out=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="unknown device"):
        fit_many(task="two-moons", seeds=[0], steps=2, device="tpu", **QUIET)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_stack_matches_cpu():
    kw = dict(task="symbolic-independence", steps=200, swap_every=50, dtype="float64", **QUIET)
    cpu = fit_many(seeds=[0, 1], **kw)
    gpu = fit_many(seeds=[0, 1], device="cuda", **kw)
    for a, b in zip(cpu, gpu):
        assert next(b.model.parameters()).is_cuda
        assert a.metrics["test_loss"] == pytest.approx(b.metrics["test_loss"], rel=1e-6)


def test_run_dirs_are_held_and_another_runs_dir_is_refused(tmp_path):
    """fit_many holds each run directory as bimt.fit does: one writer at a time, and a fresh
    run does not overwrite another run's files unless force=True."""
    from bimt.training.runs import RunDirBusy, claim_run_dir

    kw = dict(task="two-moons", steps=20, progress=False, plots=False)
    busy = tmp_path / "busy"
    with claim_run_dir(busy, {"task": "two-moons"}):
        with pytest.raises(RunDirBusy, match="being written by process"):
            fit_many(seeds=[0], out=[busy], **kw)
    other = tmp_path / "other"
    train(bimt.TrainConfig(task="two-moons", seed=1, steps=20), out=other, progress=False,
          plots=False)
    with pytest.raises(ValueError, match="already holds a run of two-moons"):
        fit_many(seeds=[0], out=[other], **kw)
    result = fit_many(seeds=[0], out=[other], force=True, **kw)[0]
    assert json.loads((other / "metrics.json").read_text())["seed"] == result.metrics["seed"] == 0
