"""BIMT as a PyTorch Lightning (2.x) callback: ``Trainer(callbacks=[BIMTCallback(...)])``.

Where it acts, in Lightning's order for one optimizer step (automatic or manual optimization):
every micro-batch's ``training_step`` and backward (Lightning divides the loss by
``accumulate_grad_batches``, so the summed gradients are the full batch's mean), then AMP's
``unscale_`` (16-bit mixed precision), then ``on_before_optimizer_step``, where the cost's
gradient is added, once, in unscaled units, then gradient clipping (``gradient_clip_val``:
the cost's gradient is clipped with the loss's), then ``optimizer.step()``. In
``on_train_batch_end``, after the step, a swap pass runs every ``swap_every`` optimizer steps
(``trainer.global_step``) and moves the state of every optimizer of the trainer.
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("bimt.integrations.lightning needs Lightning 2.x (the `lightning` package): "
                      "pip install 'bimt[lightning]'") from e

from ..core.settings import DEFAULT_SWAP_EVERY, DEFAULT_SWAP_MODE
from .common import BIMTStepper, grad_scale

__all__ = ["BIMTCallback"]


class BIMTCallback(Callback):
    """Connection-cost gradient, swap passes and their metrics for a Lightning run.

    ``model``: the wired network (anything :func:`bimt.wiring_of` accepts); ``None`` finds the
    one wired module inside the LightningModule. ``lam``, ``swap_every``, ``top_k``, ``mode``,
    ``log_every`` (default: the trainer's ``log_every_n_steps``) and ``modularity_every``: see
    :class:`~bimt.integrations.common.BIMTStepper`. ``bimt/cost``, ``bimt/lambda``,
    ``bimt/swaps`` (so far) and ``bimt/modularity`` (the last measured) go to
    ``pl_module.log``; ``history`` keeps every row, ``wiring`` the trained handle.
    """

    def __init__(self, model=None, lam=None, *, swap_every: int | None = DEFAULT_SWAP_EVERY,
                 top_k: int | None = None, mode: str = DEFAULT_SWAP_MODE, log_every: int | None = None,
                 modularity_every: int | None = None):
        self.stepper = BIMTStepper(model, lam, swap_every=swap_every, top_k=top_k, mode=mode,
                                   log_every=log_every, modularity_every=modularity_every)
        self._steps_seen = 0
        self._total_steps = None

    @property
    def wiring(self):
        return self.stepper.wiring

    @property
    def history(self) -> list[dict]:
        return self.stepper.history

    def setup(self, trainer, pl_module, stage) -> None:
        self.stepper.bind(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._steps_seen = trainer.global_step  # a resumed run goes on from its step
        self._total_steps = trainer.estimated_stepping_batches

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # MixedPrecision's GradScaler
        self.stepper.add_cost_grad(trainer.global_step, self._total_steps, grad_scale(scaler, optimizer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._steps_seen:  # a micro-batch of an accumulation: no step yet
            return
        before, self._steps_seen = self._steps_seen, step
        every = self.stepper.log_every or trainer.log_every_n_steps
        log = bool(every) and step // every > before // every
        metrics = self.stepper.after_step(step, trainer.optimizers, log, before)
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)
