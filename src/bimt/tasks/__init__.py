"""Tasks as data: a dataset, a model builder and default settings, by name.

The paper's tasks are in :mod:`bimt.tasks.paper`, the recurrent and convolutional ones in
:mod:`bimt.tasks.extra`; data loaders in :mod:`bimt.tasks.data`. A task of your own is a :class:`Task` built from arrays or a function with :func:`task_from_arrays`
or :func:`task_from_function`, registered with :func:`register_task` if you want ``bimt train``
to know it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.settings import CostSettings

__all__ = [
    "Data", "Task", "TASKS", "get_task", "register_task", "task_from_arrays", "task_from_function",
]




@dataclass
class Data:
    """Train and test tensors, and where they came from."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    source: str = "generated"
    input_labels: list[str] | None = None
    output_labels: list[str] | None = None
    #: targets the training loss fits when it fits more than the reported quantity (None: y_train)
    y_train_fit: torch.Tensor | None = None
    #: evaluate the training loss on the first this many rows only (large corpora); None: all
    train_eval_rows: int | None = None


@dataclass
class Task:
    """A dataset, a model builder and the settings the paper used for them.

    ``make_data(seed, data_dir)`` returns :class:`Data`; ``make_model(config)`` returns a
    module with a wiring (a :class:`bimt.BioMLP`, say, or any module given one by
    :func:`bimt.attach`) built from the run's config (``widths``, ``A``, ``y_star``, ...). ``defaults`` are :class:`bimt.train.TrainConfig` fields.
    ``predict(output)`` maps model outputs to what the loss compares with the targets;
    ``predict_fit`` does so for ``Data.y_train_fit`` when a task trains on more than it reports.
    ``method_defaults`` override ``defaults`` for one method (``{"vanilla": {...}}``).
    ``metrics(row)`` adds task-specific entries to ``metrics.json`` from the final evaluation
    row (``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``, ``connection_cost``).
    ``probe(seed) -> (data, metric)`` gives what :func:`bimt.analysis.find_circuit` reads a
    trained model's circuit on (``bimt analyze RUN --circuit``): inputs and ``metric(logits,
    data)``, higher is better.
    """

    name: str
    description: str
    kind: str  # "regression" or "classification"
    make_data: Callable[[int, str | None], Data]
    make_model: Callable[[dict], torch.nn.Module]
    defaults: dict = field(default_factory=dict)
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    predict_fit: Callable[[torch.Tensor], torch.Tensor] | None = None
    method_defaults: dict = field(default_factory=dict)
    metrics: Callable[[dict], dict] | None = None
    probe: Callable | None = None

    def extra_metrics(self, row: dict) -> dict:
        return self.metrics(row) if self.metrics is not None else {}

    def __post_init__(self):
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"task kind must be 'regression' or 'classification', got {self.kind!r}")


