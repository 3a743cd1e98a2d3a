"""--device: checked names, CPU everywhere, CUDA when a GPU is present (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch

import bimt
from bimt.analysis import modularity
from bimt.cli import main
from bimt.training.devices import resolve_device
from bimt.training.loop import fit as train

QUIET = dict(progress=False, plots=False)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_resolve_device():
    assert resolve_device(None) is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; allowed: cpu, cuda, auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_cpu_device_gives_the_default_numbers():
    kw = dict(task="two-moons", steps=30, swap_every=10, **QUIET)
    a, b = train(**kw), train(device="cpu", **kw)
    assert a.metrics["test_loss"] == b.metrics["test_loss"]


def test_cli_refuses_unknown_device(capsys, tmp_path):
    assert main(["train", "two-moons", "--device", "tpu", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'tpu'" in err and "cuda:N" in err
    assert not (tmp_path / "r").exists()


def test_cli_takes_every_device_resolve_device_takes(capsys, tmp_path):
    """``cuda:1`` reaches the same check as ``bimt.fit(device="cuda:1")`` (no GPU here: refused
    by it, with one line, not by the parser's choices)."""
    code = main(["train", "two-moons", "--steps", "2", "--device", "cuda:1", "--quiet",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    if torch.cuda.device_count() > 1:
        assert code == 0
    else:
        assert code == 2 and "invalid choice" not in err and "cuda:1" in err


@cuda
def test_cuda_training_swaps_and_analysis():
    kw = dict(task="symbolic-independence", steps=200, swap_every=50, dtype="float64", **QUIET)
    cpu, gpu = train(**kw), train(device="cuda", **kw)
    assert next(gpu.model.parameters()).is_cuda
    assert gpu.metrics["test_loss"] == pytest.approx(cpu.metrics["test_loss"], rel=1e-6)
    report = gpu.model.swap(top_k=5, mode="exact")  # placement on the CPU, applied on the GPU
    assert report.cost_after <= report.cost_before + 1e-9
    assert modularity(gpu.model) == pytest.approx(modularity(gpu.model.cpu()), abs=1e-9)


@cuda
def test_cuda_cost_gradient_matches_cpu():
    torch.manual_seed(0)
    model = bimt.BioMLP([4, 8, 2]).double()
    cost = model.wiring.connection_cost
    gpu = bimt.BioMLP([4, 8, 2]).double().cuda()
    gpu.load_state_dict(model.state_dict())
    for m in (model, gpu):
        m.zero_grad()
        cost.add_grad_(m, 0.5)
    for (n, p), q in zip(model.named_parameters(), gpu.parameters()):
        assert torch.allclose(p.grad, q.grad.cpu()), n
