"""Tasks beyond the paper's models, generated in code: the data and model builders of the
``two-stream``, ``goal-inference`` (BioRNN) and ``cnn-mnist`` (BioCNN) tasks, which
:mod:`bimt.tasks` registers. Data functions return the fields of :class:`bimt.tasks.Data` as a
tuple ``(X_train, y_train, X_test, y_test, source, input_labels, output_labels)``.

* ``two-stream``: modular by construction. Two independent input streams ``a_t``, ``b_t`` ~
  U[-1, 1], 20 steps; output 1 is the running sum ``0.25 * sum_{s<=t} a_s``, output 2 the
  delayed copy ``b_{t-2}`` (0 for the first two steps). Each output needs memory of one
  stream only, so a network that solves it can split into two recurrent modules.
* ``goal-inference``: a one-step inference task after seRNN's (Achterberg et al., Nature
  Machine Intelligence 2023): on a 3x3 grid the goal cell is shown (steps 0-4, nine one-hot
  inputs), then nothing (delay, steps 5-9), then the agent's current cell, one step away from
  the goal (steps 10-14, nine more one-hot inputs); at the last step the network must choose
  the move (up, down, left, right) that reaches the goal. Inputs carry Gaussian noise (sd 0.05)
  so that every trial differs. Its grid, timing and noise are ours; seRNN's version differs in
  detail (see README).
* ``cnn-mnist``: conv 1->8 and 8->16 channels (3x3, ReLU, max-pool 2), then 784 -> 32 -> 10;
  channels and units on lines, on the ``mnist`` task's data. Cross-entropy; the cost is summed
  (with ``mean`` per tensor, the 25,088 weights of the first linear layer would feel almost
  nothing); lambda 1e-4 for a third of the run, then 1e-3.
"""

from __future__ import annotations

import torch

from ..core.settings import CostSettings
from . import Data, Task, paper, register_task

__all__ = ["two_stream_arrays", "goal_inference_arrays", "rnn_model", "cnn_model",
           "TWO_STREAM_DEFAULTS", "GOAL_INFERENCE_DEFAULTS", "CNN_MNIST_DEFAULTS"]

TWO_STREAM_STEPS, TWO_STREAM_DELAY = 20, 2


