"""`bimt reproduce` and `bimt analyze` on tiny runs; the in-context analysis of Fig. 7."""

import csv
import json

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import bimt.viz
from bimt import analysis
from bimt.cli import main
from bimt.experiments.reproduce import reproduce, write_tables
from bimt.tasks import get_task
from bimt.training.config import TrainConfig, milestone_schedule
from bimt.training.loop import fit as train


def test_reproduce_writes_tables_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    rows = reproduce(tasks=["two-moons", "symbolic-independence"], methods=["vanilla", "bimt"],
                     seeds=2, workers=1, out=out, steps=30, progress=False)
    assert len(rows) == 8
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    for col in ("task", "method", "seed", "train_loss", "test_loss", "train_acc", "test_acc",
                "modularity", "connection_cost", "wall_s", "data_source"):
        assert col in table[0]
    t1, t2 = (out / "table1.md").read_text(), (out / "table2.md").read_text()
    assert "Two Moon" in t1 and "Symbolic (a)" in t1 and "BIMT (paper)" in t1 and "%" in t1
    assert "0.581 ± 0.042" in t2  # the paper's BIMT modularity for symbolic (a)
    assert (out / "figures" / "two-moons.png").stat().st_size > 0

    # a second call finds every run complete and trains nothing
    import bimt.experiments.reproduce as rep

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("bimt.training.loop.fit", no_training)
    monkeypatch.setattr("bimt.training.loop._train", no_training)
    first = json.loads((out / "reproduction.json").read_text())
    again = rep.reproduce(tasks=["two-moons", "symbolic-independence"], methods=["vanilla", "bimt"],
                          seeds=2, workers=1, out=out, steps=30, progress=False)
    assert sorted(r["seed"] for r in again) == sorted(r["seed"] for r in rows)
    # the resumed call adds its own (short) time to the record instead of replacing it
    summary = json.loads((out / "reproduction.json").read_text())
    assert len(summary["invocations"]) == 2 and summary["invocations"][0]["wall_s"] == first["wall_s"]
    assert summary["wall_s"] == pytest.approx(first["wall_s"] + summary["invocations"][1]["wall_s"],
                                              abs=0.11)
    assert summary["run_wall_s"] == first["run_wall_s"]  # the runs' own times, unchanged


def test_a_run_made_under_other_task_defaults_is_trained_again(tmp_path):
    """The settings asked for can match while the task's defaults have changed since the run
    (its ``resolved_config.json`` says which values it used): then the run is cleared."""
    import dataclasses

    from bimt.experiments.reproduce import _clear_if_stale, _job_config

    job = dict(task="two-moons", method="bimt", seed=0, steps=30, run_dir=str(tmp_path / "run"))
    config = _job_config(job)
    run = tmp_path / "run"
    run.mkdir()
    used = json.loads(json.dumps(config.resolved().to_dict(), default=str))
    for resolved, kept in ((used, True), ({**used, "lr": used["lr"] * 2}, False)):
        (run / "config.json").write_text(json.dumps(dataclasses.asdict(config), default=str))
        (run / "resolved_config.json").write_text(json.dumps(resolved))
        (run / "metrics.json").write_text("{}")
        _clear_if_stale(job)
        assert (run / "metrics.json").exists() == kept
        assert (run / "resolved_config.json").exists() == kept


def test_reproduce_backends_agree_and_record_wall_time(tmp_path):
    kw = dict(tasks=["symbolic-independence"], methods=["vanilla", "bimt"], seeds=2, workers=1,
              steps=30, progress=False)
    stacked = reproduce(out=tmp_path / "b", backend="batched", **kw)
    separate = reproduce(out=tmp_path / "p", backend="processes", **kw)
    for a, b in zip(stacked, separate):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert a["batched_members"] == 4 and "batched_members" not in b
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)  # float32 rounding
    summary = json.loads((tmp_path / "b" / "reproduction.json").read_text())
    assert summary["backend"] == "batched" and summary["wall_s"] > 0
    assert summary["job_s"]["symbolic-independence"] > 0
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        reproduce(out=tmp_path / "x", backend="gpu", **kw)


