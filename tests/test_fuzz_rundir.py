"""A run directory is untrusted input: random and hostile run directories (configs, metrics,
histories, labels, truncated and mismatched checkpoints) fed to ``bimt analyze``, ``plot``,
``view`` and ``bimt.load_model``. Each answers with success or one line and exit 2: never a
traceback, nothing written outside the run, no markup from the run in the report's page.
Bounded in time (a few dozen examples, well under a minute)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bimt
from bimt.cli import main

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script>", "<!--",
           "]]>", "\u2028", "\u2029", "\x00", "../../etc/passwd", "\ud7ff" * 3]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                      st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE),
                      st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=10)),
                                                 inner, max_size=4)), max_leaves=12)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A small finished run of a user's module (labels and all kept in its checkpoint)."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    bimt.attach(net, input_labels=["a", "b", "c"], output_labels=["p", "q"])
    X = torch.rand(40, 3)
    Y = torch.stack([X[:, 0] * X[:, 1], X[:, 2]], 1)
    bimt.fit(model=net, data=(X[:30], Y[:30], X[30:], Y[30:]), loss="mse", steps=12, swap_every=4,
             out=root / "run", progress=False)
    return root / "run"


def _mutate(run: Path, data) -> None:
    """Break one part of the run directory in a way drawn by hypothesis."""
    part = data.draw(st.sampled_from(["config", "metrics", "history", "checkpoint-bytes",
                                      "checkpoint-config", "checkpoint-labels", "checkpoint-weights",
                                      "checkpoint-spec", "missing", "deep"]))
    if part == "config":
        (run / "config.json").write_text(json.dumps(data.draw(json_value)))
    elif part == "metrics":
        (run / "metrics.json").write_text(json.dumps(data.draw(json_value)))
    elif part == "history":
        (run / "history.csv").write_text(data.draw(st.text(max_size=200)))
    elif part == "checkpoint-bytes":
        raw = (run / "checkpoint.pt").read_bytes()
        cut = data.draw(st.integers(0, len(raw) - 1))
        junk = data.draw(st.binary(max_size=64))
        (run / "checkpoint.pt").write_bytes(raw[:cut] + junk)
    elif part == "missing":
        (run / data.draw(st.sampled_from(["checkpoint.pt", "config.json", "metrics.json",
                                          "history.csv"]))).unlink()
    elif part == "deep":
        depth = data.draw(st.integers(5_000, 100_000))
        (run / "config.json").write_text("[" * depth + "]" * depth)
    else:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        if part == "checkpoint-config":
            key = data.draw(st.sampled_from(sorted(state["config"]) + ["nonsense"]))
            state["config"][key] = data.draw(json_value)
            if data.draw(st.booleans()):  # an editor who also edits config.json
                (run / "config.json").write_text(json.dumps(state["config"], default=str))
        elif part == "checkpoint-labels":
            which = data.draw(st.sampled_from(["input_labels", "output_labels", "view"]))
            state["wiring"][which] = data.draw(st.one_of(
                st.lists(st.sampled_from(HOSTILE), min_size=0, max_size=4), json_value))
        elif part == "checkpoint-weights":
            name = data.draw(st.sampled_from(sorted(state["model"])))
            shape = data.draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
            state["model"][name] = torch.zeros(shape)
        else:
            key = data.draw(st.sampled_from(["groups", "axes", "charges", "free"]))
            state["wiring"]["spec"][key] = data.draw(json_value)
        buf = io.BytesIO()
        torch.save(state, buf)
        (run / "checkpoint.pt").write_bytes(buf.getvalue())


def _tree(root: Path) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_run_directories_get_one_line_and_exit_2_or_success(good_run, tmp_path, capsys, data):
    root = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    run = root / "run"
    shutil.copytree(good_run, run)
    (root / "bystander.txt").write_text("not the run's")
    _mutate(run, data)
    outside = {k: v for k, v in _tree(root).items() if k.parts[0] != "run"}
    for command in (["analyze", "--knockout"], ["plot"], ["view"]):
        capsys.readouterr()
        code = main([command[0], str(run), *command[1:]])
        err = capsys.readouterr().err
        assert code in (0, 2), (command, code, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and err.startswith(f"bimt {command[0]}: error:"), err
        if command == ["view"] and code == 0:
            page = (run / "report.html").read_text()
            assert page.count("<script") == 2 and "<img" not in page
            block = re.search(r'id="bimt-data">(.*?)</script>', page, re.S).group(1)
            assert not set("<>&") & set(block)
    try:
        bimt.load_model(run)
    except (ValueError, FileNotFoundError):
        pass
    assert {k: v for k, v in _tree(root).items() if k.parts[0] != "run"} == outside
