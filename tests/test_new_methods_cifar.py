"""Every 2021-24 method and logit plug-in trains one epoch on each of the four CIFAR-100 pairs
of the CRD table, on CIFAR-100 files generated in the real format, with the recipe every suite
uses: what a user of suites/cifar100.yaml would run first."""

import math

import pytest
import torch

from pcbench.config import build_config
from pcbench.data import cifar
from pcbench.engine import LocalReporter, train_trial
from pcbench.models import create_model
from pcbench.teachers import TeacherStore, attach

PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
METHODS = ["dist", "nkd", "wttm", "reviewkd", "ofd", "mlkd", "wkd_l", "wkd_f", "kd+ls", "dkd+ls",
           "mlkd+ls", "kd+ctkd"]


@pytest.fixture(scope="module")
def cifar_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar-new-methods")
    cifar.write("cifar100", root / "data", per_class=4, test_per_class=1)  # every class left in training
    store = TeacherStore(root / "teachers")
    for teacher, _ in PAIRS:  # untrained weights in RepDistiller's checkpoint format
        torch.manual_seed(0)
        torch.save({"model": create_model(teacher).state_dict()}, root / f"{teacher}.pth")
        store.import_checkpoint(root / f"{teacher}.pth", teacher, "cifar100", lambda model, state: 1.0)
    return root, store


@pytest.mark.slow
@pytest.mark.parametrize("teacher, student", PAIRS, ids=[f"{t}-{s}" for t, s in PAIRS])
def test_every_new_method_trains_an_epoch_on_the_cifar100_pair(cifar_teachers, teacher, student):
    root, store = cifar_teachers
    for method in METHODS:
        config = attach(build_config(
            {"method": method, "teacher": teacher, "student": student,
             "data": {"name": "cifar100", "root": str(root / "data")}},
            {"train.recipe": "cifar100-crd", "train.epochs": 1, "train.diagnostics": False}),
            store.get(teacher, "cifar100"))
        metrics = train_trial(config, LocalReporter())
        assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"]), (method, metrics)
