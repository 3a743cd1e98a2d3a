"""BIMT inside other training loops: callbacks for PyTorch Lightning and the Hugging Face Trainer.

Both callbacks are thin adapters around one :class:`~bimt.integrations.common.BIMTStepper`,
which does what :meth:`bimt.Wiring.step` does in a loop of your own, cut at the framework's
hooks: the cost's gradient after backward, the swap pass after the optimizer step. Import the
one you need (``bimt.integrations.lightning``, ``bimt.integrations.transformers``); each needs
its library (``pip install 'bimt[lightning]'`` or ``'bimt[hf]'``), this package does not.
"""
