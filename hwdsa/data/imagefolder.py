"""ImageNet-style folders (`root/train/<class>/*.jpg`, `root/val/<class>/...`) through torchvision.

Images stay on disk and are decoded per item (that is what such data sets need). Training uses
RandomResizedCrop and flips, evaluation resizes the short side to image_size / 0.875 and takes the
centre crop (the usual ImageNet recipe); both normalise with ImageNet's statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from hwdsa.errors import DataError

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_SPLITS = ("val", "test")


class ImageFolderDataset(Dataset[tuple[Tensor, Tensor]]):
    """(path, class) samples with a training and an evaluation transform; `with_transform` picks one.

    Indexing gives (float image (3, S, S) normalised, label) with the transform of the current mode
    (evaluation unless made by `with_transform(train=True)`).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        *,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.image_size = int(image_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.train = train
        self._labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self._transform = self._build_transform(train)

    def _build_transform(self, train: bool) -> Callable[[Any], Tensor]:
        from torchvision import transforms as T

        normalise = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        transform: Callable[[Any], Tensor]
        if train:
            transform = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), *normalise])
        else:
            transform = T.Compose([T.Resize(round(self.image_size / 0.875)), T.CenterCrop(self.image_size), *normalise])
        return transform

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def with_transform(self, *, train: bool) -> ImageFolderDataset:
        """The same samples with the training (augmenting) or the evaluation transform."""
        return ImageFolderDataset(self.samples, self.classes, image_size=self.image_size, mean=self.mean, std=self.std, train=train)

    def subset(self, indices: Tensor) -> ImageFolderDataset:
        picked = [self.samples[int(i)] for i in torch.as_tensor(indices).tolist()]
        return ImageFolderDataset(picked, self.classes, image_size=self.image_size, mean=self.mean, std=self.std, train=self.train)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except OSError as exc:
            raise DataError(f"cannot decode image {path!r}: {exc}") from exc
        return self._transform(image), self._labels[index]

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"ImageFolderDataset(n={len(self)}, classes={len(self.classes)}, size={self.image_size}, {mode})"


def _scan(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no image files
        raise DataError(f"image folder {str(folder)!r}: {exc}") from exc
    return list(found.samples), list(found.classes)


def read_image_folders(root: str | Path, *, image_size: int = 224) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, evaluation) data sets from `root/train` and `root/val` (or `root/test`)."""
    base = Path(root).expanduser()
    if not (base / "train").is_dir():
        raise DataError(
            f"image-folder root {str(base)!r} has no train/ folder; expected root/train/<class>/*.jpg|png and root/val/<class>/..."
        )
    eval_dir = next((base / s for s in EVAL_SPLITS if (base / s).is_dir()), None)
    if eval_dir is None:
        raise DataError(f"image-folder root {str(base)!r} has no val/ (or test/) folder next to train/")
    train_samples, classes = _scan(base / "train")
    eval_samples, eval_classes = _scan(eval_dir)
    if eval_classes != classes:
        extra = sorted(set(eval_classes) - set(classes))
        lacking = sorted(set(classes) - set(eval_classes))
        raise DataError(
            f"{eval_dir.name}/ and train/ under {str(base)!r} must have the same class folders; "
            f"only in {eval_dir.name}/: {extra}, missing from {eval_dir.name}/: {lacking}"
        )
    _log.info("image folders %s: %d train, %d %s images, %d classes", base, len(train_samples), len(eval_samples), eval_dir.name, len(classes))
    return (
        ImageFolderDataset(train_samples, classes, image_size=image_size),
        ImageFolderDataset(eval_samples, classes, image_size=image_size),
    )
