"""TensorBoard logging, read back with tensorboard's own event reader."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")

import bimt  # noqa: E402
from bimt.cli import main  # noqa: E402
from bimt.training.tblog import SCALARS  # noqa: E402


def _accumulate(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_cli_tensorboard_logs_every_scalar_and_the_graph(tmp_path, capsys):
    logdir = tmp_path / "tb"
    assert main(["train", "two-moons", "--steps", "20", "--eval-every", "5", "--swap-every", "5",
                 "--out", str(tmp_path / "run"), "--tensorboard", str(logdir), "--quiet"]) == 0
    acc = _accumulate(logdir)
    tags = acc.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    for tag in SCALARS:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == [5, 10, 15, 20], tag  # evaluations (and swap passes) every 5 steps
    assert "graph" in tags["images"] and len(acc.Images("graph")) == 4
    assert acc.Images("graph")[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    # the logged numbers are the run's own
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = hist[0].split(",")
    last = dict(zip(header, hist[-1].split(",")))
    assert acc.Scalars("loss/test")[-1].value == pytest.approx(float(last["test_loss"]), rel=1e-6)
    assert acc.Scalars("lambda")[-1].value == pytest.approx(float(last["lam"]), rel=1e-6)


def test_api_tensorboard_regression_has_no_accuracy(tmp_path):
    logdir = tmp_path / "tb"
    bimt.fit(task="symbolic-independence", steps=10, eval_every=5, swap_every=5, progress=False, plots=False,
             tensorboard=logdir)
    tags = _accumulate(logdir).Tags()["scalars"]
    assert {"loss/train", "loss/test", "lambda", "connection_cost", "modularity", "swaps"} <= set(tags)
    assert not any(t.startswith("accuracy/") for t in tags)
