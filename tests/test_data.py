"""Data sets in their real on-disk formats, read back through the real loaders, and the
batch pipeline that runs on the device."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pcbench.data import BatchTransform, check_dataset, cifar, load_dataset
from pcbench.errors import UserError


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cifar.write("cifar100", root, per_class=10, test_per_class=2)
    return root


def test_cifar100_pickles_load_as_uint8_with_a_seeded_stratified_validation_split(cifar100_root):
    data = load_dataset("cifar100", str(cifar100_root), None, split_seed=0)
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert data.train[0].dtype == torch.uint8
    assert (data.size("train"), data.size("val"), data.size("test")) == (900, 100, 200)
    assert torch.bincount(data.val[1], minlength=100).tolist() == [1] * 100  # stratified
    with open(cifar100_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images = np.asarray(raw["data"]).reshape(-1, 3, 32, 32)
    everything = torch.cat([data.train[0], data.val[0]])
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, images))  # nothing lost
    again = load_dataset("cifar100", str(cifar100_root), None, split_seed=0)
    other = load_dataset("cifar100", str(cifar100_root), None, split_seed=1)
    assert torch.equal(again.val[0], data.val[0]) and not torch.equal(other.val[0], data.val[0])


def test_final_runs_train_on_all_the_training_data(cifar100_root):
    data = load_dataset("cifar100", str(cifar100_root), 0.0, split_seed=0)
    assert (data.size("train"), data.size("val")) == (1000, 0)


def test_cifar10_reads_its_five_training_batches(tmp_path):
    cifar.write("cifar10", tmp_path, per_class=3, test_per_class=1)
    data = load_dataset("cifar10", str(tmp_path), 0.0, split_seed=0)
    assert (data.size("train"), data.size("test"), data.num_classes) == (150, 10, 10)


def test_generated_files_warn_that_they_are_not_the_official_ones(cifar100_root):
    with pytest.warns(UserWarning, match="differ from the official cifar100"):
        check_dataset("cifar100", str(cifar100_root))


def test_missing_cifar_names_the_expected_path(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "cifar-100-python" / "train")):
        check_dataset("cifar100", str(tmp_path))


def test_training_batches_are_augmented_on_the_device_and_evaluation_is_not():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    transform = BatchTransform(crop_pad=1, flip=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = transform(x)
    assert plain.dtype == torch.float32
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.25)
    seen = set()
    for seed in range(30):
        out = transform(x, torch.Generator().manual_seed(seed))
        assert out.shape == plain.shape
        seen.add(bytes(out.numpy()))
        # every output row is a shifted (and maybe flipped) window of the zero-padded input
    assert len(seen) > 10
    flip_only = BatchTransform(flip=True)
    outs = [flip_only(x, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(torch.equal(o[0], x[0].flip(2).float() / 255) for o in outs)
    assert any(torch.equal(o[0], x[0].float() / 255) for o in outs)


def test_shards_cover_the_data_once_and_training_drops_the_partial_batch(cifar100_root):
    data = load_dataset("cifar100", str(cifar100_root), None, split_seed=0)
    seen = torch.cat([idx for r in range(2) for _, _, idx in data.batches("test", 64, r, 2)])
    assert sorted(seen.tolist()) == list(range(200))
    steps = [list(data.batches("train", 64, r, 2, shuffle_seed=5, augment=True)) for r in range(2)]
    assert len(steps[0]) == len(steps[1]) == 450 // 64
    first = set(steps[0][0][2].tolist())
    assert not first & set(steps[1][0][2].tolist())  # ranks never overlap
    x, y, idx = steps[0][0]
    assert x.dtype == torch.float32 and torch.equal(y, data.train[1][idx])


def _write_jpeg_folders(root, classes=3, per_class=4):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"n0000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.full((40, 48, 3), c * 80, np.uint8) + rng.integers(0, 30, (40, 48, 3), np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.JPEG", quality=90)


def test_imagenet_style_folders_stream_through_torchvision_transforms(tmp_path):
    _write_jpeg_folders(tmp_path)
    check_dataset("imagenet", str(tmp_path))
    data = load_dataset("imagenet", str(tmp_path), 0.25, split_seed=0, loader_workers=0)
    assert data.num_classes == 3 and data.input_shape == (3, 224, 224)
    assert (data.size("train"), data.size("val"), data.size("test")) == (9, 3, 6)
    batches = list(data.batches("train", 4, shuffle_seed=0, augment=True))
    assert [len(b[1]) for b in batches] == [4, 4]
    x, y, idx = next(data.batches("test", 6))
    assert x.shape == (6, 3, 224, 224) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    # class 2's images are brighter than class 0's after the same normalisation
    assert x[y == 2].mean() > x[y == 0].mean()
    # MLKD's strong view: a fourth tensor of the same images; the weak view stays as it was
    # (without DataLoader workers the transforms draw on torch's global generator)
    torch.manual_seed(0)
    batches = list(data.batches("train", 4, shuffle_seed=0, augment=True))
    torch.manual_seed(0)
    both = list(data.batches("train", 4, shuffle_seed=0, augment=True, strong_view=True))
    for (x, y, idx), (weak, weak_y, weak_idx, strong) in zip(batches, both):
        assert torch.equal(x, weak) and torch.equal(idx, weak_idx) and strong.shape == x.shape
        assert not torch.equal(strong, x)


def test_an_empty_image_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="expected class folders under"):
        check_dataset("imagenet", str(tmp_path))


class _Payload:
    """What a crafted batch file would smuggle in: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_file_is_refused_without_running_its_code(tmp_path):
    cifar.write("cifar10", tmp_path, per_class=3, test_per_class=1)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    with pytest.raises(UserError, match=r"data_batch_1 is not a CIFAR batch file \(UnpicklingError: "
                                        r"it names posix.system"):
        check_dataset("cifar10", str(tmp_path), download=False)
    with pytest.raises(UserError, match="not a CIFAR batch file"):
        load_dataset("cifar10", str(tmp_path), 0.1, 0)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(X", b"not a pickle at all"])
def test_a_corrupt_cifar_file_is_one_line_before_anything_runs(tmp_path, content):
    cifar.write("cifar10", tmp_path, per_class=3, test_per_class=1)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(UserError) as error:
        check_dataset("cifar10", str(tmp_path), download=False)
    assert "test_batch is not a CIFAR batch file" in str(error.value) and "\n" not in str(error.value)


def test_a_cifar_file_with_labels_past_its_classes_is_one_line_before_anything_runs(tmp_path):
    import pickle

    folder = cifar.write("cifar10", tmp_path, per_class=3, test_per_class=1)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f)
    batch["labels"][0] = 10  # CIFAR-10's classes are 0 to 9: a CIFAR-100 label, or a shifted one
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR batch file \(ValueError: labels from "
                                        r"0 to 10, where 10 classes are labelled 0 to 9\)"):
        check_dataset("cifar10", str(tmp_path), download=False)


def test_image_folders_of_your_own_are_folder_name_with_classes_counted_from_them(tmp_path):
    _write_jpeg_folders(tmp_path, classes=4)
    check_dataset("folder:birds", str(tmp_path))
    data = load_dataset("folder:birds", str(tmp_path), 0.25, split_seed=0, loader_workers=0)
    assert data.num_classes == 4 and data.input_shape == (3, 224, 224)
    with pytest.raises(UserError, match="folder:dogs: expected class folders under"):
        check_dataset("folder:dogs", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="or folder:NAME for image folders of your own"):
        check_dataset("folder:Bad Name", str(tmp_path))


def test_a_teacher_of_image_folders_cannot_teach_another_task():
    from pcbench.config import build_config

    with pytest.raises(UserError, match="a teacher of folder:birds cannot teach another task"):
        build_config({"method": "fitnet", "teacher": "resnet34", "student": "resnet18",
                      "data": {"name": "folder:dogs"}, "teacher_dataset": "folder:birds"}, {})
