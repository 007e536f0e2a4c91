"""Teachers through the CLI: trained with the data set's recipe on Ray, imported from a
RepDistiller-format checkpoint (checked by loading and by its test accuracy), and a trial
whose teacher is missing says how to get one."""

import json

import pytest
import torch
from typer.testing import CliRunner

from pcbench.atomic import sha256_of
from pcbench.cli import app
from pcbench.data import cifar
from pcbench.engine import accuracy_on_test
from pcbench.errors import UserError
from pcbench.models import create_model
from pcbench.teachers import TeacherStore


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.ray
def test_teacher_train_runs_the_recipe_on_ray_and_stores_a_checked_record(tmp_path, local_ray):
    result = _invoke("teacher", "train", "--model", "cnn_small", "--dataset", "digits",
                     "--set", "train.epochs=3", "--teachers", tmp_path / "teachers",
                     "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    record = TeacherStore(tmp_path / "teachers").get("cnn_small", "digits")
    assert record.sha256 == sha256_of(record.path) and record.test_acc > 0.5
    assert record.recipe["epochs"] == 3
    assert set(torch.load(record.path, weights_only=True)) == {"model"}
    assert any((tmp_path / "results" / "ray").iterdir())  # it ran as a Ray trial
    listing = _invoke("teacher", "list", "--teachers", tmp_path / "teachers")
    assert "cnn_small" in listing.output


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    cifar.write("cifar100", root, per_class=2, test_per_class=1)
    return root


def test_import_accepts_dataparallel_keys_and_records_the_measured_accuracy(cifar_dir, tmp_path):
    model = create_model("resnet8")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 240, "best_acc": 0.0}, tmp_path / "ckpt.pth")
    result = _invoke("teacher", "import", tmp_path / "ckpt.pth", "--model", "resnet8",
                     "--dataset", "cifar100", "--data-dir", cifar_dir, "--teachers", tmp_path / "teachers")
    assert result.exit_code == 0, result.output
    record = TeacherStore(tmp_path / "teachers").get("resnet8", "cifar100")
    stored = torch.load(record.path, weights_only=True)["model"]
    assert list(stored) == list(model.state_dict())  # RepDistiller's keys, in order
    assert record.test_acc == pytest.approx(accuracy_on_test("resnet8", stored, "cifar100", str(cifar_dir)))
    assert record.recipe["imported_from"] == str((tmp_path / "ckpt.pth").resolve())


def test_a_checkpoint_of_another_architecture_is_refused_and_nothing_is_stored(cifar_dir, tmp_path):
    torch.save({"model": create_model("resnet20").state_dict()}, tmp_path / "ckpt.pth")
    result = _invoke("teacher", "import", tmp_path / "ckpt.pth", "--model", "resnet8",
                     "--dataset", "cifar100", "--data-dir", cifar_dir, "--teachers", tmp_path / "teachers")
    assert result.exit_code == 2
    assert "does not fit resnet8" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "teachers").exists()


def test_a_checkpoint_of_another_data_set_is_refused_naming_both(cifar_dir, tmp_path):
    # a CIFAR-100 resnet8 (100 classes) imported as a CIFAR-10 teacher
    torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, tmp_path / "ckpt.pth")
    cifar.write("cifar10", tmp_path / "c10", per_class=2, test_per_class=1)
    result = _invoke("teacher", "import", tmp_path / "ckpt.pth", "--model", "resnet8",
                     "--dataset", "cifar10", "--data-dir", tmp_path / "c10",
                     "--teachers", tmp_path / "teachers")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "does not fit resnet8 on cifar10 (3x32x32 images, 10 classes)" in result.output
    assert "check --dataset and --model" in result.output and not (tmp_path / "teachers").exists()


def test_a_checkpoint_with_nan_weights_is_refused_and_nothing_is_stored(cifar_dir, tmp_path):
    state = create_model("resnet8").state_dict()
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    result = _invoke("teacher", "import", tmp_path / "ckpt.pth", "--model", "resnet8",
                     "--dataset", "cifar100", "--data-dir", cifar_dir, "--teachers", tmp_path / "teachers")
    assert result.exit_code == 2 and "holds NaN or infinite values" in result.output
    assert not (tmp_path / "teachers").exists()


def test_a_missing_teacher_names_both_ways_to_get_one(cifar_dir, tmp_path):
    result = _invoke("run", "--method", "kd", "--dataset", "cifar100", "--data-dir", cifar_dir,
                     "--teacher", "resnet32x4", "--student", "resnet8x4", "--no-ray",
                     "--teachers", tmp_path / "teachers", "--results", tmp_path / "results",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.exit_code == 2
    assert "pcbench teacher train --model resnet32x4 --dataset cifar100" in result.output
    assert "pcbench teacher import FILE --model resnet32x4" in result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_cifar_teacher_trains_with_the_published_recipe_on_all_the_training_data(cifar_dir):
    from pcbench.teachers import teacher_config
    config = teacher_config("resnet32x4", "cifar100", str(cifar_dir))
    assert (config.train.recipe, config.train.epochs, config.data.val_fraction) == ("cifar100-crd", 240, 0.0)
    assert config.train.milestones == [150, 180, 210] and config.data.batch_size == 64
    assert teacher_config("MobileNetV2", "cifar100").train.lr == 0.01
    # a shorter run keeps the schedule's shape, however its length is given
    short = teacher_config("resnet56", "cifar100", overrides={"train.epochs": 30})
    assert (short.train.epochs, short.train.milestones) == (30, [19, 22, 26])
    assert json.loads(config.model_dump_json())["method"]["name"] == "ce"


def test_a_copied_store_hashes_and_loads_its_own_weights(teacher_store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(teacher_store.root, copy)
    stored = json.loads((copy / "digits" / "cnn_large.json").read_text())
    assert stored["path"] == "digits/cnn_large.pt"  # relative to the store
    record = TeacherStore(copy).ensure("cnn_large", "digits")
    assert record.path == str(copy / "digits" / "cnn_large.pt")
    (copy / "digits" / "cnn_large.pt").write_bytes(b"tampered")  # the copy's own file is checked
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        TeacherStore(copy).ensure("cnn_large", "digits")


def test_two_commands_at_once_train_a_new_teacher_once(tmp_path):
    import threading
    import time

    trained = []

    def runner(config):  # stands in for the recipe's training: an untrained student, stored
        trained.append(config.student)
        time.sleep(1.0)  # the second command arrives while the first trains
        folder = tmp_path / f"trial-{len(trained)}"
        folder.mkdir()
        torch.save({"model": create_model(config.student).state_dict()}, folder / "model.pt")
        return {"test_acc": 0.1}, str(folder)

    store = TeacherStore(tmp_path / "teachers")
    records = []
    threads = [threading.Thread(target=lambda: records.append(store.ensure("cnn_small", "digits", runner)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert trained == ["cnn_small"] and records[0].sha256 == records[1].sha256
