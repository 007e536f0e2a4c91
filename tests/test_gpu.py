"""The CUDA paths: every method trains a zoo pair on the GPU with the speed options on (bf16
autocast, channels_last, torch.compile with CUDA graphs). Skipped without a CUDA GPU."""

import importlib.util
import math

import pytest
import torch
from pairs import starts_from_teacher

from pcbench.config import build_config
from pcbench.data import cifar
from pcbench.engine import LocalReporter, train_trial
from pcbench.methods import method_names
from pcbench.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HAVE_POT = importlib.util.find_spec("ot") is not None


@pytest.fixture(scope="module")
def cifar_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    cifar.write("cifar100", root, per_class=20, test_per_class=2)
    teacher = root / "resnet32x4.pth"
    torch.save({"model": create_model("resnet32x4").state_dict()}, teacher)
    return root, str(teacher)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("speed", [{"precision": "bf16", "channels_last": True, "compile": "reduce-overhead"},
                                   {"precision": "fp32", "channels_last": False, "compile": "off"}],
                         ids=["bf16-cl-cudagraphs", "fp32-eager"])
def test_every_method_trains_on_the_gpu(method, speed, cifar_setup):
    if method == "ot" and not HAVE_POT:
        pytest.skip("POT is not installed")
    root, teacher = cifar_setup
    student = "resnet32x4" if starts_from_teacher(method) else "resnet8x4"  # l2sp, delta: from its weights
    config = build_config(
        {"data": {"name": "cifar100", "root": str(root), "batch_size": 64, "val_fraction": 0.0},
         "teacher": "resnet32x4", "student": student, "method": method,
         "train": {"epochs": 2, "device": "cuda", "init_from_teacher": student == "resnet32x4", **speed}}, {})
    config = config.model_copy(update={"teacher_weights": teacher})
    reporter = LocalReporter()
    final = train_trial(config, reporter)
    assert final["device"] == "cuda" and len(reporter.history) == 2
    assert math.isfinite(final["train_loss"]) and 0.0 <= final["test_acc"] <= 1.0
    assert all(math.isfinite(v) for k, v in final.items() if k.startswith("loss/"))
