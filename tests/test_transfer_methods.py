"""OT's transfer setting: L2-SP and DELTA against their definitions on hand-made tensors, the
refusal of both where the student does not start from the teacher's weights, and the
fine-tuning recipes a pair that starts so may take."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from pcbench.atomic import sha256_of
from pcbench.cli import app
from pcbench.config import build_config
from pcbench.engine import LocalReporter, train_trial
from pcbench.errors import UserError
from pcbench.methods import DataInfo, get_method
from pcbench.methods import delta as delta_module
from pcbench.methods.base import Step
from pcbench.methods.delta import attention_weights, channel_importance, delta_distance
from pcbench.models import Tapped, create_model, model_info, shapes_of
from pcbench.recipes import recipe, with_recipe
from pcbench.spaces import prepare_search

FINE_TUNING = {"data": {"name": "digits-5to9"}, "teacher_dataset": "digits-0to4", "teacher": "cnn_small"}
STARTED = {"train.init_from_teacher": True}


def _pair(classes: int = 5):
    """A teacher and a student started from its weights, all but the classifier."""
    torch.manual_seed(0)
    teacher = create_model("cnn_small", 7, 1).requires_grad_(False)
    student = create_model("cnn_small", classes, 1)
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("fc.")},
                            strict=False)
    return student, teacher


def _method(name: str, student, teacher, epochs: int = 9, setting=FINE_TUNING, **knobs):
    knobs = {f"method.{k}": v for k, v in knobs.items()}
    config = build_config({"method": name, **setting}, {**STARTED, **knobs})
    infos = model_info(student, (1, 8, 8)), model_info(teacher, (1, 8, 8))
    return get_method(name)(config.method, *infos, DataInfo(5, 100, epochs))


def _step(student, teacher, x, y, epoch=0, taps=("embedding", "stage1", "stage2", "stage3")):
    return Step(x, y, torch.arange(len(y)), epoch, Tapped(student, set(taps))(x),
                {k: v.detach() for k, v in Tapped(teacher, set(taps))(x).items()}, student, teacher)


# ---- refusal: both start from the teacher's weights ----

@pytest.mark.parametrize("method", ["l2sp", "delta", "l2sp+kd", "delta+kd"])
def test_l2sp_and_delta_are_refused_unless_the_student_starts_from_the_teachers_weights(method):
    with pytest.raises(UserError, match=r"^" + re.escape(method) + r" regularises the student towards "
                       r"its starting point.*set train.init_from_teacher=true"):
        build_config({"method": method}, {})
    build_config({"method": method, "teacher": "cnn_small"}, STARTED)  # same task: accepted


def test_the_refusal_is_one_line_and_exit_code_2_before_anything_runs(tmp_path):
    result = CliRunner().invoke(app, ["search", "--method", "ce", "--method", "delta", "--dry-run",
                                      "--results", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: delta regularises the student towards its starting point, the teacher's weights, so "
        "the student must start from them; set train.init_from_teacher=true with the teacher's "
        "architecture"]
    assert not (tmp_path / "r").exists()


# ---- l2sp ----

def test_l2sp_pulls_the_shared_weights_to_the_start_and_the_new_classifier_to_zero():
    student, teacher = _pair()
    with torch.no_grad():
        student.stem[0].weight.add_(0.1)  # a conv kernel: counted
        student.stem[1].weight.add_(5.0)  # BatchNorm's scale: not a "weights" variable
        student.stem[1].bias.add_(5.0)
        student.fc.weight.copy_(torch.arange(student.fc.weight.numel()).view_as(student.fc.weight) / 10)
        student.fc.bias.fill_(3.0)  # the classifier's bias: not counted either
    method = _method("l2sp", student, teacher, alpha=0.3, beta=0.02)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    terms = method(_step(student, teacher, x, y))
    shared = student.stem[0].weight.numel() * 0.1 ** 2
    n = student.fc.weight.numel()
    fresh = sum((i / 10) ** 2 for i in range(n))
    assert terms["l2sp"].item() == pytest.approx(0.3 / 2 * shared, rel=1e-4)
    assert terms["head"].item() == pytest.approx(0.02 / 2 * fresh, rel=1e-5)
    assert set(terms) == {"ce", "l2sp", "head"}


def test_l2sp_gradient_is_alpha_times_the_distance_from_the_start():
    student, teacher = _pair()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    method = _method("l2sp", student, teacher, alpha=0.7, beta=0.0, w_ce=0.0)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    sum(method(_step(student, teacher, x, y)).values()).backward()
    conv = student.stages[1][0][0].weight
    reference = teacher.stages[1][0][0].weight
    assert torch.allclose(conv.grad, 0.7 * (conv - reference), atol=1e-6)
    assert student.stages[1][0][1].weight.grad is None or not student.stages[1][0][1].weight.grad.any()


def test_l2sp_reads_the_teachers_weights_not_its_features():
    student, teacher = _pair()
    assert not _method("l2sp", student, teacher).reads_teacher(0)  # the engine skips its forward
    same_task = {"teacher": "cnn_small"}  # a +kd variant is refused across tasks
    assert _method("l2sp+kd", student, teacher, setting=same_task).reads_teacher(0)  # KD reads logits


# ---- delta ----

def test_delta_attention_is_the_softmax_of_z_scored_importances():
    importance = torch.tensor([1.0, 2.0, 3.0])
    z = [-math.sqrt(1.5), 0.0, math.sqrt(1.5)]  # (v - 2) / sqrt(2/3), the population std
    e = [math.exp(v / 5) for v in z]
    assert attention_weights(importance, 5.0).tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-6)
    assert attention_weights(torch.ones(4), 5.0).tolist() == pytest.approx([0.25] * 4)  # no spread


def test_delta_distance_weighs_each_channels_mean_squared_gap():
    fs = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[2.0, 2.0]], [[1.0, -1.0]]]])  # B=2, C=2, 1x2
    ft = torch.zeros_like(fs)
    a = torch.tensor([0.25, 0.75])
    # per sample: sum_j C a_j mean_hw(gap^2); sample 1: 2*.25*5 + 0; sample 2: 2*.25*4 + 2*.75*1
    expected = 0.5 * ((2 * 0.25 * 5.0) + (2 * 0.25 * 4.0 + 2 * 0.75 * 1.0)) / 2
    assert delta_distance(fs, ft, a).item() == pytest.approx(expected)


def test_delta_weight_is_the_authors_alpha_summed_over_their_batch_of_64():
    torch.manual_seed(1)
    fs, ft = torch.randn(64, 3, 2, 2), torch.randn(64, 3, 2, 2)
    a = torch.softmax(torch.randn(3), 0)
    b, c, h, w = fs.shape
    # their train.py: per (sample, channel) C * a_c * ||gap||^2 / (h w), halved, summed over both
    theirs = 0.5 * (c * a * (fs - ft).flatten(2).norm(dim=2) ** 2 / (h * w)).sum()
    assert (0.01 * theirs).item() == pytest.approx(
        get_method("delta").Config().weight * delta_distance(fs, ft, a).item(), rel=1e-5)


def _importance_by_hooks(model, probe, stage, channel, x, y):
    """The CE rise of zeroing one channel of one stage, by a forward hook (another route)."""
    body = copy.deepcopy(model).eval()
    body.fc = probe
    intact = F.cross_entropy(body(x), y)
    module = {"stem": body.stem, "embedding": body.pool}.get(stage) or body.stages[int(stage[-1]) - 1]

    def zero(_, __, out):
        out = out.clone()
        out[:, channel] = 0
        return out

    handle = module.register_forward_hook(zero)
    ablated = F.cross_entropy(body(x), y)
    handle.remove()
    return (ablated - intact).item()


def test_delta_importance_is_the_probes_loss_rise_when_a_channel_is_zeroed(monkeypatch):
    monkeypatch.setattr(delta_module, "ABLATED_SAMPLES", 12)  # channels side by side, with a remainder
    torch.manual_seed(2)
    model = create_model("cnn_small", 7, 1).eval()
    probe = nn.Linear(model.fc.in_features, 5)
    batches = [(torch.randn(5, 1, 8, 8), torch.randint(0, 5, (5,))) for _ in range(2)]
    taps = ["stem", "stage2", "stage3", "embedding"]
    got = channel_importance(model, probe, taps, batches)
    for tap in taps:
        for channel in (0, got[tap].numel() - 1):
            expected = sum(_importance_by_hooks(model, probe, tap, channel, x, y) for x, y in batches) / 2
            assert got[tap][channel].item() == pytest.approx(expected, abs=1e-5), (tap, channel)
    assert model.fc.out_features == 7  # the model itself is untouched


def test_delta_trains_the_probe_first_then_measures_attention_and_regularises():
    student, teacher = _pair()
    teacher.eval()
    method = _method("delta", student, teacher, epochs=9, beta=0.04)
    assert method.init_epochs == 1
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    student.eval()  # batch statistics aside, the student computes the teacher's maps
    first = method(_step(student, teacher, x, y, epoch=0))
    assert set(first) == {"probe"}  # the initialisation stage: the probe alone
    expected_probe = F.cross_entropy(method.probe(_embedding(teacher, x)), y)
    assert first["probe"].item() == pytest.approx(expected_probe.item(), rel=1e-6)
    first["probe"].backward()
    assert all(p.grad is None for p in student.parameters())  # the student waits
    assert not method.attention_measured
    later = torch.randn(6, 1, 8, 8)
    terms = method(_step(student, teacher, later, y, epoch=1))
    assert method.attention_measured and set(terms) == {"ce", "delta", "head"}
    for tap in ("stage1", "stage2", "stage3"):  # measured on the stage's batch, not this one
        attention = method.attention(tap)
        expected = attention_weights(channel_importance(teacher, method.probe, [tap], [(x, y)])[tap], 5.0)
        assert torch.allclose(attention, expected, atol=1e-6) and attention.sum().item() == pytest.approx(1.0)
    assert terms["delta"].item() == pytest.approx(0.0, abs=1e-10)  # at the starting point
    head = student.fc.weight.pow(2).sum() + student.fc.bias.pow(2).sum()
    assert terms["head"].item() == pytest.approx(0.04 / 2 * head.item(), rel=1e-6)
    # the attention is kept in the method's state (saved with checkpoints), measured once
    state = method.state_dict()
    assert state["attention_measured"] and torch.equal(state["attention_stage2"], method.attention("stage2"))
    resumed = _method("delta", student, teacher, epochs=9, beta=0.04)
    resumed.load_state_dict(state)
    resumed(_step(student, teacher, torch.randn(6, 1, 8, 8), y, epoch=2))  # no stage batches kept
    assert all(torch.equal(resumed.attention(t), method.attention(t)) for t in ("stage1", "stage2", "stage3"))


def _embedding(model, x):
    h = model.stem(x)
    for stage in model.stages:
        h = stage(h)
    return model.pool(h)


def test_delta_refuses_taps_it_cannot_zero():
    config = build_config({"method": "delta", "teacher": "cnn_small"},
                          {**STARTED, "delta.taps": "stage3,logits"}).method
    digits = shapes_of("cnn_small", (1, 8, 8))
    with pytest.raises(ValueError, match=r"^delta weighs each channel by zeroing it and running the rest of "
                       r"the network, which it can do at the stem, a stage or the embedding, not at "
                       r"logits; choose those taps$"):
        get_method("delta").check_pair(config, digits, digits)
    get_method("delta").check_pair(config.model_copy(update={"taps": ["stem", "stage2", "embedding"]}),
                                   digits, digits)


# ---- the fine-tuning recipe ----

def test_a_pairs_own_recipe_replaces_the_suites_with_its_settings():
    base = {"data": {"name": "digits-5to9"}, "teacher": "cnn_small", "student": "cnn_small"}
    merged = with_recipe(base, "digits", {**STARTED, "train.recipe": "finetune-digits"})
    assert merged["train"] == {**recipe("finetune-digits")["train"]}
    assert merged["train"]["lr"] == 0.01 and merged["train"]["epochs"] == 10
    assert with_recipe(base, "digits", {})["train"]["lr"] == 0.05  # the suite's, otherwise
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        with_recipe(base, "digits", {"train.recipe": "nope"})


@pytest.mark.parametrize("name, epochs, milestone", [("finetune-folder", 48, 27), ("finetune-cifar", 12, 7),
                                                      ("finetune-digits", 10, 6)])
def test_fine_tuning_recipes_follow_l2sps_schedule(name, epochs, milestone):
    train = recipe(name)["train"]
    assert (train["lr"], train["momentum"], train["weight_decay"]) == (0.01, 0.9, 1e-4)
    assert (train["schedule"], train["epochs"], train["milestones"]) == ("step", epochs, [milestone])
    assert recipe(name)["data"]["batch_size"] == 64


def test_a_fine_tuning_search_searches_the_learning_rate_around_fine_tunings():
    base = with_recipe({**FINE_TUNING, "student": "cnn_small", "method": "l2sp"}, "digits",
                       {**STARTED, "train.recipe": "finetune-digits"})
    template, space = prepare_search(base, {**STARTED, "train.recipe": "finetune-digits"})
    lr = space.describe()["train.lr"]
    assert (lr["low"], lr["high"]) == (pytest.approx(0.0025), pytest.approx(0.04))
    assert space.first_point(template) == {"method.alpha": 0.1, "method.beta": 0.01, "train.lr": 0.01,
                                           "train.weight_decay": 1e-4}
    _, delta_space = prepare_search({**base, "method": "delta"},
                                    {**STARTED, "train.recipe": "finetune-digits"})
    assert delta_space.first_point(template.model_copy(update={"method": build_config(
        {"method": "delta", **FINE_TUNING}, STARTED).method}))["method.weight"] == 0.64


# ---- a short run of each ----

@pytest.fixture(scope="module")
def half_teacher(tmp_path_factory):
    """A cnn_small "teacher of digits 0-4" (its initial weights: what is checked here is how
    the methods train, not what the teacher knows), so no teacher trains for this test."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "cnn_small.pt"
    torch.save({"model": create_model("cnn_small", 5, 1).state_dict()}, path)
    return {"teacher_weights": str(path), "teacher_sha256": sha256_of(path)}


@pytest.mark.parametrize("method, terms", [("l2sp", {"ce", "l2sp", "head"}),
                                           ("delta", {"ce", "delta", "head", "probe"})])
def test_l2sp_and_delta_fine_tune_a_student_of_another_task(half_teacher, method, terms):
    overrides = {**STARTED, "train.recipe": "finetune-digits", "train.epochs": 2}
    base = with_recipe({"method": method, **FINE_TUNING, "student": "cnn_small"}, "digits", overrides)
    config = build_config(base, overrides).model_copy(update=half_teacher)
    reporter = LocalReporter()
    final = train_trial(config, reporter)
    assert final["epoch"] == 2 and 0.0 <= final["test_acc"] <= 1.0
    logged = {k.removeprefix("loss/") for m in reporter.history for k in m if k.startswith("loss/")}
    assert logged == terms  # delta: the probe's stage, then fine-tuning
    assert all(math.isfinite(m["train_loss"]) for m in reporter.history)
