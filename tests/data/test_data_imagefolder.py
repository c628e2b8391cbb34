"""ImageNet-style image folders on small PNG files written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwdsa.data import ImageFolderDataset, load_dataset, make_loader
from hwdsa.data.imagefolder import IMAGENET_MEAN
from hwdsa.errors import ConfigError, DataError

CLASSES = ("cat", "dog", "emu")


def _write_folders(root: Path, per_class: dict[str, int], classes: tuple[str, ...] = CLASSES, size: tuple[int, int] = (48, 40)) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.full((size[1], size[0], 3), 60 * k, np.uint8) + rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_load_and_batch(tmp_path: Path) -> None:
    _write_folders(tmp_path, {"train": 10, "val": 3})
    splits = load_dataset("imagefolder", tmp_path, image_size=32)
    assert splits.classes == CLASSES and splits.num_classes == 3 and splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (27, 3, 9)
    assert torch.bincount(splits.holdout.labels).tolist() == [1, 1, 1]  # the last image of each class folder
    assert splits.mean == IMAGENET_MEAN
    train = make_loader(splits.train, 8, train=True, seed=0)
    assert len(train) == 3  # 27 images, the last short batch dropped
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    test = make_loader(splits.test, 4, train=False)
    xs, ys = zip(*test)
    assert [len(b) for b in ys] == [4, 4, 1] and torch.cat(ys).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The evaluation transform is deterministic: the same batch twice.
    torch.testing.assert_close(torch.cat(xs), torch.cat([b for b, _ in test]))


def test_training_transform_is_random_but_seeded(tmp_path: Path) -> None:
    _write_folders(tmp_path, {"train": 4, "val": 1})
    splits = load_dataset("imagefolder", tmp_path, image_size=16)
    assert isinstance(splits.train, ImageFolderDataset)
    eval_view = splits.train.with_transform(train=False)
    train_view = splits.train.with_transform(train=True)
    torch.testing.assert_close(eval_view[0][0], eval_view[0][0])
    torch.manual_seed(0)
    a = train_view[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, train_view[0][0])
    assert not torch.equal(a, train_view[0][0])
    assert a.shape == (3, 16, 16)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has no train/ folder; expected root/train/<class>/\*.jpg\|png"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError, match="imagefolder needs a root"):
        load_dataset("imagefolder")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has no val/ \(or test/\) folder next to train/"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"image folder '.*train'.*(Found no valid file|Couldn't find any)"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(ConfigError, match=r"image_size must be an integer >= 8; got 4"):
        load_dataset("imagefolder", tmp_path, image_size=4)


def test_class_folders_must_match(tmp_path: Path) -> None:
    _write_folders(tmp_path / "a", {"train": 2})
    _write_folders(tmp_path / "a", {"test": 1}, classes=("cat", "dog", "yak"))
    with pytest.raises(DataError, match=r"test/ and train/ under .* must have the same class folders; only in test/: \['yak'\], missing from test/: \['emu'\]"):
        load_dataset("imagefolder", tmp_path / "a")


def test_undecodable_image(tmp_path: Path) -> None:
    _write_folders(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "val" / "cat" / "0.jpg").write_bytes(b"not an image")
    splits = load_dataset("imagefolder", tmp_path, image_size=16)
    with pytest.raises(DataError, match=r"cannot decode image '.*0.jpg'"):
        splits.test[0]
