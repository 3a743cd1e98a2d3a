"""Which device a run uses: ``cpu``, ``cuda`` (or ``cuda:N``) or ``auto``.

Training, cost gradients and evaluation run on the chosen device; the swap engine's
placement matrices and linear-assignment solves are small and go to the CPU in float64 (see
:meth:`bimt.ConnectionCost.placement_matrix`), and the permutations come back to the device.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "DEVICE_CHOICES"]

#: ``--device`` values; ``auto`` takes CUDA when there is one.
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` (leave tensors where they are made: the CPU), or a checked ``torch.device``."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        kind = device.type
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        kind = device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(
                f"unknown device {device!r}; allowed: {', '.join(DEVICE_CHOICES)} (or cuda:N)"
            )
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, auto") from None
    else:
        raise ValueError(f"device must be a string or torch.device, got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but this torch build sees no CUDA GPU; use "
                "--device cpu (or auto, which falls back to the CPU)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device
