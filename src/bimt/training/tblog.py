"""TensorBoard logging of a training run (``bimt train --tensorboard DIR``, ``bimt.fit(tensorboard=DIR)``).

People already watch training in TensorBoard; this writes what a BIMT run is about there: the
losses and accuracies, lambda, the connection cost and the modularity at every evaluation, the
swaps made by every swap pass, and the connectivity graph as an image at every evaluation.
It needs the ``tensorboard`` package (``pip install bimt[tensorboard]``); the writer is torch's
``torch.utils.tensorboard.SummaryWriter``.

Scalar tags: ``loss/train``, ``loss/test``, ``accuracy/train``, ``accuracy/test`` (classification
tasks), ``lambda``, ``connection_cost``, ``modularity``, ``swaps``; image tag: ``graph``.
"""

from __future__ import annotations

import math

__all__ = ["TensorBoardLogger", "SCALARS"]

#: The scalars logged at every evaluation (``swaps`` after every swap pass).
SCALARS = ("loss/train", "loss/test", "accuracy/train", "accuracy/test", "lambda",
           "connection_cost", "modularity", "swaps")


class TensorBoardLogger:
    """Writes one run's scalars and graph pictures to ``logdir`` (an event file per process)."""

    def __init__(self, logdir, graph_images: bool = True):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard itself is missing
            raise ValueError(
                f"--tensorboard needs the tensorboard package ({e}); pip install 'bimt[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(logdir))
        self.graph_images = graph_images

    def _scalar(self, tag, value, step):
        if value is not None and math.isfinite(float(value)):
            self.writer.add_scalar(tag, float(value), step)

    def swaps(self, step: int, report) -> None:
        """After a swap pass: how many swaps it made."""
        self._scalar("swaps", getattr(report, "swaps", 0), step)

    def evaluation(self, step: int, row: dict, model) -> None:
        """At an evaluation step: ``row`` is the history row (losses, accuracies, lam, cost)."""
        from .. import viz
        from ..analysis import modularity

        for tag, key in (("loss/train", "train_loss"), ("loss/test", "test_loss"),
                         ("accuracy/train", "train_acc"), ("accuracy/test", "test_acc"),
                         ("lambda", "lam"), ("connection_cost", "connection_cost")):
            self._scalar(tag, row.get(key), step)
        try:
            self._scalar("modularity", modularity(model), step)
        except ValueError:  # every weight zero: modularity undefined
            pass
        if self.graph_images:
            fig = viz.plot(model)
            self.writer.add_figure("graph", fig, step, close=True)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
