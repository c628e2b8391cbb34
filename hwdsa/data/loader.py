"""Batches for training and evaluation: `make_loader` and the samplers and loaders behind it.

Design: an `ArrayDataset` is never wrapped in a torch `DataLoader`. `ArrayLoader` cuts index batches
from a sampler, gathers the uint8 rows in one indexing op, augments the whole batch with tensor ops
(training only) and normalises it. With num_workers=0 this feeds a small CNN on 2 CPU cores at
several thousand images per second; given a `device`, the uint8 images move there once and all the
work runs on the accelerator. File-backed data sets (image folders) use a `DataLoader` with the same
sampler and their own per-image transforms.

Both kinds of loader have `len()` (batches per epoch) and `set_epoch(epoch)`, which reseeds the
shuffle and the augmentation: epoch e of seed s gives the same batches in every run, and under
DistributedDataParallel each rank reads its own shard of the same permutation. Without `set_epoch`
calls, successive passes use epochs 0, 1, 2, ... (never the same batches twice by accident).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from hwdsa.data.augment import NO_AUGMENT, Augment, augment_batch, normalize_batch
from hwdsa.data.arrays import ArrayDataset, LabelledDataset
from hwdsa.data.imagefolder import ImageFolderDataset
from hwdsa.errors import ConfigError

_log = logging.getLogger(__name__)


def _mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, well spread (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class ShardedSampler(Sampler[int]):
    """Indices 0..n-1, shuffled per epoch with a seed, and split between `world_size` ranks.

    Like torch's DistributedSampler, with `pad=True` the permutation is padded by repeating its start
    so that every rank gets the same number of samples (DDP needs equal batch counts). Evaluation uses
    pad=False, so each sample is counted exactly once over the ranks.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
        self.n = int(n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            if self.pad and self.n > 0 and self.n % self.world_size:
                extra = self.world_size - self.n % self.world_size
                order = torch.cat([order, order.repeat(extra // self.n + 1)[:extra]])
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        order = self.indices()
        self.epoch += 1  # the next pass differs even if nobody calls set_epoch
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


class ArrayLoader:
    """Yields (x, y): x float32 (N, C, H, W) normalised (and augmented if `augment` is set), y int64 (N,).

    Use `make_loader` rather than building one directly.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        sampler: Iterable[int],
        augment: Augment = NO_AUGMENT,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0  # the epoch of the next pass
        self._images: Tensor | None = None  # the images on `device`, moved there on first use
        self._labels: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch`: reseeds shuffling (through the sampler) and augmentation."""
        self.epoch = int(epoch)

    def _sizes(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise ConfigError(f"the sampler ({type(self.sampler).__name__}) has no length, so the loader has none")
        return len(self.sampler)

    def __len__(self) -> int:
        n = self._sizes()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _arrays(self) -> tuple[Tensor, Tensor]:
        if self.device is None:
            return self.dataset.images, self.dataset.labels
        if self._images is None or self._labels is None:
            self._images = self.dataset.images.to(self.device)
            self._labels = self.dataset.labels.to(self.device)
        return self._images, self._labels

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        images, labels = self._arrays()
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        n = len(order)
        stop = n - n % self.batch_size if (self.drop_last and n >= self.batch_size) else n
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, self.rank, 0xA11))
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size].to(images.device)
            x = images[idx]
            if not self.augment.is_identity:
                x = augment_batch(x, self.augment, generator)
            yield normalize_batch(x, self.dataset.mean, self.dataset.std), labels[idx]

    def __repr__(self) -> str:
        return f"ArrayLoader({self.dataset!r}, batch_size={self.batch_size}, batches={len(self)}, augment={self.augment})"


def make_loader(
    dataset: LabelledDataset | Dataset[Any],
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    augment: bool | Augment = True,
    drop_last: bool | None = None,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> ArrayLoader | DataLoader[Any]:
    """An iterable of (x, y) batches: x float32 NCHW normalised, y int64 class indices.

    Args:
        dataset: a split from `load_dataset` (`ArrayDataset`, `ImageFolderDataset`) or any map-style Dataset.
        batch_size: samples per batch (per rank when distributed).
        train: shuffle, augment and drop the last incomplete batch; False gives the data in order, as is.
        seed: seeds the shuffle and the augmentation together with the epoch (`set_epoch`).
        sampler: an explicit sampler of indices (e.g. torch's DistributedSampler); replaces the built-in one.
        rank, world_size: shard for DDP; default: from the initialised process group, or a single process.
            Training shards are padded to equal length (as DistributedSampler does); evaluation shards
            are exact, so they may differ by one batch between ranks: reduce results once at the end.
        augment: with train=True, True applies the data set's own augmentation, False none, or give an `Augment`.
        drop_last: default `train`; a shard smaller than one batch still gives one (smaller) batch.
        device: `ArrayDataset` only: move the images there once and augment there (e.g. "cuda").
        num_workers: file-backed data sets only: DataLoader worker processes.

    Example:
        >>> import torch
        >>> from hwdsa.data import ArrayDataset, make_loader
        >>> data = ArrayDataset(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10) % 2, mean=[0.5], std=[0.5])
        >>> x, y = next(iter(make_loader(data, 4, train=True, seed=0)))
        >>> tuple(x.shape), x.dtype, y.dtype
        ((4, 1, 8, 8), torch.float32, torch.int64)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not isinstance(augment, (bool, Augment)):
        raise ConfigError(f"augment must be True, False or an Augment; got {augment!r}")
    if sampler is not None and (world_size or 1) > 1:
        raise ConfigError("pass either a sampler or rank/world_size, not both: the sampler decides the shard")
    if rank is None or world_size is None:
        from hwdsa.distributed import rank as _rank
        from hwdsa.distributed import world_size as _world_size

        rank = _rank() if rank is None else rank
        world_size = _world_size() if world_size is None else world_size
    drop = train if drop_last is None else drop_last
    if sampler is None:
        sampler = ShardedSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)  # type: ignore[arg-type]  # map-style data sets have a length

    if isinstance(dataset, ArrayDataset):
        if not train or augment is False:
            chosen = NO_AUGMENT
        else:
            chosen = dataset.augment if augment is True else augment
        return ArrayLoader(dataset, batch_size, sampler=sampler, augment=chosen, drop_last=drop, seed=seed, rank=rank, device=device)

    if device is not None:
        raise ConfigError(f"device= is supported for in-memory data sets only; got a {type(dataset).__name__}")
    if isinstance(dataset, ImageFolderDataset):
        if isinstance(augment, Augment):
            raise ConfigError(f"{type(dataset).__name__} augments per image with its own transforms; pass augment=True or False")
        dataset = dataset.with_transform(train=train and bool(augment))
    # Per-image random transforms run in the main process (num_workers=0) on torch's global RNG, and
    # in workers on seeds drawn from this generator.
    generator = torch.Generator().manual_seed(_mix_seed(seed, rank))
    # Leave the last short batch in the sampler's shard only when the shard is smaller than a batch.
    drop = drop and len(sampler) >= batch_size  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop, num_workers=num_workers, generator=generator)  # type: ignore[arg-type]
