"""bimt sweep: a grid x seeds as rows, a Pareto plot, reruns that skip finished trials; the Ray
backend (marker ``ray``, run by .ci/run) gives the local backend's rows (to 1e-6 relative)."""

from __future__ import annotations

import json

import pytest

from bimt.cli import main
from bimt.experiments.sweep import pareto_front, parse_grid, sweep

GRID = ["lambda=1e-3,1e-2", "A=0.5,2"]
KW = dict(seeds=[0, 1], steps=30, objective="modularity", constraint="test_acc>=0.5",
          progress=False)


def test_local_sweep_rows_files_and_rerun(tmp_path, monkeypatch):
    rows = sweep("two-moons", parse_grid(GRID), out=tmp_path, **KW)
    assert len(rows) == 8
    assert {(r["lambda_schedule"], r["A"], r["seed"]) for r in rows} == {
        (lam, A, s) for lam in (1e-3, 1e-2) for A in (0.5, 2) for s in (0, 1)}
    for name in ("sweep.csv", "sweep.md", "sweep.json", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "sweep.json").read_text())
    feasible = [r for r in rows if r["feasible"]]
    assert summary["best"] == max(feasible, key=lambda r: r["modularity"])["trial"]
    assert (tmp_path / "trials" / "trial-000" / "metrics.json").exists()

    def no_training(*a, **k):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr("bimt.training.loop._train", no_training)
    assert sweep("two-moons", parse_grid(GRID), out=tmp_path, **KW) == rows


def test_pareto_front():
    rows = [dict(test_loss=1, modularity=0.5), dict(test_loss=2, modularity=0.4),
            dict(test_loss=0.5, modularity=0.1), dict(test_loss=3, modularity=0.9)]
    assert pareto_front(rows) == [0, 2, 3]


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown grid field 'lamda'"):
        parse_grid(["lamda=1"])
    with pytest.raises(ValueError, match="must read FIELD=V1,V2"):
        parse_grid(["A"])
    with pytest.raises(ValueError, match="unknown objective 'accuracy'"):
        sweep("two-moons", {}, out=tmp_path, objective="accuracy")
    with pytest.raises(ValueError, match="METRIC<=NUMBER"):
        sweep("two-moons", {}, out=tmp_path, constraint="test_loss<0.1")
    with pytest.raises(ValueError, match="A must be a finite number >= 0"):
        sweep("two-moons", {"A": [-1]}, out=tmp_path)
    assert main(["sweep", "two-moons", "--grid", "nope=1", "--out", str(tmp_path)]) == 2


@pytest.mark.ray
def test_ray_backend_gives_the_local_rows(tmp_path):
    pytest.importorskip("ray.tune")
    import ray

    local = sweep("two-moons", parse_grid(GRID), out=tmp_path / "local", **KW)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = sweep("two-moons", parse_grid(GRID), out=tmp_path / "ray", backend="ray", **KW)
    finally:
        ray.shutdown()
    assert len(remote) == len(local) == 8
    for r, l in zip(remote, local):
        assert {k: v for k, v in r.items() if not isinstance(v, float)} == {
            k: v for k, v in l.items() if not isinstance(v, float)}
        for k, v in l.items():
            if isinstance(v, float):
                # a Ray trial is a stack of one; the local stack holds all eight, and its
                # batched matmuls may round differently (measured: 1e-9 relative)
                assert r[k] == pytest.approx(v, rel=1e-6), k
    # every trial finished in its own run directory, so a rerun skips it
    assert all((tmp_path / "ray" / "trials" / r["trial"] / "metrics.json").exists() for r in remote)


def _held(run_dir) -> bool:
    """Whether a live process holds the run directory's lock (a trial in progress)."""
    import fcntl
    import os

    lock = run_dir / ".bimt.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


@pytest.mark.ray
def test_ray_worker_killed_mid_trial_keeps_finished_trials(tmp_path):
    """kill -9 of the worker running a trial: Ray reruns that trial, which resumes from its
    checkpoint and ends with the numbers of an uninterrupted run; finished trials are untouched."""
    pytest.importorskip("ray.tune")
    import os
    import signal
    import threading
    import time

    import ray

    from bimt.training.loop import fit_many
    from bimt.training.config import TrainConfig

    grid = parse_grid(["lambda=1e-3,1e-2"])
    kw = dict(seeds=[0, 1], steps=6000, checkpoint_every=500, progress=False)
    trials = tmp_path / "ray" / "trials"
    killed, finished_before = {}, {}

    def kill_one_running_trial():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            done = [d for d in trials.glob("trial-*") if (d / "metrics.json").exists()]
            for d in trials.glob("trial-*"):
                if done and not (d / "metrics.json").exists() and (d / "checkpoint.pt").exists() \
                        and _held(d):
                    pid = int((d / ".bimt.lock").read_text().split()[1])
                    for f in done:
                        finished_before[f.name] = (f / "metrics.json").read_bytes()
                    os.kill(pid, signal.SIGKILL)
                    killed[d.name] = pid
                    return
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killer = threading.Thread(target=kill_one_running_trial, daemon=True)
    killer.start()
    try:
        rows = sweep("two-moons", grid, out=tmp_path / "ray", backend="ray", **kw)
    finally:
        killer.join(timeout=1)
        ray.shutdown()
    assert killed, "no trial was caught mid-run to kill"
    (name, _), = killed.items()
    assert name not in finished_before and len(rows) == 4
    for f, text in finished_before.items():  # finished trials were neither lost nor retrained
        assert (trials / f / "metrics.json").read_bytes() == text
    # the killed trial, as one uninterrupted stack of one (what a Ray trial trains)
    config = TrainConfig.from_dict(json.loads((trials / name / "config.json").read_text()))
    clean = fit_many([config], out=[tmp_path / "clean"], progress=False, plots=False)[0].metrics
    row = next(r for r in rows if r["trial"] == name)
    for k in ("test_loss", "test_acc", "modularity", "module_crossings"):
        assert row[k] == clean[k], k


def test_pareto_front_and_plot_leave_infeasible_trials_out(tmp_path):
    from bimt.experiments.sweep import _pareto_plot

    rows = [dict(test_loss=0.01, modularity=0.9, feasible=False),
            dict(test_loss=0.1, modularity=0.5, feasible=True),
            dict(test_loss=0.2, modularity=0.6, feasible=True),
            dict(test_loss=0.5, modularity=0.2, feasible=True)]
    assert pareto_front(rows) == [1, 2]  # the infeasible row would dominate both
    _pareto_plot(tmp_path, rows)
    assert (tmp_path / "pareto.png").exists()
