"""CIFAR-10: the real npz copy in /work/shared (when present), and both layouts on small files written here."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hwdsa.data import ArrayDataset, DataSplits, load_dataset, make_loader
from hwdsa.data.cifar import CIFAR10_MEAN, PICKLE_FILES, detect_cifar10_layout, read_cifar10
from hwdsa.errors import ConfigError, DataError

SHARED = Path("/work/shared/data/cifar10")
# sha256 of the test arrays' raw bytes, from the README of the shared copy (NHWC, original order).
X_TEST_SHA256 = "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"
Y_TEST_SHA256 = "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"


@pytest.fixture(scope="module")
def real() -> DataSplits:
    if not (SHARED / "train_batch_1.npz").is_file():
        pytest.skip(f"real CIFAR-10 not present at {SHARED} (the npz copy described in its README)")
    return load_dataset("cifar10", SHARED, subset_per_class=None)


class TestRealCifar10:
    def test_shapes_and_classes(self, real: DataSplits) -> None:
        assert real.num_classes == 10 and real.input_shape == (3, 32, 32)
        assert real.classes[0] == "airplane" and real.classes[-1] == "truck"
        assert (len(real.train), len(real.holdout), len(real.test)) == (45_000, 5_000, 10_000)
        assert isinstance(real.train, ArrayDataset) and real.train.images.dtype == torch.uint8
        # The held-out tail is 10% of every class: 500 each; the test set has 1,000 each.
        assert torch.bincount(real.holdout.labels).tolist() == [500] * 10
        assert torch.bincount(real.test.labels).tolist() == [1_000] * 10
        assert real.mean == CIFAR10_MEAN

    def test_test_set_is_byte_identical_to_the_readme(self, real: DataSplits) -> None:
        assert isinstance(real.test, ArrayDataset)
        nhwc = real.test.images.permute(0, 2, 3, 1).contiguous().numpy()
        assert hashlib.sha256(nhwc.tobytes()).hexdigest() == X_TEST_SHA256
        assert hashlib.sha256(real.test.labels.numpy().astype(np.uint8).tobytes()).hexdigest() == Y_TEST_SHA256

    def test_holdout_is_disjoint_from_train(self, real: DataSplits) -> None:
        assert isinstance(real.train, ArrayDataset) and isinstance(real.holdout, ArrayDataset)
        flat = lambda d: {hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest() for row in d.images}  # noqa: E731
        train, holdout = flat(real.train), flat(real.holdout)
        assert len(holdout) == 5_000 and len(train) == 45_000  # CIFAR has no duplicate images
        assert not train & holdout

    def test_train_statistics_match_the_canonical_figures(self, real: DataSplits) -> None:
        assert isinstance(real.train, ArrayDataset)
        mean = real.train.images[::5].float().mean(dim=(0, 2, 3)) / 255
        torch.testing.assert_close(mean, torch.tensor(CIFAR10_MEAN), atol=5e-3, rtol=0)

    def test_class_balanced_subset(self, real: DataSplits) -> None:
        # Subsets are cut from the splits already in memory, the way load_dataset does it.
        from hwdsa.data import balanced_indices

        picked = balanced_indices(real.train.labels, 30, seed=1)
        sub = real.train.subset(picked)
        assert torch.bincount(sub.labels).tolist() == [30] * 10
        assert torch.equal(picked, balanced_indices(real.train.labels, 30, seed=1))
        assert not torch.equal(picked, balanced_indices(real.train.labels, 30, seed=2))

    def test_augmented_batches(self, real: DataSplits) -> None:
        loader = make_loader(real.train, 256, train=True, seed=0)
        assert len(loader) == 45_000 // 256
        x, y = next(iter(loader))
        assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        # Zero padding shows up as the normalised value of black in some border pixels.
        black = torch.tensor([-m / s for m, s in zip(real.mean, real.std)])[:, None]
        border = x[:, :, 0, :].permute(1, 0, 2).reshape(3, -1)
        assert torch.isclose(border, black, atol=1e-5).all(dim=0).any()
        x_eval, _ = next(iter(make_loader(real.test, 256, train=False)))
        assert abs(float(x_eval.mean())) < 0.2 and abs(float(x_eval.std()) - 1) < 0.2


# -- the layouts on small files -----------------------------------------------------------------


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), (np.arange(n) % 10).astype(np.int64)


def _write_pickles(folder: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The original python layout: dicts with bytes keys, b'data' N x 3072 uint8 (CHW rows), b'labels' a list."""
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(PICKLE_FILES):
        x, y = _images(n, i)
        batch = {
            b"batch_label": f"{name} of 6".encode(),
            b"labels": [int(v) for v in y],
            b"data": x.reshape(n, 3072),
            b"filenames": [f"img_{k}.png".encode() for k in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (x, y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    return written


def _write_npz(folder: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    written = {}
    names = [f"train_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        x, y = _images(n, i)
        np.savez_compressed(folder / f"{name}.npz", x=x.transpose(0, 2, 3, 1), y=y.astype(np.uint8))
        written[name] = (x, y)
    return written


def test_pickle_layout_from_the_folder_or_its_parent(tmp_path: Path) -> None:
    written = _write_pickles(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert detect_cifar10_layout(root) == ("pickle", tmp_path / "cifar-10-batches-py")
        x_train, y_train, x_test, y_test = read_cifar10(root)
        assert x_train.shape == (100, 3, 32, 32) and x_test.shape == (20, 3, 32, 32)
        np.testing.assert_array_equal(x_train[20:40], written["data_batch_2"][0])
        np.testing.assert_array_equal(y_train[:20], written["data_batch_1"][1])
        np.testing.assert_array_equal(x_test, written["test_batch"][0])
        assert y_train.dtype == np.int64


def test_npz_and_pickle_layouts_agree(tmp_path: Path) -> None:
    _write_npz(tmp_path / "npz")
    _write_pickles(tmp_path / "pkl")
    assert detect_cifar10_layout(tmp_path / "npz")[0] == "npz"
    for a, b in zip(read_cifar10(tmp_path / "npz"), read_cifar10(tmp_path / "pkl")):
        np.testing.assert_array_equal(a, b)


def test_load_dataset_on_small_pickles(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", tmp_path, holdout_fraction=0.2)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (80, 20, 20)
    assert torch.bincount(splits.holdout.labels).tolist() == [2] * 10
    x, y = next(iter(make_loader(splits.train, 16, train=True, seed=0)))
    assert x.shape == (16, 3, 32, 32)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 path '.*nowhere' does not exist; point it at a folder with train_batch_1.npz"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DataError, match="cifar10 needs a root"):
        load_dataset("cifar10")


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not cifar")
    with pytest.raises(DataError, match=r"no CIFAR-10 data in .*expected train_batch_1.npz.*found \['readme.txt'\]"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="is a file"):
        detect_cifar10_layout(tmp_path / "readme.txt")


def test_incomplete_folder_names_the_missing_files(tmp_path: Path) -> None:
    _write_npz(tmp_path / "npz")
    (tmp_path / "npz" / "train_batch_3.npz").unlink()
    with pytest.raises(DataError, match=r"incomplete: missing train_batch_3.npz"):
        read_cifar10(tmp_path / "npz")


def test_malformed_files(tmp_path: Path) -> None:
    _write_npz(tmp_path / "npz")
    np.savez(tmp_path / "npz" / "test_batch.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"must hold arrays 'x' .* and 'y' .*; it holds \['images'\]"):
        read_cifar10(tmp_path / "npz")
    np.savez(tmp_path / "npz" / "test_batch.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 12]))
    with pytest.raises(DataError, match=r"labels must be 0..9; got values 0..12"):
        read_cifar10(tmp_path / "npz")
    (tmp_path / "npz" / "test_batch.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read .* as an npz archive"):
        read_cifar10(tmp_path / "npz")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_pickles_cannot_run_code(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "p")
    (tmp_path / "p" / "data_batch_4").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_4' as a CIFAR-10 python batch: refusing to load (__builtin__|builtins).print: not part of a CIFAR batch"):
        read_cifar10(tmp_path / "p")


def test_pickle_with_wrong_content(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "p")
    (tmp_path / "p" / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match=r"b'data' must be uint8 rows of 3072 values"):
        read_cifar10(tmp_path / "p")
    (tmp_path / "p" / "test_batch").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DataError, match=r"expected a dict with b'data' and b'labels'; got list"):
        read_cifar10(tmp_path / "p")


def test_subset_too_large_is_a_config_error(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "p")
    with pytest.raises(ConfigError, match=r"subset_per_class=50 is too large: .* the smallest class has 9; use at most 9"):
        load_dataset("cifar10", tmp_path / "p", subset_per_class=50)
