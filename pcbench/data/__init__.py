"""Data sets by name. Each loads seeded splits as a `DataSource` (see `splits.py`)."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pcbench import plugins
from pcbench.data.splits import BatchTransform, DataSource, Splits
from pcbench.errors import UserError

__all__ = ["BatchTransform", "DataSource", "Splits", "DataSet", "FOLDER_PREFIX", "check_dataset",
           "dataset_names", "get_dataset", "is_dataset", "load_dataset", "register_dataset"]

DEFAULT_ROOT = "~/.cache/pcbench/data"


@dataclass(frozen=True)
class DataSet:
    name: str
    val_fraction: float  # the default validation share of the training data
    load: Callable[..., DataSource]  # (root, val_fraction, split_seed, loader_workers)
    input_shape: tuple[int, int, int]  # one image, as the models see it
    num_classes: int | None  # None: counted from its files when it loads (folder:NAME)
    # files present, before any trial; (root, download): fetch what is missing where possible
    check: Callable[[str, bool], None] = lambda root, download: None
    embedded: bool = False  # ships with the installed packages: no --data-dir needed


def _digits(name: str, classes: range) -> DataSet:
    """scikit-learn's digits, or the images of some of its classes (labels counted from 0):
    two halves of one data set are two tasks for transfer (a teacher of one, a student of the
    other) with no download."""
    def load(root, val_fraction, split_seed, loader_workers):
        from pcbench.data import digits
        return digits.load(val_fraction, split_seed, classes)
    return DataSet(name, 0.15, load, (1, 8, 8), len(classes), embedded=True)


def _cifar(name: str) -> DataSet:
    from pcbench.data import cifar
    return DataSet(name, 0.1,  # 5,000 of the 50,000 training images
                   lambda root, val_fraction, split_seed, loader_workers:
                   cifar.load(name, root, val_fraction, split_seed), (3, 32, 32),
                   10 if name == "cifar10" else 100, lambda root, download: cifar.check(name, root, download))


def _image_folders(name: str, val_fraction: float, num_classes: int | None) -> DataSet:
    from pcbench.data import folder
    return DataSet(name, val_fraction,
                   lambda root, val_fraction, split_seed, loader_workers:
                   folder.FolderSplits(root, val_fraction, split_seed, loader_workers=loader_workers),
                   (3, folder.IMAGE_SIZE, folder.IMAGE_SIZE), num_classes,
                   lambda root, download: folder.check(root, name))


# `folder:NAME`: a data set of your own, as ImageNet-style folders (train/ and val/ of class
# folders, torchvision's ImageFolder) under --data-dir, its classes counted from the folders.
# NAME keeps two such data sets apart: their teachers, studies and experiments.
FOLDER_PREFIX = "folder:"
_FOLDER_NAME = re.compile(r"folder:[a-z0-9][a-z0-9_.-]{0,63}")


_DATASETS = {d.name: d for d in (_digits("digits", range(10)), _digits("digits-0to4", range(5)),
                                 _digits("digits-5to9", range(5, 10)), _cifar("cifar10"),
                                 _cifar("cifar100"), _image_folders("imagenet", 0.01, 1000))}


def register_dataset(name: str, *, input_shape: tuple[int, int, int], num_classes: int,
                     val_fraction: float = 0.1, embedded: bool = False,
                     check: Callable[[str, bool], None] | None = None):
    """Decorator for a plug-in's data set: `load(root, val_fraction, split_seed, loader_workers)`
    returning a DataSource (pcbench.data.splits: `Splits` over tensors is the simple way).
    `check(root, download)` raises UserError when its files are missing; `embedded`: it needs
    no --data-dir (generated, or shipped with a package)."""
    def decorate(load: Callable[..., DataSource]) -> Callable[..., DataSource]:
        existing = _DATASETS.get(name)
        plugins.check_unique("data set", name, load, existing.load if existing else None)
        _DATASETS[name] = DataSet(name, val_fraction, load, tuple(input_shape), num_classes,
                                  check or (lambda root, download: None), embedded)
        return load
    return decorate


def dataset_names() -> list[str]:
    """The named data sets (any folder:NAME is one too: is_dataset)."""
    return sorted(_DATASETS)


def is_dataset(name: str) -> bool:
    return name in _DATASETS or bool(_FOLDER_NAME.fullmatch(name))


def get_dataset(name: str) -> DataSet:
    if name not in _DATASETS and _FOLDER_NAME.fullmatch(name):
        return _image_folders(name, 0.1, None)
    if name not in _DATASETS:
        raise UserError(f"unknown data set '{name}': choose one of {', '.join(dataset_names())}, "
                        f"or folder:NAME for image folders of your own")
    return _DATASETS[name]


def check_dataset(name: str, root: str | None, download: bool = True) -> None:
    """The data set's files are there (downloaded first where possible, unless download=False)."""
    get_dataset(name).check(str(Path(root or DEFAULT_ROOT).expanduser()), download)


def load_dataset(name: str, root: str | None, val_fraction: float | None, split_seed: int,
                 loader_workers: int = 8) -> DataSource:
    dataset = get_dataset(name)
    fraction = dataset.val_fraction if val_fraction is None else val_fraction
    return dataset.load(str(Path(root or DEFAULT_ROOT).expanduser()), fraction, split_seed, loader_workers)
