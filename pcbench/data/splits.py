"""Train / validation / test splits and the batch pipeline that runs on the training device.

Every data set gives the engine the same thing: `batches(split, ...)` yields this rank's
(x, y, sample indices), x a float batch on the device, ready for the model. Small data sets
(digits, CIFAR) live whole on the device as tensors and are augmented there per batch, with
no per-sample Python work; image folders stream through a DataLoader (see `folder.py`).
"""

import functools
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

Pair = tuple[torch.Tensor, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, sample indices


class DataSource(Protocol):
    num_classes: int
    # whether batches(..., strong_view=True) works (a source without it: no method that reads
    # two views, such as MLKD, can train on it)
    has_strong_view: bool

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def size(self, split: str) -> int: ...

    def to(self, device: torch.device) -> "DataSource": ...

    def batches(self, split: str, batch_size: int, rank: int = 0, world: int = 1,
                shuffle_seed: int | None = None, augment: bool = False,
                strong_view: bool = False) -> Iterator[Batch]:
        """This rank's batches. With a seed (training) the order is shuffled identically on
        every rank and the last partial batch dropped; otherwise every sample, in order.
        `strong_view` (training, where `has_strong_view`): each batch is (x, y, indices,
        x_strong), x_strong the same images augmented harder (strong.py), from a stream of
        its own, so x is the same with or without it; x_strong may be a callable that makes
        it (called once, in order)."""


@dataclass(frozen=True)
class BatchTransform:
    """Augmentation and normalisation of a whole batch on its device: random crop of the
    zero-padded image, horizontal flip, then uint8 -> float and per-channel normalisation.
    `strong`: the strong view of the same batch (strong.py)."""

    crop_pad: int = 0
    flip: bool = False
    mean: tuple[float, ...] | None = None  # in [0, 1] units; None: already normalised
    std: tuple[float, ...] | None = None
    # Float images stored already standardised: the (mean, std) of that, so the strong view can
    # work on pixels. None: uint8 images (or floats with no strong view).
    stored: tuple[float, float] | None = None
    _stats: dict = field(default_factory=dict, compare=False, repr=False)  # per device: no copy a batch

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None:  # training: augment
            x = self._geometric(x, generator)
        return self._normalised(x)

    @property
    def has_strong_view(self) -> bool:
        return self.stored is not None or self.mean is not None

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The strong view of a raw batch (its own crop and flip, then strong.py's operations
        on pixels in [0, 1]), normalised as the batch is; `generator`: a CPU one of its own."""
        from pcbench.data.strong import augment_pixels

        x = self._geometric(x, generator)
        if self.stored is not None:
            mean, std = self.stored
            pixels = augment_pixels((x * std + mean).clamp(0, 1), generator)
            return (pixels - mean) / std
        return self._normalised(augment_pixels(x.float().div(255), generator))

    def _geometric(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_pad:
            x = random_crop(x, self.crop_pad, generator)
        if self.flip:
            flipped = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
            x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(3), x)
        return x

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None:
            if x.device not in self._stats:
                self._stats[x.device] = (torch.tensor(self.mean, device=x.device)[None, :, None, None],
                                         torch.tensor(self.std, device=x.device)[None, :, None, None])
            mean, std = self._stats[x.device]
            x = (x - mean) / std
        return x


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch back to its size: one gather, no per-sample loop."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, b), generator=generator,
                            device=generator.device).to(x.device))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def rank_order(n: int, rank: int, world: int, shuffle_seed: int | None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's sample indices: a seeded permutation shared by all ranks (each takes every
    world-th sample, so ranks never overlap), or all samples in order when not shuffling."""
    if shuffle_seed is None:
        return torch.arange(n, device=device)[rank::world]
    generator = torch.Generator(device=device).manual_seed(shuffle_seed)
    order = torch.randperm(n, generator=generator, device=device)
    return order[: (n // world) * world][rank::world]


def augment_seed(shuffle_seed: int, rank: int) -> int:
    """Each rank's own augmentation stream, apart from every epoch's shuffle seed."""
    return ((shuffle_seed * 2 + 1) << 10) + rank


def chunks(indices: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[torch.Tensor]:
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    for start in range(0, stop, batch_size):
        yield indices[start:start + batch_size]


@dataclass
class Splits:
    """Whole splits as tensors (uint8 images or float features) on one device. Validation is
    carved from the training data with a fixed seed and is what selection uses (it may be
    empty: a final run trains on all the training data); test is for reporting only."""

    train: Pair
    val: Pair
    test: Pair
    num_classes: int
    transform: BatchTransform = field(default_factory=BatchTransform)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    def size(self, split: str) -> int:
        return len(getattr(self, split)[1])

    def to(self, device: torch.device) -> "Splits":
        move = lambda p: (p[0].to(device), p[1].to(device))  # noqa: E731
        return Splits(move(self.train), move(self.val), move(self.test), self.num_classes,
                      self.transform)

    @property
    def has_strong_view(self) -> bool:
        return self.transform.has_strong_view

    def batches(self, split, batch_size, rank=0, world=1, shuffle_seed=None, augment=False,
                strong_view=False):
        x, y = getattr(self, split)
        generator = None
        if shuffle_seed is not None:  # batch-relational losses (PC, RKD, CRD) never see a batch of one
            generator = torch.Generator(device=x.device).manual_seed(augment_seed(shuffle_seed, rank))
        if strong_view:
            from pcbench.data.strong import strong_seed
            strong = torch.Generator().manual_seed(strong_seed(shuffle_seed or 0, rank))
        order = rank_order(len(x), rank, world, shuffle_seed, x.device)
        for idx in chunks(order, batch_size, drop_last=shuffle_seed is not None):
            weak = self.transform(x[idx], generator if augment else None)
            if strong_view:  # made when asked for, so the engine can count its cost
                yield weak, y[idx], idx, functools.partial(self.transform.strong, x[idx], strong)
            else:
                yield weak, y[idx], idx
