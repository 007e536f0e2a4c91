"""AB, FT and FSP: RepDistiller's two-stage baselines. Each loss against the reference code's
formula, the pre-activation taps AB reads, and the initialisation stage inside the trial."""

import os

import pytest
import torch
import torch.nn.functional as F

from pcbench.config import build_config
from pcbench.engine import MODEL_FILE, LocalReporter, train_trial
from pcbench.errors import UserError
from pcbench.methods import DataInfo, get_method
from pcbench.methods.ab import boundary_loss
from pcbench.methods.base import Step
from pcbench.methods.fsp import fsp_matrices
from pcbench.models import (
    PREACT,
    ModelInfo,
    Tapped,
    create_model,
    model_info,
    preact_nodes,
    preact_stages,
    shapes_of,
)
from pcbench.teachers import attach


def _step(student_feats, teacher_feats, epoch, batch=2):
    return Step(torch.zeros(batch, 1), torch.zeros(batch, dtype=torch.long), None, epoch, student_feats,
                teacher_feats, None, None)


def test_ab_pushes_each_pre_activation_past_the_margin_to_the_teachers_side():
    s = torch.tensor([0.5, -2.0, 0.3, 3.0, -0.5])
    t = torch.tensor([-1.0, -1.0, 2.0, 2.0, 0.0])  # off, off, on, on, off (t <= 0 is off)
    # margin 1: 0.5 on an off neuron, (0.5 + 1)^2; -2 is past -1; 0.3 on an on neuron,
    # (0.3 - 1)^2; 3 is past 1; -0.5 off, (-0.5 + 1)^2
    assert boundary_loss(s, t, 1.0).item() == pytest.approx(1.5 ** 2 + 0.7 ** 2 + 0.5 ** 2)
    assert boundary_loss(s, t, 0.25).item() == pytest.approx(0.75 ** 2)  # only 0.5 is on the wrong side