def two_stream_arrays(seed: int, n_train: int = 1000, n_test: int = 500) -> tuple:
    """Two input streams in ``[-1, 1]``; output 1 is a running sum of stream a, output 2 stream b
    two steps ago, so the two outputs need disjoint parts of the network."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n_train + n_test, TWO_STREAM_STEPS, 2, generator=g) * 2 - 1
    y = torch.zeros_like(X)
    y[..., 0] = 0.25 * X[..., 0].cumsum(1)
    y[:, TWO_STREAM_DELAY:, 1] = X[:, :-TWO_STREAM_DELAY, 1]
    return (X[:n_train], y[:n_train], X[n_train:], y[n_train:], "generated",
            ["a", "b"], ["sum(a)", "b(t-2)"])


MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right as (row, col) steps
_GOAL, _DELAY, _CHOICE = 5, 5, 5


def goal_inference_arrays(seed: int, n_train: int = 1000, n_test: int = 500,
                          noise: float = 0.05) -> tuple:
    """A goal cell of a 3x3 grid shown, a delay, then the current cell: the answer is the move
    that reaches the goal, so the network must hold the goal through the delay."""
    g = torch.Generator().manual_seed(seed)
    trials = [(r * 3 + c, (r - dr) * 3 + (c - dc), m)  # (goal, current, move to the goal)
              for r in range(3) for c in range(3) for m, (dr, dc) in enumerate(MOVES)
              if 0 <= r - dr < 3 and 0 <= c - dc < 3]
    n = n_train + n_test
    pick = torch.randint(len(trials), (n,), generator=g)
    T = _GOAL + _DELAY + _CHOICE
    X = torch.zeros(n, T, 18)
    y = torch.empty(n, dtype=torch.long)
    for i, k in enumerate(pick.tolist()):
        goal, here, move = trials[k]
        X[i, :_GOAL, goal] = 1.0
        X[i, _GOAL + _DELAY:, 9 + here] = 1.0
        y[i] = move
    X += noise * torch.randn(X.shape, generator=g)
    labels = [f"goal{i}" for i in range(9)] + [f"at{i}" for i in range(9)]
    return (X[:n_train], y[:n_train], X[n_train:], y[n_train:], "generated",
            labels, ["up", "down", "left", "right"])


def rnn_model(d_in: int, d_out: int, layout):
    """A builder ``make(config) -> BioRNN``; ``widths`` is ``[hidden]`` or
    ``[d_in, hidden, d_out]``. The hidden units take ``layout`` when their number is a square
    (a grid), else a line."""

    def make(config: dict):
        from ..models.rnn import BioRNN

        widths = config.get("widths") or [36]
        if len(widths) not in (1, 3):
            raise ValueError(f"widths for an RNN task is [hidden] or [{d_in}, hidden, {d_out}], "
                             f"got {widths}")
        if len(widths) == 3 and (widths[0], widths[2]) != (d_in, d_out):
            raise ValueError(f"this task has {d_in} inputs and {d_out} outputs, got widths {widths}")
        hidden = widths[len(widths) // 2]
        side = round(hidden ** 0.5)
        hidden_layout = layout if side * side == hidden else "line"
        return BioRNN(d_in, hidden, d_out, layout=hidden_layout,
                      settings=CostSettings.from_config(config))

    return make


RNN_LAMBDA = [[1e-3, 1], [1e-2, 2], [1e-3, 1]]
#: ``two-stream``'s settings (lambda 1e-3, 1e-2, 1e-3 over a quarter, half and quarter of the run).
TWO_STREAM_DEFAULTS = dict(
    widths=[36], steps=3000, lr=3e-3, batch_size=128, loss="mse", lambda_schedule=RNN_LAMBDA,
    A=1.0, y_star=0.1, top_k=10, swap_every=100, reduction="sum", eval_every=250,
)
#: ``goal-inference``: as two-stream, with cross-entropy on the chosen move.
GOAL_INFERENCE_DEFAULTS = dict(TWO_STREAM_DEFAULTS, loss="ce", steps=2000)


def cnn_model(config: dict):
    """``make(config) -> BioCNN`` for cnn-mnist (``widths``: conv channels, then hidden units)."""
    from ..models.conv import BioCNN

    widths = config.get("widths") or [8, 16, 32]
    if len(widths) < 2:
        raise ValueError(f"widths for cnn-mnist lists conv channels then hidden units, e.g. "
                         f"[8, 16, 32]; got {widths}")
    return BioCNN((1, 28, 28), channels=widths[:2], hidden=widths[2:], n_classes=10,
                  settings=CostSettings.from_config(config))


#: ``cnn-mnist``'s settings (lambda 1e-4 for the first third of the run, then 1e-3).
CNN_MNIST_DEFAULTS = dict(
    widths=[8, 16, 32], steps=2000, lr=2e-3, batch_size=100, loss="ce",
    lambda_schedule=[[1e-4, 1], [1e-3, 2]], A=2.0, y_star=0.5, top_k=8, swap_every=200,
    reduction="sum", eval_every=500,
)


# -- beyond the paper: BioRNN and BioCNN tasks (data and models in bimt/taskspy) ------


def _from_arrays(make):
    return lambda seed, data_dir=None: Data(*make(seed))


register_task(Task(
    "two-stream", "BioRNN: running sum of stream a and delayed copy of stream b (modular by "
    "construction)", "regression", _from_arrays(two_stream_arrays),
    rnn_model(2, 2, "grid"), TWO_STREAM_DEFAULTS,
))
register_task(Task(
    "goal-inference", "BioRNN: remember a goal cell on a 3x3 grid, then choose the move that "
    "reaches it (after seRNN's one-step inference task)", "classification",
    _from_arrays(goal_inference_arrays), rnn_model(18, 4, "grid"),
    GOAL_INFERENCE_DEFAULTS, predict=lambda out: out[:, -1],
))
register_task(Task(
    "cnn-mnist", "MNIST digits with a small CNN whose channels are neurons (same data as mnist)",
    "classification", paper._mnist, cnn_model, CNN_MNIST_DEFAULTS,
))
