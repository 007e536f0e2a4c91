"""The model zoo: RepDistiller's CIFAR models exactly (state_dict keys, shapes, parameter counts,
feature shapes, from tests/data/repdistiller_zoo.json, measured on RepDistiller's own models),
torchvision's ImageNet models, the taps and the stage contract FCFD relies on."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from pcbench import models
from pcbench.errors import UserError
from pcbench.methods import get_method
from pcbench.methods.base import DataInfo, Step
from pcbench.methods.fcfd import FCFDConfig
from pcbench.models import Tapped, create_model, model_info, stage_taps, tap_names
from pcbench.models.shufflenet import channel_shuffle

ZOO_JSON = Path(__file__).parent / "data" / "repdistiller_zoo.json"
CIFAR_ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
             "resnet8x4", "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
             "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
FOUR_STAGES = {"vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ResNet50"}  # FCFD's stage split


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(ZOO_JSON.read_text())["models"]


def _eval_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **kw).eval()


def test_the_registry_holds_the_whole_zoo(reference):
    assert sorted(reference) == sorted(CIFAR_ZOO)
    assert set(CIFAR_ZOO + IMAGENET + ["cnn_large", "cnn_small"]) == set(models.model_names())
    with pytest.raises(UserError, match="unknown model 'resnet9'"):
        create_model("resnet9")


@pytest.mark.parametrize("name", CIFAR_ZOO)
def test_cifar_model_matches_repdistiller(name, reference):
    ref = reference[name]
    model = _eval_model(name, num_classes=100)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]

    stages = stage_taps(name)
    assert len(stages) == (4 if name in FOUR_STAGES else 3) == len(model.stage_blocks())
    assert tap_names(name) == ["stem", *stages, "embedding", "logits"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps = Tapped(model, set(tap_names(name))).eval()(x)
        shapes = [list(taps[t].shape[1:]) for t in ["stem", *stages, "embedding"]]
        assert shapes == ref["feature_shapes_is_feat"]
        assert list(taps["logits"].shape[1:]) == ref["logits"] == [100]
        # The taps are the stage boundaries run_stages and head use, not nodes of equal shape.
        h = model.forward_stem(x)
        outs = model.run_stages(h, 0)
        assert torch.equal(taps["stem"], h)
        assert all(torch.equal(taps[t], o) for t, o in zip(stages, outs))
        classifier = model.get_submodule(model.TAP_NODES["logits"])
        torch.testing.assert_close(classifier(taps["embedding"]), taps["logits"])
        torch.testing.assert_close(model.head(outs[-1]), taps["logits"])


@pytest.mark.parametrize("name", ["resnet8x4", "MobileNetV2"])
def test_a_repdistiller_checkpoint_loads_strictly_and_gives_the_same_logits(name, tmp_path):
    trained = _eval_model(name)
    with torch.no_grad():  # running statistics that differ from a fresh model's
        for key, value in trained.state_dict().items():
            if "running" in key:
                value.copy_(torch.rand_like(value) + 0.5)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": trained.state_dict(), "best_acc": 0.0}, path)

    torch.manual_seed(1)
    fresh = create_model(name, num_classes=100).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2",
                                  "ResNet50", "resnet18", "mobilenet_v2"])
def test_run_stages_and_head_resume_the_forward_at_every_stage(name):
    model = _eval_model(name, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        outs = [model.forward_stem(x)]
        outs += model.run_stages(outs[0], 0)
        for k in range(len(outs) - 1):  # FCFD's mixed paths switch in after stage k
            resumed = model.run_stages(outs[k], k)
            assert len(resumed) == len(outs) - 1 - k
            torch.testing.assert_close(model.head(resumed[-1]), logits, rtol=0, atol=1e-6)


def test_vgg_pools_before_block4_only_for_64px_inputs():
    model = _eval_model("vgg8")
    tapped = Tapped(model, {"stage3", "stage4"}).eval()
    with torch.no_grad():
        small, large = tapped(torch.randn(2, 3, 32, 32)), tapped(torch.randn(2, 3, 64, 64))
    assert small["stage3"].shape[-2:] == small["stage4"].shape[-2:] == (4, 4)
    assert large["stage3"].shape[-2:] == (8, 8) and large["stage4"].shape[-2:] == (4, 4)


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_models_are_torchvisions_with_four_stages_of_taps(name):
    with torch.device("meta"):  # keys and shapes only: nothing allocated
        ours = create_model(name, num_classes=1000).state_dict()
        theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]

    assert stage_taps(name) == ["stage1", "stage2", "stage3", "stage4"]
    model = _eval_model(name, num_classes=10)
    with torch.no_grad():
        taps = Tapped(model, set(tap_names(name))).eval()(torch.randn(2, 3, 32, 32))
    # stem at 1/2 (mobilenet) or 1/4 (resnet); the stages at 1/4, 1/8, 1/16, 1/32 of the input
    assert taps["stem"].shape[-1] == (16 if name == "mobilenet_v2" else 8)
    assert [taps[t].shape[-1] for t in stage_taps(name)] == [8, 4, 2, 1]
    assert taps["embedding"].ndim == 2 and taps["logits"].shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2",
                                  "resnet18", "mobilenet_v2"])
def test_models_take_one_channel_inputs(name):
    model = _eval_model(name, num_classes=10, in_channels=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_zoo_info_lists_families_parameters_and_stages(reference):
    rows = {row.name: row for row in models.zoo_info()}
    assert set(rows) == set(models.model_names())
    for name in CIFAR_ZOO:
        assert rows[name].params == reference[name]["params"]
        assert rows[name].stages == (4 if name in FOUR_STAGES else 3)
        assert rows[name].source == "repdistiller"
    assert rows["resnet18"].params == 11_689_512 and rows["resnet18"].dataset == "imagenet"
    assert rows["wrn_40_2"].family == "wrn" and not rows["wrn_40_2"].stages_post_relu
    assert not rows["MobileNetV2"].stages_post_relu and rows["resnet8x4"].stages_post_relu
    assert rows["vgg8"].taps == ("stem", "stage1", "stage2", "stage3", "stage4", "embedding", "logits")


@pytest.mark.parametrize("teacher_name,student_name", [("resnet32x4", "ShuffleV1"), ("vgg13", "vgg8"),
                                                       ("ResNet50", "MobileNetV2")])
def test_fcfd_runs_every_mixed_path_between_zoo_models(teacher_name, student_name):
    """Across families: other resolutions at each stage (strided and transposed bridges), four
    stages, and stages that are not post-ReLU (MobileNetV2)."""
    torch.manual_seed(0)
    student, teacher = create_model(student_name), create_model(teacher_name).eval().requires_grad_(False)
    shape = (3, 32, 32)
    method = get_method("fcfd")(FCFDConfig(paths=6), model_info(student, shape), model_info(teacher, shape),
                                DataInfo(100, 100, epochs=20))
    assert len(method.mixed_paths) == 2 * (len(stage_taps(student_name)) - 1)
    taps = set(student.stage_taps)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        teacher_feats = Tapped(teacher, taps).eval()(x)
    step = Step(x, torch.randint(0, 100, (4,)), torch.arange(4), 0, Tapped(student, taps)(x), teacher_feats,
                student, teacher)
    terms = method(step)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    first = next(student.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