def test_reproduce_rejects_unknown_names(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        reproduce(tasks=["nope"], out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown method 'l2'"):
        reproduce(tasks=["two-moons"], methods=["l2"], out=tmp_path, progress=False)


def test_tables_mean_and_std():
    rows = [dict(task="two-moons", method="bimt", seed=s, test_acc=a, test_loss=0.1, modularity=m)
            for s, (a, m) in enumerate([(0.9, 0.3), (1.0, 0.5)])]
    t1, t2 = write_tables(rows, ["two-moons"], ["bimt"])
    assert "(95.0 ± 7.1)%" in t1
    assert "0.400 ± 0.141" in t2


def test_analyze_cli_writes_reports(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(task="two-moons", steps=300), out=run, progress=False)
    assert main(["analyze", str(run), "--prune", "--knockout"]) == 0
    report = json.loads((run / "analysis.json").read_text())
    assert report["modularity"] == pytest.approx(json.loads((run / "metrics.json").read_text())["modularity"])
    assert report["pruning_frontier"][-1][0] == report["n_nonzero"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["n_nonzero_total"] == metrics["n_nonzero_params"]  # one definition of nonzero
    assert report["n_params_total"] == metrics["n_params"]
    assert (run / "pruning_frontier.png").exists() and (run / "knockout.md").exists()
    knockout = (run / "knockout.md").read_text()
    assert "which (layer: slots)" in knockout and "layer1: " in knockout  # the module's neurons
    assert "modularity" in capsys.readouterr().out


def test_milestone_schedule_matches_explicit_phases():
    assert np.allclose(milestone_schedule(1e-3, [[0.25, 10], [0.75, 0.1]]),
                       [[1e-3, 0.25], [1e-2, 0.5], [1e-3, 0.25]])
    cfg = TrainConfig(task="two-moons", steps=100, lambda_schedule=[[0.1, 1]],
                      lambda_milestones=[[0.5, 10]]).resolved()
    assert np.allclose(cfg.lambda_schedule, [[0.1, 0.5], [1.0, 0.5]])
    with pytest.raises(ValueError, match="lambda milestone"):
        TrainConfig(task="two-moons", lambda_milestones=[[1.5, 10]]).resolved()


def test_residual_vs_weight_finds_the_encoding():
    torch.manual_seed(0)
    result = train(TrainConfig(task="in-context", steps=400, eval_every=400), progress=False)
    data = result.data
    w = analysis.in_context_weights(data.X_test)
    assert np.allclose(w * data.X_test[:, 2, 1].numpy(), data.y_test.numpy(), atol=1e-5)
    view = analysis.residual_vs_weight(result.model, data.X_test, index=2)
    assert view["activations"].shape == (len(w), 32)
    best = view["order"][0]
    assert abs(view["correlation"][best]) == pytest.approx(
        np.abs(view["correlation"][view["alive"]]).max())
    fig = bimt.viz.plot_residual_vs_weight(result.model, data.X_test[:200], data.y_test[:200])
    assert len(fig.axes) >= 3
    with pytest.raises(TypeError, match="residual_stream"):
        analysis.residual_vs_weight(get_task("two-moons").make_model(
            TrainConfig(task="two-moons").resolved().__dict__), data.X_test)


def _rows(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_rerun_with_other_settings_does_not_reuse_old_runs(tmp_path):
    out = tmp_path / "repro"
    for backend in ("processes", "batched"):
        reproduce(tasks=["two-moons"], methods=["bimt"], seeds=1, workers=1, steps=12, out=out,
                  progress=False, backend=backend)
        assert [r["steps"] for r in _rows(out)] == ["12"]
        reproduce(tasks=["two-moons"], methods=["bimt"], seeds=1, workers=1, steps=16, out=out,
                  progress=False, backend=backend)
        assert [r["steps"] for r in _rows(out)] == ["16"]
        summary = json.loads((out / "reproduction.json").read_text())
        assert summary["steps_override"] == 16


def test_reproduce_with_two_workers(tmp_path):
    out = tmp_path / "repro"
    reproduce(tasks=["two-moons", "symbolic-independence"], methods=["vanilla"], seeds=2,
              workers=2, steps=10, out=out, progress=False, backend="processes")
    rows = _rows(out)
    assert sorted((r["task"], r["seed"]) for r in rows) == [
        ("symbolic-independence", "0"), ("symbolic-independence", "1"),
        ("two-moons", "0"), ("two-moons", "1")]
    one = train(TrainConfig(task="two-moons", method="vanilla", seed=1, steps=10), progress=False)
    row = next(r for r in rows if r["task"] == "two-moons" and r["seed"] == "1")
    assert float(row["test_loss"]) == pytest.approx(one.metrics["test_loss"], rel=1e-6)


def _children(pid: int) -> list[int]:
    import os

    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_reproduce_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "bimt.cli", "reproduce", "--tasks", "two-moons", "--methods", "bimt",
         "--n-seeds", "2", "--steps", "10000000", "--workers", "2", "--backend", "processes",
         "--out", str(tmp_path / "repro")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [p for p in _children(proc.pid)
                       if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
        assert len(workers) >= 2, "the reproduction did not start its workers"
        time.sleep(2)  # let them start training
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.5)
        assert not any(_alive(p) for p in workers), "workers outlived the killed reproduction"
    finally:
        proc.kill()


def test_a_task_needing_several_stacks_gives_one_job_per_stack():
    """Vanilla modular addition trains with its own weight decay, so it cannot share the L1 and
    BIMT runs' stack: two jobs (two workers), each the stack fit_many would form."""
    from bimt.training.loop import stack_key as _group_key
    from bimt.experiments.reproduce import _job_config, _stacks

    runs = [dict(task=t, method=m, seed=s, run_dir=f"{t}-{m}-{s}")
            for t in ("modular-addition", "two-moons") for m in ("vanilla", "l1", "bimt")
            for s in (0, 1)]
    mod = _stacks([r for r in runs if r["task"] == "modular-addition"])
    assert [[(r["method"], r["seed"]) for r in st] for st in mod] == [
        [("vanilla", 0), ("vanilla", 1)], [("l1", 0), ("l1", 1), ("bimt", 0), ("bimt", 1)]]
    moons = _stacks([r for r in runs if r["task"] == "two-moons"])
    assert len(moons) == 1 and len(moons[0]) == 6
    for stack in mod + moons:
        keys = {_group_key(_job_config(r).resolved(get_task(r["task"])), 0) for r in stack}
        assert len(keys) == 1
