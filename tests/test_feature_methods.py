"""ReviewKD and OFD on small hand-made tensors and the digits CNNs, against their papers' and
reference code's definitions (docs/methods.md)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pcbench.methods import DataInfo, get_method
from pcbench.methods.base import Step
from pcbench.methods.ofd import PreActivations, margins_from_batchnorm, partial_l2
from pcbench.methods.reviewkd import AttentionFusion, hierarchical_context_loss
from pcbench.models import ModelInfo, Tapped, create_model, model_info, preact_batchnorms

DIGITS = (1, 8, 8)


def _pair(method: str, **knobs):
    """The digits pair, the method built on it, and one step's taps (teacher in eval mode)."""
    torch.manual_seed(0)
    teacher, student = create_model("cnn_large", 10, 1), create_model("cnn_small", 10, 1)
    teacher.eval().requires_grad_(False)
    cls = get_method(method)
    config = cls.resolved(cls.Config(**knobs), list(student.stage_taps))
    built = cls(config, model_info(student, DIGITS, "cnn_small"), model_info(teacher, DIGITS, "cnn_large"),
                DataInfo(10, 100, epochs=24))
    taps = cls.taps(config, student.stage_taps)
    x = torch.randn(6, *DIGITS)
    with torch.no_grad():
        t_feats = Tapped(teacher, taps).eval()(x)
    s_feats = Tapped(student, taps).train()(x)
    return teacher, student, built, x, s_feats, t_feats


def _step(x, s_feats, t_feats, student, teacher, epoch=0):
    return Step(x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)), epoch, s_feats, t_feats,
                student, teacher)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ---------------------------------------------------------------------------------------- OFD

