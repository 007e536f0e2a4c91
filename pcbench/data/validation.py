"""The validation split: carved from the training data with a fixed seed, stratified by class."""

import numpy as np
import torch

from pcbench.data.splits import Pair


def carve(x: torch.Tensor, y: torch.Tensor, val_fraction: float, split_seed: int) -> tuple[Pair, Pair]:
    """(train, val). val_fraction 0 keeps every training sample (the final runs) and an empty
    validation split."""
    if val_fraction == 0:
        return (x, y), (x[:0], y[:0])
    from sklearn.model_selection import train_test_split  # slow to import: only when used

    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=val_fraction,
                                          stratify=y.numpy(), random_state=split_seed)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
