"""Data sets and loaders: CIFAR-10, digits, MNIST, Fashion-MNIST and image folders, split for DSA.

`load_dataset(name, root)` gives a `DataSplits` (train, held-out, test); `make_loader(split, ...)`
gives normalised (x, y) batches, augmented a whole batch at a time when training.
"""

from hwdsa.data.arrays import ArrayDataset as ArrayDataset
from hwdsa.data.arrays import LabelledDataset as LabelledDataset
from hwdsa.data.arrays import balanced_indices as balanced_indices
from hwdsa.data.arrays import tail_split as tail_split
from hwdsa.data.augment import CIFAR_AUGMENT as CIFAR_AUGMENT
from hwdsa.data.augment import Augment as Augment
from hwdsa.data.augment import augment_batch as augment_batch
from hwdsa.data.augment import normalize_batch as normalize_batch
from hwdsa.data.imagefolder import ImageFolderDataset as ImageFolderDataset
from hwdsa.data.loader import ArrayLoader as ArrayLoader
from hwdsa.data.loader import ShardedSampler as ShardedSampler
from hwdsa.data.loader import make_loader as make_loader
from hwdsa.data.registry import DATASETS as DATASETS
from hwdsa.data.registry import DataPool as DataPool
from hwdsa.data.registry import DataSplits as DataSplits
from hwdsa.data.registry import list_datasets as list_datasets
from hwdsa.data.registry import load_dataset as load_dataset

__all__ = [
    "ArrayDataset",
    "ArrayLoader",
    "Augment",
    "CIFAR_AUGMENT",
    "DATASETS",
    "DataPool",
    "DataSplits",
    "ImageFolderDataset",
    "LabelledDataset",
    "ShardedSampler",
    "augment_batch",
    "balanced_indices",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "normalize_batch",
    "tail_split",
]
