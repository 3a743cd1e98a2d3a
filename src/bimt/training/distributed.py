"""Data-parallel BIMT under ``torchrun``: every rank trains on its part of each batch, and every
rank swaps the same neurons at the same step.

Run ``torchrun --nproc-per-node N -m bimt train TASK ...`` (or call :func:`bimt.fit` in a
script started by ``torchrun`` after :func:`init_from_env`). Gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on GPU); the cost's
gradient is added after that average, identically on every rank, because the weights are
identical. Swap passes are decided once, on rank 0, and the permutations broadcast: every other
rank applies them with :func:`bimt.apply_permutation`, which moves its optimizer state too, so
the ranks' weights stay bit-identical even if a float rounding would have tipped one rank's
greedy choice differently.

With one process (no process group), every helper here is a no-op pass-through.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from ..core.swap import DEFAULT_MODE, SwapReport, apply_permutation
from ..core.swap import swap_pass as _swap_pass

__all__ = ["init_from_env", "active", "is_main", "wrap", "shard", "swap_pass", "world"]


def active() -> bool:
    """A process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` alone."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes the run directory."""
    return world()[0] == 0


def init_from_env(device: str | None = None) -> bool:
    """Start the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); ``True`` if started.

    The backend is nccl for CUDA devices and gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def local_device(device):
    """Under torchrun, ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    if active() and device is not None and torch.device(device).type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when a process group runs, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every rank starts equal.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def shard(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous, equal part of a global batch.

    DDP averages the ranks' gradients, so each rank's mean loss must be over the same number of
    samples for the average to equal the gradient of the global batch's mean loss.
    """
    rank, size = world()
    if size == 1:
        return xb, yb
    n = len(xb)
    if n % size:
        raise ValueError(
            f"a batch of {n} samples does not split evenly over {size} ranks; choose a "
            f"--batch-size (or a dataset size) divisible by {size}"
        )
    part = n // size
    return xb[rank * part:(rank + 1) * part], yb[rank * part:(rank + 1) * part]


def swap_pass(module, spec, cost, top_k=None, mode=DEFAULT_MODE, optimizer=None, groups=None,
              costs=True):
    """:func:`bimt.swap_pass` decided on rank 0; the other ranks apply its permutations."""
    if not active():
        return _swap_pass(module, spec, cost, top_k, mode, optimizer, groups, costs)
    if dist.get_rank() == 0:
        report = _swap_pass(module, spec, cost, top_k, mode, optimizer, groups, costs)
        payload = [{g: np.asarray(p) for g, p in report.permutations.items()}, report.swaps]
    else:
        payload = [None, None]
    dist.broadcast_object_list(payload, src=0)
    if dist.get_rank() == 0:
        return report
    perms, swaps = payload
    report = SwapReport(mode=mode, swaps=swaps)
    for g, perm in perms.items():
        # a group's permutations compose into one, and groups index different axes, so the
        # final per-group permutations replay the whole pass
        if not (perm == np.arange(len(perm))).all():
            apply_permutation(module, spec, g, perm, optimizer)
        report.permutations[g] = perm
    return report
