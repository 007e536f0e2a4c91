"""Data sets by name. Each loader returns seeded in-memory splits (see `Splits`)."""

from typing import Callable

from pcbench.data import digits
from pcbench.data.splits import Splits, random_shift, shard_batches
from pcbench.errors import UserError

_DATASETS: dict[str, Callable[[float, int], Splits]] = {"digits": digits.load}

__all__ = ["Splits", "dataset_names", "load_dataset", "random_shift", "shard_batches"]


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def load_dataset(name: str, val_fraction: float, split_seed: int) -> Splits:
    if name not in _DATASETS:
        raise UserError(f"unknown data set '{name}': choose one of {', '.join(dataset_names())}")
    return _DATASETS[name](val_fraction, split_seed)
