"""CIFAR-10 readers: the npz layout of /work/shared/data/cifar10 and the original python pickles.

Both layouts give the same arrays: uint8 images in NCHW and labels 0..9, in the original order
(train = data_batch_1..5 concatenated, test = test_batch).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hwdsa.errors import DataError

_log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50,000 training images in [0, 1] (the canonical figures; the
# README of the npz copy re-derives them).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

NPZ_FILES = tuple(f"train_batch_{i}.npz" for i in range(1, 6)) + ("test_batch.npz",)
PICKLE_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
PICKLE_FOLDER = "cifar-10-batches-py"

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def detect_cifar10_layout(root: str | Path) -> tuple[str, Path]:
    """("npz" | "pickle", the folder holding the files) for a path pointing at either layout.

    Accepts the npz folder, the `cifar-10-batches-py` folder, or its parent.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"CIFAR-10 path {str(path)!r} does not exist; point it at a folder with {NPZ_FILES[0]}..{NPZ_FILES[-1]} "
            f"(npz layout) or with the python pickles {PICKLE_FILES[0]}..{PICKLE_FILES[-1]} (or their parent {PICKLE_FOLDER}/)"
        )
    if not path.is_dir():
        raise DataError(f"CIFAR-10 path {str(path)!r} is a file; give the folder that holds the batches")
    candidates = [("npz", path, NPZ_FILES), ("pickle", path, PICKLE_FILES), ("pickle", path / PICKLE_FOLDER, PICKLE_FILES)]
    for layout, folder, names in candidates:
        present = [n for n in names if (folder / n).is_file()]
        if len(present) == len(names):
            return layout, folder
        if present:
            missing = [n for n in names if n not in present]
            raise DataError(f"CIFAR-10 folder {str(folder)!r} ({layout} layout) is incomplete: missing {', '.join(missing)}")
    found = sorted(p.name for p in path.iterdir())[:10]
    raise DataError(
        f"no CIFAR-10 data in {str(path)!r}: expected {', '.join(NPZ_FILES)} (npz layout) or {', '.join(PICKLE_FILES)} "
        f"(python pickles, possibly under {PICKLE_FOLDER}/); found {found or 'an empty folder'}"
    )


def read_cifar10(root: str | Path) -> Arrays:
    """(x_train, y_train, x_test, y_test): uint8 (N, 3, 32, 32) images and int64 labels, from either layout."""
    layout, folder = detect_cifar10_layout(root)
    _log.info("reading CIFAR-10 (%s layout) from %s", layout, folder)
    read = _read_npz if layout == "npz" else _read_pickle
    parts = [read(folder / name) for name in (NPZ_FILES if layout == "npz" else PICKLE_FILES)]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return x_train, y_train, parts[5][0], parts[5][1]


def _check(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise DataError(f"{str(path)!r}: expected uint8 images of shape (N, 3, 32, 32) after decoding; got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{str(path)!r}: expected {len(x)} labels; got an array of shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{str(path)!r}: labels must be 0..9; got values {int(y.min())}..{int(y.max())}")
    return x, y.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise DataError(f"{str(path)!r} must hold arrays 'x' (N, 32, 32, 3) and 'y' (N,); it holds {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {str(path)!r} as an npz archive: {exc}") from exc
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{str(path)!r}: 'x' must be NHWC (N, 32, 32, 3); got shape {x.shape}")
    return _check(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays): a file from an
    untrusted source cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # pickled by numpy 1.x (the originals: Python 2)
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read {str(path)!r} as a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{str(path)!r}: expected a dict with b'data' and b'labels'; got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{str(path)!r}: expected keys b'data' and b'labels'; got {sorted(map(str, batch))}")
    data = batch["data"]
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data)
    if data.dtype != np.uint8 or data.size % 3072:
        raise DataError(f"{str(path)!r}: b'data' must be uint8 rows of 3072 values (3x32x32, CHW); got {data.dtype} {data.shape}")
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return _check(path, x, np.asarray(batch["labels"]))