#: Every registered task by name: what ``bimt train NAME`` and ``bimt.fit(task=NAME)`` look up.
TASKS: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Make ``task`` known by its name to ``bimt train``, ``bimt.fit(task=...)``, reproduce and
    sweep in this process; an existing name is refused unless ``replace``."""
    if task.name in TASKS and not replace:
        raise ValueError(f"a task named {task.name!r} already exists; pass replace=True")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


# -- model builders ------------------------------------------------------------------------
def mlp_builder(**fixed):
    def make(config: dict):
        from ..models import BioMLP

        return BioMLP(config["widths"], settings=CostSettings.from_config(config), **fixed)

    return make


def uniform_regression(formula, n_in: int, labels_in, labels_out, n_train=100, n_test=100):
    """Inputs ``U[-1, 1]`` drawn as the reference notebooks draw them: numpy's legacy generator
    seeded with the run's seed, the training set first, then the test set (so seed N is the
    notebooks' seed N; the draw alone moves symbolic (b)'s loss 3.4x). Targets are computed in
    float64 and stored as float32, as the notebooks do."""

    def make(seed: int, data_dir=None) -> Data:
        rng = np.random.RandomState(seed % 2**32)
        X_train = torch.from_numpy(rng.rand(n_train, n_in) * 2 - 1)
        X_test = torch.from_numpy(rng.rand(n_test, n_in) * 2 - 1)
        f = lambda t: t.to(torch.float32)
        return Data(f(X_train), f(formula(X_train)), f(X_test), f(formula(X_test)), "generated",
                    list(labels_in), list(labels_out))

    return make



# -- users' own tasks --------------------------------------------------------------------
def task_from_arrays(
    name: str,
    X_train, y_train, X_test=None, y_test=None, *,
    kind: str | None = None,
    hidden: Sequence[int] = (20, 20),
    description: str = "",
    input_labels: Sequence[str] | None = None,
    output_labels: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    **defaults,
) -> Task:
    """A task from arrays: regression for float targets, classification for integer labels.

    Without a test set, a seeded ``test_fraction`` of the data is held out. ``hidden`` sets the
    BioMLP's hidden widths; other keywords are :class:`bimt.train.TrainConfig` defaults.
    """
    X_train = torch.as_tensor(np.asarray(X_train), dtype=torch.float32)
    y_np = np.asarray(y_train)
    if kind is None:
        kind = "classification" if np.issubdtype(y_np.dtype, np.integer) else "regression"
    y_dtype = torch.long if kind == "classification" else torch.float32
    y_train = torch.as_tensor(y_np, dtype=y_dtype)
    if X_train.ndim != 2 or len(X_train) != len(y_train):
        raise ValueError(
            f"X_train must be (n, features) with one target per row; got X {tuple(X_train.shape)} "
            f"and y {tuple(y_train.shape)}"
        )
    if kind == "regression" and y_train.ndim == 1:
        y_train = y_train[:, None]
    if X_test is not None:
        X_test = torch.as_tensor(np.asarray(X_test), dtype=torch.float32)
        y_test = torch.as_tensor(np.asarray(y_test), dtype=y_dtype)
        if kind == "regression" and y_test.ndim == 1:
            y_test = y_test[:, None]
    if kind == "classification":
        n_out = int(max(y_train.max(), y_test.max() if y_test is not None else 0)) + 1
    else:
        n_out = y_train.shape[1]

    def make_data(seed: int, data_dir=None) -> Data:
        if X_test is not None:
            return Data(X_train, y_train, X_test, y_test, f"arrays ({name})",
                        list(input_labels) if input_labels else None,
                        list(output_labels) if output_labels else None)
        order = torch.randperm(len(X_train), generator=torch.Generator().manual_seed(seed))
        cut = len(order) - max(1, int(round(test_fraction * len(order))))
        tr, te = order[:cut], order[cut:]
        return Data(X_train[tr], y_train[tr], X_train[te], y_train[te], f"arrays ({name})",
                    list(input_labels) if input_labels else None,
                    list(output_labels) if output_labels else None)

    settings = dict(widths=[X_train.shape[1], *hidden, n_out],
                    loss="ce" if kind == "classification" else "mse")
    settings.update(defaults)
    return Task(name, description or f"user task {name}", kind, make_data, mlp_builder(), settings)


def task_from_function(
    name: str, f: Callable[[torch.Tensor], torch.Tensor], n_inputs: int, *,
    n_train: int = 100, n_test: int = 100, low: float = -1.0, high: float = 1.0,
    hidden: Sequence[int] = (20, 20), description: str = "", **defaults,
) -> Task:
    """A regression task ``y = f(x)`` with ``x ~ U[low, high]^n_inputs``, fresh per seed."""
    probe = f(torch.zeros(2, n_inputs))
    n_out = 1 if probe.ndim == 1 else probe.shape[1]

    def formula(X):
        y = f(low + (high - low) * (X + 1) / 2)
        return y[:, None] if y.ndim == 1 else y

    make_data = uniform_regression(formula, n_inputs, [f"x{i + 1}" for i in range(n_inputs)],
                                    [f"y{i + 1}" for i in range(n_out)], n_train, n_test)

    def make_scaled(seed: int, data_dir=None) -> Data:
        d = make_data(seed)
        # inputs were drawn on [-1, 1]; map them to [low, high] as the user asked
        d.X_train = low + (high - low) * (d.X_train + 1) / 2
        d.X_test = low + (high - low) * (d.X_test + 1) / 2
        return d

    settings = dict(paper.SYMBOLIC_DEFAULTS, widths=[n_inputs, *hidden, n_out])
    settings["top_k"] = min(paper.SYMBOLIC_DEFAULTS["top_k"], max(hidden, default=1))
    settings.update(defaults)
    return Task(name, description or f"user task {name}", "regression", make_scaled,
                mlp_builder(), settings)



from . import extra, language, paper  # noqa: E402,F401  (the built-in tasks register themselves)
