"""The command line under bad input: one clear line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bimt
from bimt.cli import main
from bimt.training.config import SEED_MAX


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bimt {bimt.__version__}"


def test_help_imports_no_heavy_module():
    """``bimt --help`` stays fast because nothing imports torch, scipy or matplotlib for it."""
    code = ("import sys\nfrom bimt.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for cmd in ('train', 'reproduce', 'view'):\n    try:\n        main([cmd, '--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_says_its_default():
    """Every option that takes a value says its default in ``--help`` (flags are off by default)."""
    import argparse

    from bimt.cli import _build_parser, _Help

    parser = _build_parser()
    for name, sub in parser.subcommands.items():
        fmt = _Help(f"bimt {name}")
        for action in sub._actions:
            if not action.option_strings or isinstance(
                    action, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            assert "default" in fmt._expand_help(action), (name, action.option_strings)


@pytest.mark.parametrize("config, key", [
    ({"steps": "100"}, "'steps' must be an integer"),
    ({"lr": "abc"}, "'lr' must be a number"),
    ({"seed": 1.5}, "'seed' must be an integer"),
    ({"lambda_schedule": [0.01, 1]}, "'lambda_schedule' must be a list of [number, number] pairs"),
    ([1, 2], "must hold a JSON object"),
    ({"loss": "ce"}, "loss 'ce' (cross-entropy) needs class labels; symbolic-independence is a regression task"),
    ({"widths": [3, 20, 2]}, "this BioMLP takes 3 input features"),
    ({"widths": [4, 20, 3]}, "does not fit symbolic-independence's data"),
    ({"seed": SEED_MAX + 1}, f"seed must be an integer from 0 to {SEED_MAX}"),
])
def test_bad_config_is_one_line_exit_2_nothing_written(tmp_path, capsys, config, key):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(["train", "symbolic-independence", "--config", str(path), "--steps", "3",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bimt train: error:") and key in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--lambda", "0.01:nan"], "a lambda phase must last a finite number of steps > 0, got nan"),
    (["--lambda", "0.01:inf"], "a lambda phase must last a finite number of steps > 0, got inf"),
    (["--lambda", "inf"], "lambda must be a finite number >= 0, got inf"),
    (["--lambda", "1e308"], "lambda must be at most 3.4e+38 (it must fit a float32), got 1e+308"),
    (["--lambda-milestones", "0.25:nan"], "a lambda milestone is [fraction in (0, 1), factor >= 0]"),
    (["--seed", str(10**20)], f"seed must be an integer from 0 to {SEED_MAX}, got {10**20}"),
    (["--seed", "-1"], f"seed must be an integer from 0 to {SEED_MAX}, got -1"),
])
def test_bad_numbers_are_refused_before_anything_is_written(capsys, tmp_path, argv, message):
    """Checked where every config is checked: one line, exit 2, no run directory."""
    out = tmp_path / "r"
    assert main(["train", "two-moons", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_reproduce_seeds_are_seed_numbers():
    from bimt.cli import _build_parser

    p = _build_parser()
    assert p.parse_args(["reproduce", "--seeds", "0-4"]).seeds == [0, 1, 2, 3, 4]
    assert p.parse_args(["reproduce", "--seeds", "1"]).seeds == [1]
    assert p.parse_args(["reproduce", "--seeds", "3,0,7"]).seeds == [0, 3, 7]
    assert p.parse_args(["reproduce", "--n-seeds", "2"]).n_seeds == 2
    with pytest.raises(SystemExit):
        p.parse_args(["reproduce", "--seeds", "4-1"])
    with pytest.raises(SystemExit):
        p.parse_args(["reproduce", "--seeds", "1", "--n-seeds", "2"])


def test_reproduce_runs_the_named_seeds(tmp_path):
    from bimt.experiments.reproduce import reproduce

    results = reproduce(tasks=["symbolic-independence"], methods=["bimt"], seeds=[3],
                        workers=1, out=tmp_path, steps=3, progress=False)
    assert [r["seed"] for r in results] == [3]
    assert (tmp_path / "runs" / "symbolic-independence" / "bimt-s3").is_dir()


# -- fuzz: random JSON configs -------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = ["method", "seed", "lr", "weight_decay", "batch_size", "loss", "widths", "lambda_schedule",
           "lambda_milestones", "A", "y_star", "p", "reduction", "last_distance_free",
           "bias_free_fraction", "top_k", "swap_every", "swap_mode", "eval_every",
           "checkpoint_every", "dtype", "threads"]
_plausible = {
    "method": st.sampled_from(["bimt", "l1", "vanilla", "l1-swap", "l1-local", "x"]),
    "seed": st.integers(-3, 2**33), "lr": st.floats(-1, 1) | st.sampled_from([1e-3]),
    "batch_size": st.integers(-2, 300), "loss": st.sampled_from(["mse", "ce", "l1"]),
    "widths": st.lists(st.integers(-1, 6), max_size=4),
    "lambda_schedule": st.lists(st.lists(st.floats(-1, 10), min_size=1, max_size=3), max_size=3),
    "lambda_milestones": st.lists(st.lists(st.floats(-1, 2), min_size=2, max_size=2), max_size=2),
    "A": st.floats(-1, 3), "y_star": st.floats(-1, 3), "p": st.floats(-1, 3) | st.just(float("inf")),
    "reduction": st.sampled_from(["sum", "mean", "max"]), "top_k": st.integers(-1, 30),
    "swap_every": st.integers(-1, 3), "eval_every": st.integers(-1, 3), "threads": st.integers(-1, 2),
    "dtype": st.sampled_from(["float32", "float64", "int8"]), "checkpoint_every": st.integers(-1, 5),
    "bias_free_fraction": st.floats(-1, 2), "last_distance_free": st.booleans(),
}


@st.composite
def configs(draw):
    if draw(st.integers(0, 9)) == 0:  # sometimes not an object at all
        return draw(_json)
    keys = draw(st.lists(st.sampled_from(_FIELDS + ["stepz", ""]), max_size=4, unique=True))
    return {k: draw(_plausible[k] if k in _plausible and draw(st.booleans()) else _json) for k in keys}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(config=configs())
def test_fuzz_random_configs_never_traceback(tmp_path_factory, capsys, config):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "c.json"
    path.write_text(json.dumps(config))
    out = tmp / "run"
    code = main(["train", "symbolic-independence", "--config", str(path), "--steps", "2",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        assert (out / "metrics.json").exists()
    else:
        assert code in (1, 2)  # 1: the run diverged (a valid config with a huge lr)
        assert err.count("\n") == 1 and err.startswith("bimt train:"), err
        if code == 2:
            assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_ctrl_c_before_any_checkpoint_says_the_run_starts_over(tmp_path, capsys, monkeypatch):
    import bimt.training.loop as bt

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(bt, "fit", interrupted)
    code = main(["train", "two-moons", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 130
    assert capsys.readouterr().err.strip() == (
        "bimt train: interrupted; no checkpoint was written yet, so the run starts over when run again")


def test_tasks_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m bimt.cli tasks | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""


def test_slow_phases_after_training_say_what_they_do(tmp_path, capsys):
    from bimt.cli import main

    assert main(["train", "two-moons", "--steps", "40", "--animate", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    for phase in ("final evaluation and modularity", "graph.png", "decision_boundary.png",
                  "evolution.gif"):
        assert phase in err
    assert main(["plot", str(tmp_path / "r")]) == 0
    assert "evolution.gif" in capsys.readouterr().err
