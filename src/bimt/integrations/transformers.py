"""BIMT as a Hugging Face ``Trainer`` callback: ``Trainer(..., callbacks=[BIMTCallback(...)])``.

Where it acts, in the Trainer's order for one optimizer step (transformers >= 4.45): every
micro-batch's forward and backward (the Trainer divides the loss by the number of
accumulation steps, or the model normalises it by ``num_items_in_batch``: the summed gradients
are the full batch's mean either way), then gradient clipping (``max_grad_norm``, after
accelerate's ``unscale_`` under fp16), then ``on_pre_optimizer_step``, where the cost's
gradient is added, once, in the units the gradients carry (times the GradScaler's scale while
they are still scaled): it is added *after* clipping, so it is never clipped. Then
``optimizer.step()``, the learning-rate scheduler, ``zero_grad`` and ``on_step_end``, where a
swap pass runs every ``swap_every`` optimizer steps (``state.global_step``) and moves the
optimizer's state. The metrics join the Trainer's logs in ``on_log``, whenever it logs.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("bimt.integrations.transformers needs transformers: pip install 'bimt[hf]'") from e

from ..core.settings import DEFAULT_SWAP_EVERY, DEFAULT_SWAP_MODE
from .common import BIMTStepper, grad_scale

__all__ = ["BIMTCallback"]


class BIMTCallback(TrainerCallback):
    """Connection-cost gradient, swap passes and their metrics for a ``transformers.Trainer``.

    ``model``: the wired network (anything :func:`bimt.wiring_of` accepts); ``None`` finds the
    one wired module inside the Trainer's model. ``lam``, ``swap_every``, ``top_k``, ``mode``
    and ``modularity_every``: see :class:`~bimt.integrations.common.BIMTStepper`;
    ``log_every``: steps between ``history`` rows (default: whenever the Trainer logs). Each
    time the Trainer logs (``logging_steps``), ``bimt/cost``, ``bimt/lambda``, ``bimt/swaps``
    (so far) and ``bimt/modularity`` (the last measured) join its logs: ``state.log_history``
    and the callbacks after this one. Reporters named in ``report_to`` come before user
    callbacks; to reach them put this one first:
    ``trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(BIMTCallback))``.
    ``history`` keeps every row, ``wiring`` the trained handle.
    """

    def __init__(self, model=None, lam=None, *, swap_every: int | None = DEFAULT_SWAP_EVERY,
                 top_k: int | None = None, mode: str = DEFAULT_SWAP_MODE, log_every: int | None = None,
                 modularity_every: int | None = None):
        self.stepper = BIMTStepper(model, lam, swap_every=swap_every, top_k=top_k, mode=mode,
                                   log_every=log_every, modularity_every=modularity_every)
        self._logged_step = None

    @property
    def wiring(self):
        return self.stepper.wiring

    @property
    def history(self) -> list[dict]:
        return self.stepper.history

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if "on_pre_optimizer_step" not in vars(CallbackHandler):
            import transformers

            raise RuntimeError(f"transformers {transformers.__version__} calls no callback between "
                               "backward and the optimizer step; BIMTCallback needs transformers >= 4.45")
        self.stepper.bind(model)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        self.stepper.add_cost_grad(state.global_step, state.max_steps, grad_scale(scaler, optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        every = self.stepper.log_every
        self.stepper.after_step(state.global_step, [optimizer], every is not None and state.global_step % every == 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The Trainer logs now: its logs get the metrics (once per step, evaluations included)."""
        step = state.global_step
        if logs is None or step == 0 or step == self._logged_step:
            return
        self._logged_step = step
        metrics = self.stepper.log_now(step)
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(metrics)  # the Trainer stored a copy before calling us
