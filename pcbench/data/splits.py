"""In-memory splits and the batch pipeline that runs on the training device."""

from dataclasses import dataclass
from typing import Iterator

import torch

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Splits:
    """Train / validation / test tensors. Validation is carved from training data with a
    fixed seed and is what selection uses; test is for reporting only."""

    train: Pair
    val: Pair
    test: Pair
    num_classes: int
    shift_pad: int = 0  # random-translation padding for augmentation (0: none)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    def to(self, device: torch.device) -> "Splits":
        move = lambda p: (p[0].to(device), p[1].to(device))  # noqa: E731
        return Splits(move(self.train), move(self.val), move(self.test), self.num_classes,
                      self.shift_pad)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
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


def shard_batches(data: Pair, batch_size: int, rank: int, world: int,
                  generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """This rank's batches as (x, y, sample indices). With a generator (training) the order
    is shuffled identically on every rank (same seed), each rank takes every world-th sample,
    so ranks never overlap, and the last partial batch is dropped: every rank takes the same
    number of steps, and batch-relational losses (PC, RKD, CRD...) never see a batch of one."""
    x, y = data
    n = (len(x) // world) * world if generator is not None else len(x)
    order = (torch.randperm(len(x), generator=generator, device=generator.device)[:n].to(x.device)
             if generator is not None else torch.arange(n, device=x.device))
    mine = order[rank::world]
    stop = len(mine) - len(mine) % batch_size if generator is not None else len(mine)
    for start in range(0, stop, batch_size):
        idx = mine[start:start + batch_size]
        yield x[idx], y[idx], idx
