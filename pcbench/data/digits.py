"""scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes): the embedded default."""

import numpy as np
import torch
from pcbench.data.splits import Splits

TEST_FRACTION = 0.2  # digits has no official test split; this one is fixed for every run


def load(val_fraction: float, split_seed: int) -> Splits:
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only when used
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # N, 1, 8, 8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(
        x_train, y_train, test_size=val_fraction, stratify=y_train, random_state=split_seed)
    mean, std = x_train.mean(), x_train.std()
    norm = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731
    return Splits(
        train=(norm(x_train), torch.from_numpy(y_train)),
        val=(norm(x_val), torch.from_numpy(y_val)),
        test=(norm(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        shift_pad=1,
    )
