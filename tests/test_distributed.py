"""Data-parallel BIMT: two gloo ranks on the CPU train like one process on the whole batch,
swap the same neurons, and end with bit-identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bimt.training.loop as bt
from bimt.training.loop import fit as train
from bimt.training.runs import load_checkpoint

CONFIG = dict(task="symbolic-independence", steps=300, swap_every=50, eval_every=100,
              dtype="float64", seed=3)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = train(**CONFIG, progress=False, plots=False)
        torch.save({k: v.clone() for k, v in result.model.state_dict().items()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # identical across ranks

    swaps = []
    real = bt.swap_pass

    def counting(*a, **k):
        report = real(*a, **k)
        swaps.append(report.swaps)
        return report

    monkeypatch.setattr(bt, "swap_pass", counting)
    alone = train(**CONFIG, progress=False, plots=False).model.state_dict()
    assert len(swaps) == 6 and sum(swaps) > 0  # the run did swap neurons
    for name, value in alone.items():
        if value.is_floating_point():
            # the mean of two half-batch means is the full batch's mean, up to rounding
            assert torch.allclose(ranks[0][name], value, rtol=1e-7, atol=1e-9), name
        else:
            assert torch.equal(ranks[0][name], value), name  # same permutations


def test_torchrun_bimt_train(tmp_path):
    """``torchrun --nproc-per-node 2 -m bimt.cli train``: one run directory, written by rank 0."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "bimt.cli", "train", "two-moons", "--steps", "40", "--swap-every", "10",
           "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its ranks, not only torchrun
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("two-moons [bimt, seed 0]") == 1  # rank 0 reports, once
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 40 and (out / "metrics.json").exists()


def test_uneven_batch_is_refused():
    from bimt.training import distributed

    x = torch.zeros(5, 2)
    assert distributed.shard(x, x)[0] is x  # one process: the whole batch
    with pytest.MonkeyPatch.context() as m:
        m.setattr(distributed, "world", lambda: (0, 2))
        with pytest.raises(ValueError, match="5 samples does not split evenly over 2 ranks"):
            distributed.shard(x, x)
