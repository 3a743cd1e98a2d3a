"""The ``bimt`` command, called in process through ``bimt.cli.main`` (and once as a real
``python -m bimt.cli`` subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import bimt.training.loop as bt
from bimt.cli import main
from bimt.tasks import TASKS
from bimt.training.config import METHODS
from bimt.training.runs import load_checkpoint


def run_ok(capsys, *argv) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"bimt {' '.join(argv)} returned {code}: {err}"
    return out


def run_usage_error(capsys, *argv) -> str:
    """An argparse error: SystemExit(2), the message on stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def run_error(capsys, *argv, code=2) -> str:
    """An error found after parsing: main returns ``code``, the message on stderr."""
    assert main(list(argv)) == code
    out, err = capsys.readouterr()
    return err


def without_wall(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_s"}


def metrics_of(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# -- tasks ------------------------------------------------------------------------------------
def test_tasks_lists_every_task(capsys):
    out = run_ok(capsys, "tasks")
    lines = [line for line in out.strip().splitlines() if not line.startswith(" ")]
    assert len(lines) == len(TASKS)
    for name, task in TASKS.items():
        assert any(line.split()[0] == name and task.description in line for line in lines), name


def test_tasks_show_their_defaults(capsys):
    out = run_ok(capsys, "tasks")
    blocks = out.strip().split("\n")
    for name, task in TASKS.items():
        i = next(i for i, line in enumerate(blocks) if line.split()[0] == name)
        defaults = blocks[i + 1]
        assert defaults.strip().startswith("defaults:")
        assert f"steps={task.defaults['steps']}" in defaults, name


def test_tasks_as_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "bimt.cli", "tasks"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in TASKS:
        assert name in proc.stdout


# -- train ------------------------------------------------------------------------------------
def test_train_writes_the_run_dir(capsys, tmp_path):
    out = tmp_path / "run"
    stdout = run_ok(capsys, "train", "two-moons", "--steps", "30", "--out", str(out), "--quiet")
    for name in ("config.json", "metrics.json", "history.csv", "checkpoint.pt", "graph.png",
                 "graph.svg", "decision_boundary.png"):
        assert (out / name).is_file(), name
    metrics = metrics_of(out)
    assert metrics["task"] == "two-moons" and metrics["method"] == "bimt" and metrics["steps"] == 30
    assert "two-moons [bimt, seed 0]" in stdout and "test acc" in stdout
    assert f"wrote {out}" in stdout
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 30


def test_train_options_reach_the_config(capsys, tmp_path):
    out = tmp_path / "run"
    run_ok(capsys, "train", "regression-fig2", "--method", "l1-swap", "--seed", "3", "--steps",
           "6", "--lr", "0.01", "--batch-size", "50", "--lambda", "1e-3:1,1e-2:2", "--A", "2",
           "--y-star", "0.3", "--p", "2", "--top-k", "4", "--swap-every", "3", "--swap-mode",
           "exact", "--eval-every", "2", "--out", str(out), "--quiet")
    config = json.loads((out / "config.json").read_text())
    expected = dict(task="regression-fig2", method="l1-swap", seed=3, steps=6, lr=0.01,
                    batch_size=50, lambda_schedule=[[1e-3, 1.0], [1e-2, 2.0]], A=2.0, y_star=0.3,
                    p=2.0, top_k=4, swap_every=3, swap_mode="exact", eval_every=2)
    for key, value in expected.items():
        assert config[key] == value, key
    assert metrics_of(out)["train_acc"] is None


def test_constant_lambda(capsys, tmp_path):
    run_ok(capsys, "train", "two-moons", "--steps", "3", "--lambda", "0.01", "--out",
           str(tmp_path / "r"), "--quiet")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lambda_schedule"] == [[0.01, 1.0]]


def test_train_default_out_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_ok(capsys, "train", "two-moons", "--steps", "3", "--method", "vanilla", "--seed", "2",
           "--quiet")
    assert (tmp_path / "runs" / "two-moons-vanilla-s2" / "metrics.json").is_file()


def test_every_method_is_accepted(capsys, tmp_path):
    for method in METHODS:
        run_ok(capsys, "train", "regression-fig2", "--steps", "2", "--method", method, "--out",
               str(tmp_path / method), "--quiet")
        assert metrics_of(tmp_path / method)["method"] == method


# -- errors -------------------------------------------------------------------------------------
def test_unknown_task_lists_the_tasks(capsys):
    err = run_usage_error(capsys, "train", "nope", "--steps", "3")
    assert "invalid choice: 'nope'" in err
    for name in TASKS:
        assert name in err


def test_unknown_method_lists_the_methods(capsys):
    err = run_usage_error(capsys, "train", "two-moons", "--method", "l2")
    assert "invalid choice: 'l2'" in err
    for method in METHODS:
        assert method in err


def test_unknown_swap_mode_and_command(capsys):
    err = run_usage_error(capsys, "train", "two-moons", "--swap-mode", "random")
    assert "invalid choice: 'random'" in err and "greedy" in err and "exact" in err
    err = run_usage_error(capsys, "frobnicate")
    assert "invalid choice: 'frobnicate'" in err and "train" in err and "tasks" in err


def test_unknown_option_is_refused(capsys):
    err = run_usage_error(capsys, "train", "two-moons", "--stepz", "3")
    assert "unrecognized arguments: --stepz" in err


def test_unknown_option_lists_the_valid_options(capsys):
    """The message for an unknown ``train`` option names the options ``train`` does accept."""
    err = run_usage_error(capsys, "train", "two-moons", "--stepz", "3")
    assert "--steps" in err and "--lambda" in err


@pytest.mark.parametrize("text", ["abc", "1e-3:x", "", "1e-3,,1e-2", "0.1:5:6"])
def test_bad_lambda_string(capsys, text):
    err = run_usage_error(capsys, "train", "two-moons", f"--lambda={text}")
    assert f"invalid lambda {text!r}" in err
    assert "value:steps" in err


@pytest.mark.parametrize("argv, message", [
    (["--lambda=-1"], "lambda must be a finite number >= 0, got -1.0"),
    (["--lambda=1e-3:0"], "a lambda phase must last a finite number of steps > 0"),
    (["--steps", "0"], "steps must be a positive integer, got 0"),
    (["--top-k", "50"], "top_k=50 is larger than every swappable layer"),
    (["--A", "-2"], "A must be a finite number >= 0, got -2.0"),
    (["--y-star", "-1"], "y_star must be a finite number >= 0, got -1.0"),
])
def test_bad_values_give_clear_errors(capsys, tmp_path, argv, message):
    err = run_error(capsys, "train", "two-moons", "--steps", "3", *argv, "--out",
                    str(tmp_path / "r"), "--quiet")
    assert err.startswith("bimt train: error:")
    assert message in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_bad_integer_option_is_a_usage_error(capsys):
    err = run_usage_error(capsys, "train", "two-moons", "--steps", "ten")
    assert "--steps" in err and "invalid int value: 'ten'" in err


def test_divergence_exits_1(capsys, tmp_path):
    err = run_error(capsys, "train", "symbolic-independence", "--steps", "30", "--lr", "1e6",
                    "--eval-every", "1", "--out", str(tmp_path / "r"), "--quiet", code=1)
    assert "bimt train:" in err and "step" in err and "try a smaller lr" in err


# -- --config and --resume ----------------------------------------------------------------------
def test_config_file_round_trip(capsys, tmp_path):
    first = tmp_path / "first"
    run_ok(capsys, "train", "two-moons", "--steps", "8", "--seed", "5", "--method", "l1",
           "--swap-every", "4", "--out", str(first), "--quiet")
    second = tmp_path / "second"
    run_ok(capsys, "train", "two-moons", "--config", str(first / "config.json"), "--out",
           str(second), "--quiet")
    assert json.loads((second / "config.json").read_text()) == \
        json.loads((first / "config.json").read_text())
    assert without_wall(metrics_of(second)) == without_wall(metrics_of(first))
    a = load_checkpoint(first / "checkpoint.pt")["model"]
    b = load_checkpoint(second / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # command-line options win over the file
    third = tmp_path / "third"
    run_ok(capsys, "train", "two-moons", "--config", str(first / "config.json"), "--seed", "6",
           "--out", str(third), "--quiet")
    assert metrics_of(third)["seed"] == 6 and metrics_of(third)["method"] == "l1"


def test_config_file_errors(capsys, tmp_path):
    err = run_error(capsys, "train", "two-moons", "--config", str(tmp_path / "missing.json"),
                    "--quiet")
    assert "missing.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task": "two-moons", "stepz": 3}))
    err = run_error(capsys, "train", "two-moons", "--config", str(bad), "--quiet")
    assert "unknown config key(s) 'stepz'" in err and "allowed keys" in err