def test_ab_weights_stages_by_depth_and_trains_only_in_its_first_stage():
    shapes = {"stage1": (2, 2, 2), "stage2": (3, 1, 1), "logits": (4,)}
    stages = ("stage1", "stage2")
    student = ModelInfo("s", {**shapes, "stage2": (5, 1, 1)}, stages)
    teacher = ModelInfo("t", shapes, stages)
    ab = get_method("ab")(get_method("ab").Config(init_share=0.5), student, teacher,
                          DataInfo(4, 10, epochs=4))
    assert ab.init_epochs == 2
    assert isinstance(ab.connectors["stage1"], torch.nn.Identity)  # shapes agree: no connector
    s = {"stage1" + PREACT: torch.randn(2, 2, 2, 2), "stage2" + PREACT: torch.randn(2, 5, 1, 1),
         "logits": torch.randn(2, 4, requires_grad=True)}
    t = {"stage1" + PREACT: torch.randn(2, 2, 2, 2), "stage2" + PREACT: torch.randn(2, 3, 1, 1),
         "logits": torch.randn(2, 4)}
    terms = ab(_step(s, t, epoch=1))
    connected = ab.connectors["stage2"](s["stage2" + PREACT])
    expected = (0.5 * boundary_loss(s["stage1" + PREACT], t["stage1" + PREACT], 1.0)  # 2^(i - n + 1)
                + boundary_loss(connected, t["stage2" + PREACT], 1.0)) / 2 * 3 / 1000  # / B * 3 / 1000
    assert list(terms) == ["ab"] and terms["ab"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert list(ab(_step(s, t, epoch=2))) == ["ce"]  # then the label term alone, as RepDistiller
    assert ab.reads_teacher(1) and not ab.reads_teacher(2)  # so no teacher forward from then on
    with_kd = get_method("ab+kd")(get_method("ab+kd").Config(init_share=0.5), student, teacher,
                                  DataInfo(4, 10, epochs=4))
    assert with_kd.reads_teacher(3)


@pytest.mark.parametrize("name", ["resnet8", "vgg8", "cnn_small", "ShuffleV1"])
def test_a_pre_activation_tap_is_the_stage_before_its_closing_relu(name):
    digits = name.startswith("cnn")
    model = create_model(name, num_classes=10, in_channels=1 if digits else 3).eval()
    stages = model.stage_taps
    shape = (1, 8, 8) if digits else (3, 32, 32)
    out = Tapped(model, {*stages, *(s + PREACT for s in stages)})(torch.randn(2, *shape))
    for stage in stages:
        assert torch.equal(out[stage + PREACT].relu(), out[stage])
        assert (out[stage + PREACT] < 0).any()  # really before the ReLU
    assert preact_stages(name) == tuple(stages)


def test_pre_activation_stages_are_their_own_pre_activation_and_no_relu_or_an_in_place_one_is_refused():
    wrn = create_model("wrn_16_2", num_classes=10)
    assert preact_nodes(wrn) == {s: wrn.TAP_NODES[s] for s in wrn.stage_taps}
    out = Tapped(wrn, {"stage1", "stage1" + PREACT})(torch.randn(2, 3, 32, 32))
    assert out["stage1" + PREACT] is out["stage1"]
    assert preact_nodes(create_model("ShuffleV2", num_classes=10)) == {}  # a shuffle of ReLU outputs
    resnet18 = create_model("resnet18", num_classes=10)  # torchvision's: in-place ReLUs
    assert preact_nodes(resnet18) == {}
    with pytest.raises(ValueError, match="an in-place one, closes it"):
        Tapped(resnet18, {"stage1" + PREACT})
    with pytest.raises(ValueError, match="ab reads pre-activations"):
        info = model_info(resnet18.eval(), (3, 64, 64), "resnet18")
        get_method("ab").check_pair(get_method("ab").Config(), info, info)


def _reference_fsp(g):
    """RepDistiller's FSP.compute_fsp, as written there."""
    out = []
    for bot, top in zip(g, g[1:]):
        if bot.shape[2] > top.shape[2]:
            bot = F.adaptive_avg_pool2d(bot, (top.shape[2], top.shape[2]))
        elif bot.shape[2] < top.shape[2]:
            top = F.adaptive_avg_pool2d(top, (bot.shape[2], bot.shape[2]))
        bot, top = bot.unsqueeze(1), top.unsqueeze(2)
        bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
        top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
        out.append((bot * top).mean(-1))
    return out


def test_fsp_matrices_are_repdistillers_and_the_pair_must_match_channels():
    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)]
    for ours, theirs in zip(fsp_matrices(maps), _reference_fsp(maps)):
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-6)
    assert fsp_matrices(maps)[1].shape == (2, 5, 3)  # C_top x C_bottom
    fsp = get_method("fsp")
    fsp.check_pair(fsp.Config(), shapes_of("resnet8x4", (3, 32, 32)), shapes_of("resnet32x4", (3, 32, 32)))
    with pytest.raises(ValueError, match="fsp matches the channels"):
        fsp.check_pair(fsp.Config(), shapes_of("cnn_small", (1, 8, 8)), shapes_of("cnn_large", (1, 8, 8)))


