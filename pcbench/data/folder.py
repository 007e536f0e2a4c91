"""ImageNet-style folders: `train/` and `val/` of class folders (torchvision's ImageFolder).
Images are decoded and augmented by DataLoader workers with the standard torchvision
transforms; `val/` is the test split, and validation is carved from `train/`."""

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from pcbench.data.splits import augment_seed, chunks, rank_order
from pcbench.data.validation import carve
from pcbench.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SIZE = 224  # the training crop


def check(root: str | Path, name: str = "imagenet") -> None:
    for split in ("train", "val"):
        folder = Path(root).expanduser() / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise UserError(f"{name}: expected class folders under {folder}; pass --data-dir DIR "
                            f"holding train/ and val/ (one folder per class, as torchvision's ImageFolder)")


def _transforms(train: bool, size: int):
    from torchvision import transforms as T
    if train:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def _strong_transforms(size: int):
    """The strong view (strong.py) of a training image: its own crop and flip, two operations,
    the cutout."""
    from torchvision import transforms as T

    from pcbench.data.strong import TwoRandomOperations, cutout
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), TwoRandomOperations(),
                      T.ToTensor(), cutout(), T.Normalize(MEAN, STD)])


class _Indexed(torch.utils.data.Dataset):
    """Yields (image, label, index in the split): CRD's memory bank keys on the index; with a
    `strong` transform, (image, label, index, strong view), the strong view drawn from a seed of
    its own (`strong_seed`, the image's index), so the weak view is the same as without it."""

    def __init__(self, dataset, transform, strong=None, strong_seed: int = 0):
        self.dataset, self.transform, self.strong, self.strong_seed = dataset, transform, strong, strong_seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        if self.strong is None:
            return self.transform(image), label, i
        weak = self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.strong_seed * 1_000_003 + i) % 2**63)
            return weak, label, i, self.strong(image)


class FolderSplits:
    has_strong_view = True

    def __init__(self, root: str | Path, val_fraction: float, split_seed: int, image_size: int = IMAGE_SIZE,
                 loader_workers: int = 8, device: torch.device | str = "cpu"):
        from torchvision.datasets import ImageFolder
        root = Path(root).expanduser()
        self.root, self.val_fraction, self.split_seed = root, val_fraction, split_seed
        self.image_size, self.loader_workers, self.device = image_size, loader_workers, torch.device(device)
        full_train = ImageFolder(root / "train")
        test = ImageFolder(root / "val")
        self.num_classes = len(full_train.classes)
        if test.classes != full_train.classes:
            raise UserError(f"{root}/val has other class folders than {root}/train; they must match")
        labels = torch.tensor(full_train.targets)
        (train_idx, _), (val_idx, _) = carve(torch.arange(len(labels)), labels, val_fraction, split_seed)
        self._splits = {"train": Subset(full_train, train_idx.tolist()),
                        "val": Subset(full_train, val_idx.tolist()), "test": test}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def size(self, split: str) -> int:
        return len(self._splits[split])

    def to(self, device: torch.device) -> "FolderSplits":
        self.device = torch.device(device)
        return self

    def batches(self, split, batch_size, rank=0, world=1, shuffle_seed=None, augment=False,
                strong_view=False):
        from pcbench.data.strong import strong_seed
        dataset = _Indexed(self._splits[split], _transforms(augment, self.image_size),
                           _strong_transforms(self.image_size) if strong_view else None,
                           strong_seed(shuffle_seed or 0, rank))
        order = rank_order(len(dataset), rank, world, shuffle_seed)
        loader = DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks(
                                order, batch_size, drop_last=shuffle_seed is not None)],
                            num_workers=self.loader_workers, pin_memory=self.device.type == "cuda",
                            # workers' augmentation: this epoch's and this rank's own
                            generator=torch.Generator().manual_seed(augment_seed(shuffle_seed or 0, rank)))
        for batch in loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)