def test_resume_continues_an_interrupted_run(capsys, tmp_path, monkeypatch):
    argv = ["train", "two-moons", "--steps", "20", "--batch-size", "32", "--swap-every", "5",
            "--eval-every", "5", "--quiet"]
    run_ok(capsys, *argv, "--out", str(tmp_path / "full"))
    # checkpoints every 2000 steps by default would not help: set it through a config file
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    config["checkpoint_every"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))

    real = bt.swap_pass
    calls = []

    def interrupt_third_pass(*args, **kw):  # swap passes at 5, 10, 15: stop at 15
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(bt, "swap_pass", interrupt_third_pass)
    code = main([*argv, "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "cut")])
    err = capsys.readouterr().err.strip()
    assert code == 130  # Ctrl-C: one clean line saying how to continue, no traceback
    assert err == (f"bimt train: interrupted; `bimt train two-moons --out {tmp_path / 'cut'} "
                   "--resume` continues the run from its last checkpoint")
    monkeypatch.setattr(bt, "swap_pass", real)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8

    out = run_ok(capsys, "train", "two-moons", "--out", str(tmp_path / "cut"), "--resume",
                 "--quiet")
    assert "two-moons [bimt, seed 0]" in out
    assert without_wall(metrics_of(tmp_path / "cut")) == without_wall(metrics_of(tmp_path / "full"))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint(capsys, tmp_path):
    err = run_error(capsys, "train", "two-moons", "--out", str(tmp_path / "none"), "--resume",
                    "--quiet")
    assert "does not exist" in err


# -- plot ----------------------------------------------------------------------------------------
def test_plot_rewrites_the_figures(capsys, tmp_path):
    run = tmp_path / "run"
    run_ok(capsys, "train", "two-moons", "--steps", "4", "--out", str(run), "--quiet")
    (run / "graph.png").unlink()
    (run / "decision_boundary.png").unlink()
    (run / "graph.svg").write_text("stale")
    out = run_ok(capsys, "plot", str(run))
    assert str(run) in out
    assert (run / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "decision_boundary.png").is_file()
    assert b"<svg" in (run / "graph.svg").read_bytes()[:2000]


def test_plot_of_a_missing_run(capsys, tmp_path):
    err = run_error(capsys, "plot", str(tmp_path / "nowhere"))
    assert err == f"bimt plot: error: run directory {tmp_path / 'nowhere'} does not exist\n"
