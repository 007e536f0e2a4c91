"""scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes): the embedded default."""

import numpy as np
import torch

from pcbench.data.splits import BatchTransform, Splits
from pcbench.data.validation import carve

TEST_FRACTION = 0.2  # digits has no official test split; this one is fixed for every run


def load(val_fraction: float, split_seed: int, classes: range = range(10)) -> Splits:
    """The images of `classes` (all ten by default), labelled from 0 in that order."""
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only when used
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    x = torch.from_numpy((digits.images[keep].astype(np.float32) / 16.0)[:, None])  # N, 1, 8, 8 in [0, 1]
    y = torch.from_numpy(digits.target[keep].astype(np.int64) - classes.start)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION,
                                           stratify=y.numpy(), random_state=0)
    train, val = carve(x[train_idx], y[train_idx], val_fraction, split_seed)
    mean, std = train[0].mean(), train[0].std()
    norm = lambda p: ((p[0] - mean) / std, p[1])  # noqa: E731
    # a one-pixel random translation is the augmentation (no flips: digits are not symmetric)
    return Splits(norm(train), norm(val), norm((x[test_idx], y[test_idx])), num_classes=len(classes),
                  transform=BatchTransform(crop_pad=1, stored=(float(mean), float(std))))
