"""CIFAR-10 and CIFAR-100 read straight from torchvision's on-disk format (the python pickles
under `cifar-10-batches-py/` or `cifar-100-python/`) into uint8 tensors.

torchvision's dataset classes refuse files whose MD5 differs from the official archive's; we
read the pickles ourselves, so the same loader serves the real files and generated test sets,
and the official checksums only produce a warning (`check`)."""

import pickle
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from pcbench.data.splits import BatchTransform, Splits
from pcbench.data.validation import carve
from pcbench.errors import UserError


@dataclass(frozen=True)
class CifarFormat:
    folder: str  # as torchvision extracts it under the root
    train_files: tuple[tuple[str, str], ...]  # (file name, official MD5)
    test_files: tuple[tuple[str, str], ...]
    label_key: str
    meta_file: str  # the class names
    meta_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def files(self) -> tuple[tuple[str, str], ...]:
        return self.train_files + self.test_files


def _format(torchvision_class, label_key: str, num_classes: int, mean, std) -> CifarFormat:
    return CifarFormat(torchvision_class.base_folder,
                       tuple(map(tuple, torchvision_class.train_list)),
                       tuple(map(tuple, torchvision_class.test_list)),
                       label_key, torchvision_class.meta["filename"], torchvision_class.meta["key"],
                       num_classes, mean, std)


def _formats() -> dict[str, CifarFormat]:
    from torchvision.datasets import CIFAR10, CIFAR100
    # RepDistiller's normalisation constants
    return {
        "cifar10": _format(CIFAR10, "labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar100": _format(CIFAR100, "fine_labels", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    }


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's batch files hold (dicts, lists, strings and numpy arrays):
    a file that names any other callable is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which CIFAR files never do")
        return super().find_class(module, name)


def _read(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and not 0 <= labels.min() <= labels.max() < classes:  # would index past the logits
            raise ValueError(f"labels from {labels.min()} to {labels.max()}, where {classes} classes "
                             f"are labelled 0 to {classes - 1}")
    except (pickle.UnpicklingError, EOFError, OSError, KeyError, ValueError, TypeError,
            AttributeError, IndexError) as error:
        raise UserError(f"{path} is not a CIFAR batch file ({type(error).__name__}: {error}); "
                        f"replace it with the official file, or delete it to download it again") from None
    return images, labels


def _concat(folder: Path, files, fmt: CifarFormat) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read(folder / name, fmt.label_key, fmt.num_classes) for name, _ in files]
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))


def _missing(fmt: CifarFormat, folder: Path) -> list[str]:
    return [n for n, _ in fmt.files() if not (folder / n).is_file()]


def check(name: str, root: str | Path, download: bool = True) -> None:
    """Before any trial: the files exist (downloaded with torchvision when missing and the
    machine is online), else one line naming the expected path. Warns on non-official files."""
    fmt = _formats()[name]
    folder = Path(root).expanduser() / fmt.folder
    missing = _missing(fmt, folder)
    if missing and download:
        _download(name, Path(root).expanduser())
        missing = _missing(fmt, folder)
    if missing:
        raise UserError(f"{name} not found: expected {', '.join(str(folder / n) for n in missing)} "
                        f"(torchvision's CIFAR python format); put the files there or pass "
                        f"--data-dir DIR that holds {fmt.folder}/")
    from torchvision.datasets.utils import check_integrity
    altered = [n for n, md5 in fmt.files() if not check_integrity(str(folder / n), md5)]
    for file in altered:  # not the official bytes: they must at least read as CIFAR
        _read(folder / file, fmt.label_key, fmt.num_classes)
    if altered:
        warnings.warn(f"{folder}: {', '.join(altered)} differ from the official {name} files "
                      f"(MD5); results are not comparable with published numbers", stacklevel=2)


def _download(name: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    try:  # offline: write nothing, and let the caller name the expected path
        socket.getaddrinfo(urlparse(CIFAR10.url).hostname, 443)
    except OSError:
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), download=True)
    except (OSError, RuntimeError):  # no network, or a bad archive: fall through to the message
        pass
    finally:
        socket.setdefaulttimeout(previous)


def load(name: str, root: str | Path, val_fraction: float, split_seed: int) -> Splits:
    fmt = _formats()[name]
    folder = Path(root).expanduser() / fmt.folder
    if _missing(fmt, folder):
        # a node other than the driver's: fetch it here too, one process per node at a time
        from filelock import FileLock
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder.parent / f".{fmt.folder}.lock")):
            if _missing(fmt, folder):
                _download(name, folder.parent)
    x, y = _concat(folder, fmt.train_files, fmt)
    test = _concat(folder, fmt.test_files, fmt)
    train, val = carve(x, y, val_fraction, split_seed)
    transform = BatchTransform(crop_pad=4, flip=True, mean=fmt.mean, std=fmt.std)
    return Splits(train, val, test, fmt.num_classes, transform)


def write(name: str, root: str | Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """A small data set in the real on-disk format (random images, balanced labels; each
    training file holds `per_class` images of every class): for tests and for trying a suite
    without the real data."""
    fmt = _formats()[name]
    folder = Path(root) / fmt.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for file_name, count in [(n, per_class) for n, _ in fmt.train_files] + \
                            [(n, test_per_class) for n, _ in fmt.test_files]:
        labels = np.repeat(np.arange(fmt.num_classes), count)
        rng.shuffle(labels)
        # a class-dependent colour under the noise, so that a model has something to learn
        base = (labels[:, None] * 37 % 256).astype(np.int16)
        data = np.clip(base + rng.integers(-40, 40, (len(labels), 3072)), 0, 255).astype(np.uint8)
        with open(folder / file_name, "wb") as f:
            pickle.dump({"data": data, fmt.label_key: labels.tolist(), "batch_label": file_name}, f)
    with open(folder / fmt.meta_file, "wb") as f:
        pickle.dump({fmt.meta_key: [f"class{c}" for c in range(fmt.num_classes)]}, f)
    return folder
