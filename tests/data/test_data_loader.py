"""Batch augmentation, normalisation, the array loader, samplers and DDP sharding."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import hwdsa.data.loader
from hwdsa.data import ArrayDataset, ArrayLoader, Augment, ShardedSampler, augment_batch, make_loader, normalize_batch
from hwdsa.errors import ConfigError, DataError


def _dataset(n: int = 50, channels: int = 3, size: int = 8, augment: Augment = Augment(pad=2, hflip=True)) -> ArrayDataset:
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    # Stamp each image's index into its first pixel row so a batch tells which samples it holds.
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n) % 5, mean=[0.5] * channels, std=[0.25] * channels, augment=augment)


class TestAugment:
    def test_keeps_shape_and_dtype(self) -> None:
        x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
        out = augment_batch(x, Augment(pad=4, hflip=True), torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == torch.uint8

    def test_random_but_seeded(self) -> None:
        x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
        aug = Augment(pad=4, hflip=True)
        a = augment_batch(x, aug, torch.Generator().manual_seed(7))
        b = augment_batch(x, aug, torch.Generator().manual_seed(7))
        c = augment_batch(x, aug, torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_each_image_is_a_window_of_its_padded_self_maybe_flipped(self) -> None:
        x = torch.randint(1, 256, (32, 2, 6, 6), dtype=torch.uint8)
        out = augment_batch(x, Augment(pad=2, hflip=True), torch.Generator().manual_seed(0))
        padded = F.pad(x, (2, 2, 2, 2))
        offsets, flips = set(), 0
        for i in range(len(x)):
            matches = [
                (dy, dx, flip)
                for dy in range(5)
                for dx in range(5)
                for flip in (False, True)
                if torch.equal(out[i], (lambda w: w.flip(2) if flip else w)(padded[i, :, dy : dy + 6, dx : dx + 6]))
            ]
            assert matches, f"image {i} is not a crop of its padded original"
            offsets.add(matches[0][:2])
            flips += matches[0][2]
        assert len(offsets) > 5 and 4 <= flips <= 28  # both random: many offsets, flips about half the time

    def test_flip_only_and_identity(self) -> None:
        x = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 1, 1, 4)
        out = augment_batch(x, Augment(hflip=True), torch.Generator().manual_seed(0))
        for i in range(2):
            assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
        assert Augment().is_identity and not Augment(pad=1).is_identity

    def test_bad_input(self) -> None:
        with pytest.raises(ConfigError, match=r"Augment.pad must be a non-negative integer; got -1"):
            Augment(pad=-1)
        with pytest.raises(ConfigError, match=r"augment_batch expects a batch \(N, C, H, W\); got shape \(3, 8, 8\)"):
            augment_batch(torch.zeros(3, 8, 8), Augment(pad=1), torch.Generator())


def test_normalize_batch() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 2, 1, 1)
    out = normalize_batch(x, [0.5, 0.0], [0.5, 1.0])
    torch.testing.assert_close(out[:, 0].flatten(), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(out[:, 1].flatten(), torch.tensor([0.0, 1.0]))
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError, match="normalisation has 1 means and 1 stds for images with 2 channels"):
        normalize_batch(x, [0.5], [0.5])


class TestArrayDataset:
    def test_item_is_normalised_without_augmentation(self) -> None:
        data = _dataset()
        x, y = data[3]
        torch.testing.assert_close(x, (data.images[3].float() / 255 - 0.5) / 0.25)
        assert int(y) == 3 and len(data) == 50 and data.input_shape == (3, 8, 8)
        assert torch.equal(data[-1][0], data[49][0])

    def test_subset_copies_rows(self) -> None:
        data = _dataset()
        sub = data.subset(torch.tensor([4, 2]))
        assert torch.equal(sub.images, data.images[[4, 2]]) and sub.labels.tolist() == [4, 2]
        assert sub.augment == data.augment and sub.mean == data.mean

    def test_validation(self) -> None:
        with pytest.raises(DataError, match=r"images must be a uint8 tensor \(N, C, H, W\); got torch.float32"):
            ArrayDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), mean=[0], std=[1])
        with pytest.raises(DataError, match=r"labels must have shape \(2,\) to match the images; got \(3,\)"):
            ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), mean=[0], std=[1])
        with pytest.raises(DataError, match="labels must be class indices >= 0; got minimum -1"):
            ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, -1]), mean=[0], std=[1])
        with pytest.raises(ConfigError, match=r"mean/std need 1 values \(one per channel\); got 3 and 1"):
            ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), mean=[0, 0, 0], std=[1])
        with pytest.raises(ConfigError, match=r"std values must be positive; got \(0.0,\)"):
            ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), mean=[0], std=[0.0])


def _ids(x: torch.Tensor) -> list[int]:
    """The sample indices stamped into pixel (0, 0, 0) of un-augmented batches."""
    return torch.round(x[:, 0, 0, 0] * 0.25 * 255 + 0.5 * 255).to(torch.int64).tolist()


class TestArrayLoader:
    def test_train_epoch_covers_everything_once_then_reshuffles(self) -> None:
        data = _dataset()
        loader = make_loader(data, 8, train=True, seed=3, augment=False, drop_last=False)
        assert isinstance(loader, ArrayLoader) and len(loader) == 7
        first = [i for x, _ in loader for i in _ids(x)]
        second = [i for x, _ in loader for i in _ids(x)]
        assert sorted(first) == list(range(50)) == sorted(second)
        assert first != list(range(50)) and first != second  # shuffled, and epochs advance on their own

    def test_set_epoch_reproduces_an_epoch(self) -> None:
        data = _dataset()
        a = make_loader(data, 16, train=True, seed=1)
        b = make_loader(data, 16, train=True, seed=1)
        a.set_epoch(5)  # type: ignore[union-attr]
        b.set_epoch(5)  # type: ignore[union-attr]
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        c = make_loader(data, 16, train=True, seed=2)
        assert not torch.equal(next(iter(c))[0], next(iter(make_loader(data, 16, train=True, seed=1)))[0])

    def test_labels_follow_images(self) -> None:
        data = _dataset()
        for x, y in make_loader(data, 16, train=True, seed=0, augment=False):
            assert [i % 5 for i in _ids(x)] == y.tolist()

    def test_drop_last(self) -> None:
        data = _dataset()
        assert len(make_loader(data, 8, train=True)) == 6
        assert [len(y) for _, y in make_loader(data, 8, train=True)] == [8] * 6
        assert [len(y) for _, y in make_loader(data, 8, train=False)] == [8] * 6 + [2]
        # A set smaller than one batch still gives one batch when training.
        assert [len(y) for _, y in make_loader(data.subset(torch.arange(5)), 8, train=True)] == [5]

    def test_eval_is_in_order_and_unaugmented(self) -> None:
        data = _dataset()
        x, y = next(iter(make_loader(data, 50, train=False)))
        assert _ids(x) == list(range(50))
        torch.testing.assert_close(x, normalize_batch(data.images, data.mean, data.std))

    def test_augment_choices(self) -> None:
        data = _dataset(augment=Augment())
        plain = next(iter(make_loader(data, 50, train=False)))[0]
        shuffled = next(iter(make_loader(data, 50, train=True)))[0]  # the data set's own augmentation: none
        assert torch.equal(shuffled, plain[_ids(shuffled)])
        loader = make_loader(data, 50, train=True, augment=Augment(pad=3))
        assert isinstance(loader, ArrayLoader) and loader.augment == Augment(pad=3)
        assert make_loader(data, 50, train=False, augment=Augment(pad=3)).augment == Augment()  # type: ignore[union-attr]

    def test_device_copy(self) -> None:
        data = _dataset()
        loader = make_loader(data, 10, train=True, seed=0, device="cpu")
        reference = make_loader(data, 10, train=True, seed=0)
        for (xa, ya), (xb, yb) in zip(loader, reference, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


class TestSharding:
    def test_ranks_split_one_permutation(self) -> None:
        data = _dataset()
        shards = [[i for x, _ in make_loader(data, 4, train=True, seed=0, rank=r, world_size=3, augment=False, drop_last=False) for i in _ids(x)] for r in range(3)]
        assert [len(s) for s in shards] == [17, 17, 17]  # padded to equal length for DDP
        assert set().union(*shards) == set(range(50))
        evals = [[i for x, _ in make_loader(data, 4, train=False, rank=r, world_size=3) for i in _ids(x)] for r in range(3)]
        assert sorted(sum(evals, [])) == list(range(50))  # evaluation counts every sample exactly once

    def test_sampler_lengths(self) -> None:
        assert [len(ShardedSampler(10, shuffle=False, rank=r, world_size=4, pad=False)) for r in range(4)] == [3, 3, 2, 2]
        assert [len(list(ShardedSampler(10, shuffle=True, rank=r, world_size=4))) for r in range(4)] == [3, 3, 3, 3]

    def test_torch_distributed_sampler(self) -> None:
        data = _dataset()
        sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
        loader = make_loader(data, 5, train=True, sampler=sampler, augment=False)
        loader.set_epoch(3)  # type: ignore[union-attr]
        ids = [i for x, _ in loader for i in _ids(x)]
        sampler.set_epoch(3)
        assert ids == list(sampler) and len(ids) == 25

    def test_training_helpers_accept_the_loader(self) -> None:
        from hwdsa.training import batches_per_epoch, set_epoch

        loader = make_loader(_dataset(), 8, train=True, seed=0)
        assert batches_per_epoch(loader) == 6
        set_epoch(loader, 4)
        assert loader.epoch == 4  # type: ignore[union-attr]

    def test_errors(self) -> None:
        data = _dataset()
        with pytest.raises(ConfigError, match="pass either a sampler or rank/world_size, not both"):
            make_loader(data, 4, train=True, sampler=ShardedSampler(50, shuffle=True), world_size=2, rank=0)
        with pytest.raises(ConfigError, match=r"need 0 <= rank < world_size; got rank=2, world_size=2"):
            make_loader(data, 4, train=True, rank=2, world_size=2)
        with pytest.raises(ConfigError, match=r"batch_size must be a positive integer; got 0"):
            make_loader(data, 0, train=True)
        with pytest.raises(ConfigError, match=r"augment must be True, False or an Augment; got 'yes'"):
            make_loader(data, 4, train=True, augment="yes")  # type: ignore[arg-type]


def test_generic_torch_dataset_uses_a_dataloader() -> None:
    data = TensorDataset(torch.randn(20, 1, 4, 4), torch.arange(20))
    loader = make_loader(data, 6, train=True, seed=0)
    assert isinstance(loader, DataLoader) and len(loader) == 3
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == 18 and len(set(seen.tolist())) == 18
    assert hasattr(loader.sampler, "set_epoch")
    with pytest.raises(ConfigError, match="device= is supported for in-memory data sets only; got a TensorDataset"):
        make_loader(data, 6, train=True, device="cpu")


def test_docstring_examples() -> None:
    result = doctest.testmod(hwdsa.data.loader)
    assert result.attempted >= 1 and result.failed == 0


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo processes: the loader finds rank and world size in the process group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        data = _dataset(n=23)
        train = make_loader(data, 4, train=True, seed=0, augment=False, drop_last=False)
        test = make_loader(data, 4, train=False)
        torch.save(
            {"train": [i for x, _ in train for i in _ids(x)], "test": [i for x, _ in test for i in _ids(x)], "len": len(train)},
            f"{out_dir}/rank{rank}.pt",
        )
        dist.barrier()  # neither rank tears the group down while the other still uses it (gloo aborts then)
    finally:
        dist.destroy_process_group()


def test_shards_under_a_real_process_group(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    # fork: the children need no fresh import of torch (a spawn costs several seconds here).
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["len"] == r1["len"] == 3 and len(r0["train"]) == len(r1["train"]) == 12
    assert set(r0["train"]) | set(r1["train"]) == set(range(23))
    assert sorted(r0["test"] + r1["test"]) == list(range(23))