def test_ofd_margin_is_the_mean_of_the_negative_part_of_the_teachers_gaussian():
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 1.0]))  # |gamma| is the std
        bn.bias.copy_(torch.tensor([0.0, 1.0, -0.3, 4.0]))  # beta the mean
    got = margins_from_batchnorm(bn).tolist()
    # E[x | x < 0] for x ~ N(0, 1): -sqrt(2 / pi)
    assert got[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    # by numerical integration of x * density over x < 0, for N(1, 2^2) and N(-0.3, 0.5^2)
    for k, (mean, std) in ((1, (1.0, 2.0)), (2, (-0.3, 0.5))):
        xs = torch.linspace(mean - 12 * std, 0.0, 200_001, dtype=torch.float64)
        density = torch.exp(-((xs - mean) / std) ** 2 / 2) / (std * math.sqrt(2 * math.pi))
        expected = torch.trapezoid(xs * density, xs).item() / _phi(-mean / std)
        assert got[k] == pytest.approx(expected, rel=1e-5)
    # P(x < 0) = Phi(-4) < 0.001: the reference's -3 std
    assert got[3] == pytest.approx(-3.0)


def test_ofd_partial_l2_skips_a_student_below_a_non_positive_teacher():
    m = torch.tensor([-0.5])[:, None, None]  # one channel
    # (teacher, student): teacher > 0 always counts; m < t <= 0 counts when s > t; t <= m
    # becomes m and counts when s > m
    cases = [(1.0, 0.2), (1.0, 2.0), (-0.2, -0.5), (-0.2, 0.3), (-1.0, -0.7), (-1.0, 0.0)]
    t = torch.tensor([[c[0] for c in cases], [0.0] * 6]).view(2, 1, 1, 6)
    s = torch.tensor([[c[1] for c in cases], [0.0] * 6]).view(2, 1, 1, 6)

    def by_definition(tv, sv):  # d_p(T, S) with T = max(t, m): 0 where S <= T <= 0
        target = max(tv, -0.5)
        return 0.0 if sv <= target <= 0 else (target - sv) ** 2

    expected = sum(by_definition(a, b) for a, b in cases) / 2  # the second sample adds 0
    assert expected == pytest.approx((0.64 + 1.0 + 0.25 + 0.25) / 2)
    assert partial_l2(s, t, m).item() == pytest.approx(expected, rel=1e-6)


def test_ofd_margins_come_from_the_batchnorm_before_each_stages_relu_as_the_reference():
    """mdistiller's get_bn_before_relu, model by model."""
    with torch.device("meta"):
        bns = {name: preact_batchnorms(create_model(name))
               for name in ("resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2")}
    # resnet8: the blocks' own second BN (stage 2's block also has a BN in its shortcut)
    assert bns["resnet8"] == {f"stage{i}": (f"layer{i}.0.bn2", False) for i in (1, 2, 3)}
    # WRN: the BN that next normalises the stage, applied by the method
    assert bns["wrn_16_2"] == {"stage1": ("block2.layer.0.bn1", True), "stage2": ("block3.layer.0.bn1", True),
                               "stage3": ("bn1", True)}
    assert bns["vgg8"] == {f"stage{i}": (f"block{i}.1", False) for i in (1, 2, 3, 4)}
    # MobileNetV2: the last block's projection BN (not the residual's input)
    assert bns["MobileNetV2"] == {f"stage{i}": (f"blocks.{b}.conv.7", False)
                                  for i, b in ((1, "1.1"), (2, "2.2"), (3, "4.2"), (4, "6.0"))}
    assert bns["ShuffleV2"] == {}  # no closing ReLU, no pre-activation


def test_wrn_pre_activations_pass_the_next_batchnorm_without_moving_its_statistics():
    torch.manual_seed(0)
    model = create_model("wrn_16_1", 10, 3)
    taps = {"stage1/preact", "stage3/preact"}
    x = torch.randn(4, 3, 32, 32)
    for training in (False, True):
        model.train(training)
        feats = Tapped(model, taps).train(training)(x)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        got = PreActivations()(feats, model, ["stage1", "stage3"])
        h1 = model.block1(model.conv1(x))
        h3 = model.block3(model.block2(h1))
        assert torch.allclose(got[0], model.block2.layer[0].bn1(h1), atol=1e-5)
        assert torch.allclose(got[1], model.bn1(h3), atol=1e-5)
        if training:  # the module calls above moved them; compare with the first call's state
            model.load_state_dict(before)
            PreActivations()(feats, model, ["stage1", "stage3"])
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ofd_loss_on_the_digits_pair_by_hand():
    teacher, student, ofd, x, s_feats, t_feats = _pair("ofd")
    terms = ofd.transfer(_step(x, s_feats, t_feats, student, teacher))
    expected = 0.0
    for i, weight in ((0, 0.25), (1, 0.5), (2, 1.0)):  # 2^(i - n + 1)
        stage_t = teacher.stages[i][1]  # conv-bn-relu: the pre-activation is the BN's output
        bn = stage_t[1]
        std, mean = bn.weight.abs().double(), bn.bias.double()
        margin = torch.tensor([mean[c].item() - std[c].item() * math.exp(-(mean[c] / std[c]).item() ** 2 / 2)
                               / math.sqrt(2 * math.pi) / _phi((-mean[c] / std[c]).item())
                               if _phi((-mean[c] / std[c]).item()) > 1e-3 else -3 * std[c].item()
                               for c in range(len(bn.weight))]).float()[:, None, None]
        h_t = t_feats[f"stage{i + 1}/preact"]
        with torch.no_grad():  # the same tap computed through the teacher's modules
            h = teacher.stem(x)
            for stage in teacher.stages[:i]:
                h = stage(h)
            assert torch.allclose(bn(stage_t[0](teacher.stages[i][0](h))), h_t, atol=1e-5)
        s = ofd.connectors[i](s_feats[f"stage{i + 1}/preact"])
        target = torch.maximum(h_t, margin)
        expected += weight * (((s - target) ** 2) * ((s > target) | (target > 0))).sum() / len(x)
    assert terms["ofd"].item() == pytest.approx(1e-3 * expected.item(), rel=1e-5)
    terms["ofd"].backward()
    assert student.stages[0][0][0].weight.grad.abs().sum() > 0
    assert all(c[0].weight.grad is not None for c in ofd.connectors)
    assert all(p.grad is None for p in teacher.parameters())


def test_ofd_teacher_mode_is_a_knob_that_cohorts_share():
    ofd = get_method("ofd")
    assert not ofd.teacher_in_train_mode(ofd.Config())  # eval, as every method (see the report)
    assert ofd.teacher_in_train_mode(ofd.Config(teacher_train_mode=True))
    assert "teacher_train_mode" in ofd.cohort_shared_knobs


@pytest.mark.parametrize("teacher, student, message", [
    ("resnet32x4", "ShuffleV2", "ShuffleV2 cannot give at stage1, stage2, stage3"),
    ("resnet34", "resnet18", "resnet18 cannot give"),  # torchvision's in-place ReLU
])
def test_ofd_refuses_pairs_without_pre_activations(teacher, student, message):
    stages = lambda n: tuple(f"stage{i + 1}" for i in range(n))  # noqa: E731
    count = {"resnet34": 4, "resnet18": 4}
    s, t = (ModelInfo(m, {}, stages(count.get(m, 3))) for m in (student, teacher))
    with pytest.raises(ValueError, match=message):
        get_method("ofd").check_pair(get_method("ofd").Config(), s, t)


# ----------------------------------------------------------------------------------- ReviewKD

def _pool(f: torch.Tensor, size: int) -> torch.Tensor:
    """Average over equal blocks, written out (the maps here divide evenly)."""
    b, c, h, w = f.shape
    return f.view(b, c, size, h // size, size, w // size).mean((3, 5))


def test_hcl_weighs_full_size_and_pooled_levels_smaller_than_the_map():
    torch.manual_seed(0)
    s8, t8 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    s4, t4 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s1, t1 = torch.randn(2, 5, 1, 1), torch.randn(2, 5, 1, 1)
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    level8 = (mse(s8, t8) + mse(_pool(s8, 4), _pool(t8, 4)) / 2 + mse(_pool(s8, 2), _pool(t8, 2)) / 4
              + mse(_pool(s8, 1), _pool(t8, 1)) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    # 4x4: the 4x4 pooling is skipped (not smaller), so 2x2 weighs 1/2 and 1x1 1/4
    level4 = (mse(s4, t4) + mse(_pool(s4, 2), _pool(t4, 2)) / 2 + mse(_pool(s4, 1), _pool(t4, 1)) / 4) / 1.75
    level1 = mse(s1, t1)  # the pooled feature: no pyramid
    got = hierarchical_context_loss([s8, s4, s1], [t8, t4, t1])
    assert got.item() == pytest.approx((level8 + level4 + level1).item(), rel=1e-5)


def test_attention_fusion_blends_a_level_with_the_deeper_one_by_hand():
    torch.manual_seed(0)
    abf = AttentionFusion(c_in=3, c_mid=4, c_out=6, fuse=True).eval()
    for bn in (abf.reduce[1], abf.project[1]):  # non-trivial running statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x, deeper = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out, fused = abf(x, deeper, (8, 8))

    def bn(module, h):
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return (h - module.running_mean[:, None, None]) * scale[:, None, None] + module.bias[:, None, None]

    reduced = bn(abf.reduce[1], torch.einsum("oc,bchw->bohw", abf.reduce[0].weight[:, :, 0, 0], x))
    up = deeper.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest, to 4x4
    conv = abf.attention[0]
    logits = (torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], torch.cat([reduced, up], 1))
              + conv.bias[:, None, None])
    a = torch.sigmoid(logits)
    blended = reduced * a[:, :1] + up * a[:, 1:]
    resized = blended.repeat_interleave(2, 2).repeat_interleave(2, 3)  # to the teacher's 8x8
    assert torch.allclose(fused, resized, atol=1e-6)
    projected = bn(abf.project[1], F.conv2d(resized, abf.project[0].weight, padding=1))
    assert torch.allclose(out, projected, atol=1e-5)


def test_reviewkd_fusion_width_is_the_students_pooled_width_capped_at_512():
    def info(pooled: int) -> ModelInfo:
        return ModelInfo("m", {"stage1": (16, 8, 8), "stage2": (32, 4, 4), "embedding": (pooled,)},
                         ("stage1", "stage2"))

    reviewkd = get_method("reviewkd")
    for pooled, width in ((64, 64), (512, 512), (1280, 512)):
        config = reviewkd.Config(taps=["stage1", "stage2"])
        built = reviewkd(config, info(pooled), info(256), DataInfo(10, 100, 24))
        assert [f.reduce[0].out_channels for f in built.fusions] == [width] * 3
        assert [f.attention is None for f in built.fusions] == [True, False, False]  # the pooled level first
        assert [f.project[0].out_channels for f in built.fusions] == [256, 32, 16]  # the teacher's channels


def test_reviewkd_loss_on_the_digits_pair_by_hand():
    teacher, student, reviewkd, x, s_feats, t_feats = _pair("reviewkd")
    # the teacher's levels: its stages before the ReLU (the BN's output), then the pooled feature
    with torch.no_grad():
        h, t_levels = teacher.stem(x), []
        for stage in teacher.stages:
            pre = stage[1][1](stage[1][0](stage[0](h)))
            t_levels.append(pre)
            h = stage(h)
        t_levels.append(teacher.pool(h)[:, :, None, None])
    for a, b in zip(t_levels, [t_feats["stage1/preact"], t_feats["stage2/preact"], t_feats["stage3/preact"]]):
        assert torch.allclose(a, b, atol=1e-5)
    # the student's levels after the ReLU, fused from the deepest (the pooled feature) down
    s_levels = [*(s_feats[f"stage{i}"] for i in (1, 2, 3)), s_feats["embedding"][:, :, None, None]]
    outs, fused = [], None
    for fusion, s, t in zip(reviewkd.fusions, s_levels[::-1], t_levels[::-1]):
        out, fused = fusion(s, fused, tuple(t.shape[-2:]))
        assert out.shape == t.shape
        outs.insert(0, out)
    hcl = hierarchical_context_loss(outs, t_levels)
    # warm-up: 20 of 240 epochs is 2 of 24; epochs counted from 1, so epoch 0 weighs 1/2
    for epoch, ramp in ((0, 0.5), (1, 1.0), (5, 1.0)):
        terms = reviewkd.transfer(_step(x, s_feats, t_feats, student, teacher, epoch))
        assert terms["reviewkd"].item() == pytest.approx(5.0 * ramp * hcl.item(), rel=1e-5)
    terms["reviewkd"].backward()
    assert student.stages[0][0][0].weight.grad.abs().sum() > 0  # the shallowest level reaches the student
    assert all(p.grad is not None for f in reviewkd.fusions for p in f.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_reviewkd_refuses_a_teacher_without_pre_activations_and_names_the_knob():
    reviewkd = get_method("reviewkd")
    stages = ("stage1", "stage2", "stage3", "stage4")
    r34, r18 = ModelInfo("resnet34", {}, stages), ModelInfo("resnet18", {}, stages)
    with pytest.raises(ValueError, match=r"resnet18 cannot give .*set reviewkd\.teacher_preact=false"):
        reviewkd.check_pair(reviewkd.Config(), r18, r34)
    reviewkd.check_pair(reviewkd.Config(teacher_preact=False), r18, r34)  # stage outputs after the ReLU
    assert reviewkd.taps(reviewkd.Config(teacher_preact=False), stages) == {*stages, "embedding"}
