"""The strong view of a batch, for methods that learn from two views of each image (MLKD): the
same images as the batch every method sees, augmented again and harder. As MLKD's authors'
CIFAR pipeline (FixMatch's RandAugment): a random crop and flip of its own, two operations drawn
per image, each with a random magnitude, then a square cut out of up to half the image's side.
torchvision's RandAugment operations and ranges, per image, from a generator of the view's own,
so the batch every other method sees is the same with or without a strong view."""

import torch
from torchvision.transforms import v2

OPERATIONS = 2  # drawn per image, with replacement (RandAugment's n)
MAGNITUDE_BINS = 31  # torchvision's; each operation's magnitude is drawn among them
CUTOUT_AREA = 0.25  # the largest square cut out: half the side (FixMatch's Cutout(0.5))
GREY = 0.5  # what the cut-out square is filled with, in pixel units


class TwoRandomOperations:
    """Two RandAugment operations on one image (a tensor in [0, 1] or uint8, or a PIL image),
    each with a magnitude drawn afresh by torch's global generator."""

    def __init__(self):
        self.operation = v2.RandAugment(num_ops=1, num_magnitude_bins=MAGNITUDE_BINS)

    def __call__(self, image):
        for _ in range(OPERATIONS):
            self.operation.magnitude = int(torch.randint(MAGNITUDE_BINS, ()))
            image = self.operation(image)
        return image


def cutout() -> v2.RandomErasing:
    """The square cut out of an image tensor in [0, 1], after the operations."""
    return v2.RandomErasing(p=1.0, scale=(0.0, CUTOUT_AREA), ratio=(1.0, 1.0), value=GREY)


def strong_seed(shuffle_seed: int, rank: int) -> int:
    """The strong view's stream, apart from the weak one's (splits.augment_seed: odd multiples
    of 1024 plus the rank; these are even ones)."""
    return ((shuffle_seed * 2 + 2) << 10) + rank


def augment_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a batch (float in [0, 1]) through TwoRandomOperations, drawn from
    `generator` (a CPU one) without touching torch's global generator."""
    strong = v2.Compose([TwoRandomOperations(), cutout()])
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: the operations draw on it (torch.manual_seed would reseed CUDA's too)
        torch.default_generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        return torch.stack([strong(image) for image in images])
