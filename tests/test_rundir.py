"""Run directories: one writer at a time, another run's directory refused unless forced,
--resume refuses settings that differ, leftovers of killed writers removed, nothing left
behind by a run that fails before it wrote anything."""

import fcntl
import json
import re
import os

import pytest

from bimt.cli import main
from bimt.training.runs import LOCK_NAME, RunDirBusy, claim_run_dir
from bimt.training.loop import fit as train

QUIET = dict(progress=False, plots=False)
TINY = dict(task="two-moons", steps=4, swap_every=2)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"process 4242 on somehost")
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would hold it (flock is per open file)
    try:
        with pytest.raises(RunDirBusy, match="process 4242 on somehost"):
            train(out=run, **TINY, **QUIET)
    finally:
        os.close(fd)
    assert not (run / "config.json").exists()
    train(out=run, **TINY, **QUIET)  # released: the run goes ahead
    assert (run / "metrics.json").exists()


def test_another_runs_directory_is_refused_unless_forced(tmp_path, capsys):
    run = tmp_path / "r"
    train(out=run, **TINY, **QUIET)
    (run / "analysis.md").write_text("old analysis")
    code = main(["train", "symbolic-independence", "--steps", "4", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "two-moons" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert json.loads((run / "config.json").read_text())["task"] == "two-moons"
    code = main(["train", "symbolic-independence", "--steps", "4", "--out", str(run), "--quiet",
                 "--force"])
    assert code == 0
    assert json.loads((run / "metrics.json").read_text())["task"] == "symbolic-independence"
    assert not (run / "analysis.md").exists()  # the old run's analysis went with it


def test_the_same_run_again_restarts_it(tmp_path):
    run = tmp_path / "r"
    a = train(out=run, **TINY, **QUIET)
    b = train(out=run, **TINY, **QUIET)
    assert a.metrics["test_loss"] == b.metrics["test_loss"]


def test_a_directory_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        train(out=tmp_path, **TINY, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME) == ["notes.txt"]


def test_resume_refuses_another_task_or_setting(tmp_path, capsys):
    run = tmp_path / "r"
    train(out=run, **dict(TINY, steps=8), **QUIET)
    code = main(["train", "symbolic-independence", "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "task='symbolic-independence'" in err and "two-moons" in err
    with pytest.raises(ValueError, match="lr=0.5"):
        train(out=run, resume=True, lr=0.5, **QUIET)
    train(out=run, resume=True, steps=8, **QUIET)  # the run's own value is fine


def test_leftover_temporary_files_are_removed(tmp_path):
    run = tmp_path / "r"
    train(out=run, **dict(TINY, steps=8), **QUIET)
    stale = run / ".checkpoint.pt.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(out=run, resume=True, **QUIET)
    assert not stale.exists()


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(ValueError):
        train(out=run, task="two-moons", steps=4, widths=[3, 5, 2], **QUIET)  # 3 inputs for 2
    assert not run.exists()


def test_claim_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        with claim_run_dir(f, {}):
            pass


def test_a_checkpoint_that_does_not_fit_its_config_is_named(tmp_path):
    import torch

    run = tmp_path / "r"
    train(out=run, **dict(TINY, steps=8), **QUIET)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"] = {k: torch.zeros(3, 3) for k in state["model"]}  # weights of another network
    state["step"] = 4
    torch.save(state, run / "checkpoint.pt")
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="checkpoint.pt does not fit the model its config builds"):
        train(out=run, resume=True, **QUIET)


@pytest.mark.parametrize("task", ["cnn-mnist", "in-context-singular", "permutation-s4"])
def test_analyze_and_view_every_kind_of_run(tmp_path, capsys, task):
    """CNN channels (whose input is one channel, not the data's 784 pixels) and float64 runs
    (in-context, S4) train, analyse and view; an RNN's report is refused in one line."""
    run = tmp_path / task
    assert main(["train", task, "--steps", "3", "--out", str(run), "--quiet"]) == 0
    assert main(["analyze", str(run), "--prune", "--knockout"]) == 0
    assert main(["view", str(run)]) == 0
    assert (run / "report.html").exists()
    capsys.readouterr()


def test_view_of_a_recurrent_run_draws_it(tmp_path, capsys):
    """Every view has a drawing, so bimt view draws recurrent runs too (hidden units at their
    grid positions, recurrent weights inside their row)."""
    run = tmp_path / "rnn"
    assert main(["train", "two-stream", "--steps", "3", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["view", str(run)]) == 0
    data = json.loads(_data_block((run / "report.html").read_text()))
    hidden = next(r for r in data["rows"] if r["group"] == "hidden")
    assert hidden["dz"] is not None  # drawn at its grid positions
    assert any(b["out"] == b["in"] for b in data["blocks"])  # the recurrent weight


def _data_block(page: str) -> str:
    return re.search(r'<script type="application/json" id="bimt-data">(.*?)</script>', page, re.S).group(1)
