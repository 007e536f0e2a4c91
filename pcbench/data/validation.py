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

    sizes = np.bincount(y.numpy())
    sizes = sizes[sizes > 0]
    # stratified where every class can give the split a sample (not so on tiny generated sets)
    stratified = sizes.min() >= 2 and round(val_fraction * len(y)) >= len(sizes)
    stratify = y.numpy() if stratified else None
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=val_fraction,
                                          stratify=stratify, random_state=split_seed)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