def test_ft_trains_the_paraphraser_first_then_the_translator_against_its_frozen_encoder():
    torch.manual_seed(0)
    shapes = {"stage1": (4, 4, 4), "stage2": (6, 2, 2), "logits": (3,)}
    student = ModelInfo("s", {**shapes, "stage2": (2, 2, 2)}, ("stage1", "stage2"))
    teacher = ModelInfo("t", shapes, ("stage1", "stage2"))
    ft = get_method("ft")(get_method("ft").Config(), student, teacher, DataInfo(3, 10, epochs=18))
    assert ft.init_epochs == 2 and ft.reads_teacher(17)  # 1/9 of the budget; then the factor term
    f_s = torch.rand(2, 2, 2, 2, requires_grad=True)
    f_t = torch.rand(2, 6, 2, 2)
    feats_t = {"stage2": f_t, "logits": torch.randn(2, 3)}
    init = ft(_step({"stage2": f_s, "logits": torch.randn(2, 3)}, feats_t, epoch=0))
    assert list(init) == ["paraphraser"]
    assert init["paraphraser"].item() == pytest.approx(
        F.mse_loss(ft.paraphraser_decoder(ft.paraphraser_encoder(f_t)), f_t).item())
    terms = ft(_step({"stage2": f_s, "logits": torch.randn(2, 3, requires_grad=True)}, feats_t, epoch=2))
    factor = lambda f: F.normalize(f.pow(2).mean(1).view(f.size(0), -1))  # noqa: E731 (RepDistiller's)
    expected = 200 * (factor(ft.translator(f_s)) - factor(ft.paraphraser_encoder(f_t))).abs().mean()
    assert set(terms) == {"ce", "ft"} and terms["ft"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["ft"].backward()
    assert all(p.grad is None for p in ft.paraphraser_encoder.parameters())  # frozen
    assert all(p.grad is not None for p in ft.translator.parameters())
    assert ft.paraphraser_encoder[2].out_channels == 3  # k = 0.5 of the teacher's channels


def test_the_first_stage_leaves_the_classifier_alone_and_runs_inside_the_trials_epochs(teacher_store):
    record = teacher_store.get("cnn_large", "digits")
    config = attach(build_config({"method": "ab"}, {"train.epochs": 3, "method.init_share": 0.34}), record)
    heads = []

    class Keep:  # what each epoch's checkpoint holds
        def report(self, metrics, checkpoint_dir):
            self.last = metrics
            if checkpoint_dir:
                state = torch.load(os.path.join(checkpoint_dir, MODEL_FILE))["model"]
                heads.append(state["fc.weight"].clone())

        def latest_checkpoint(self):
            return None

    torch.manual_seed(config.seed)
    initial = create_model(config.student, 10, 1).fc.weight.detach().clone()
    reporter = Keep()
    train_trial(config, reporter)
    assert torch.equal(heads[0], initial)  # no gradient, so neither step nor weight decay
    assert not torch.equal(heads[1], initial)
    assert reporter.last["epoch"] == 3 and reporter.last["val_acc"] > 0.2  # chance: 0.1
    # measured at the stages it reads (after their ReLU, as every method's) and the embedding
    assert {k for k in reporter.last if k.startswith("cka/")} == {"cka/stage1", "cka/stage2", "cka/stage3",
                                                                  "cka/embedding"}


def test_a_trial_resumed_across_the_stage_boundary_ends_as_it_would_have(teacher_store, tmp_path):
    config = attach(build_config({"method": "ft"}, {"train.epochs": 3, "method.init_share": 0.34,
                                                    "method.weight": 5.0}),
                    teacher_store.get("cnn_large", "digits"))
    straight = train_trial(config, LocalReporter())

    class LostAfterTheFirstStage(LocalReporter):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 1:
                raise KeyboardInterrupt  # the driver is lost; the checkpoint of epoch 1 is kept

    with pytest.raises(KeyboardInterrupt):
        train_trial(config, LostAfterTheFirstStage(str(tmp_path)))
    resumed = train_trial(config, LocalReporter(str(tmp_path)))  # momentum cleared at epoch 1 alike
    for key in ("train_loss", "val_acc", "test_acc", "loss/ft"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6, abs=1e-9), key


def test_an_initialisation_stage_needs_two_epochs():
    with pytest.raises(UserError, match="ab trains an initialisation stage before distilling"):
        build_config({"method": "ab"}, {"train.epochs": 1})
    with pytest.raises(UserError, match="init_share"):
        build_config({"method": "ab"}, {"method.init_share": 0})
