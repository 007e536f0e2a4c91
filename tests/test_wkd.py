"""WKD (Lv et al., NeurIPS 2024): wkd_l's Sinkhorn distance, class cost and target term, and
wkd_f's Gaussian Wasserstein distance, each against its definition on small tensors."""

import math

import ot
import pytest
import torch
import torch.nn.functional as F

from pcbench.methods import DataInfo
from pcbench.methods.base import Step
from pcbench.methods.nkd import target_term
from pcbench.methods.wkd_f import WKDFeature, gaussian_wasserstein
from pcbench.methods.wkd_l import (
    WKDLogit,
    classifier_distance,
    cosine_decay,
    linear_cka_distance,
    sharpened,
    sinkhorn_plan,
    teacher_rows,
    wkd_logit_loss,
)
from pcbench.models import Tapped, create_model, model_info, shapes_of


def _authors_sinkhorn(a, b, cost, reg=0.05, iterations=10):
    """WKD.py's sinkhorn: plain scalings, 1e-8 added to each division."""
    kernel = torch.exp(-cost / reg)
    u = torch.full_like(a, 1 / a.shape[1])[:, :, None]
    for _ in range(iterations):
        v = b[:, :, None] / (kernel.transpose(2, 1) @ u + 1e-8)
        u = a[:, :, None] / (kernel @ v + 1e-8)
    return u * kernel * v.transpose(2, 1)


def test_the_sinkhorn_plan_is_pots_after_as_many_iterations_and_near_the_authors():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 6, dtype=torch.float64), 1)
    b = torch.softmax(torch.randn(3, 6, dtype=torch.float64), 1)
    cost = torch.rand(3, 6, 6, dtype=torch.float64) * 0.6
    plans = sinkhorn_plan(a, b, cost, 0.05, 10)
    for i in range(3):  # POT's sinkhorn_knopp: the same start and order of updates
        expected = ot.sinkhorn(a[i], b[i], cost[i], 0.05, numItermax=10, stopThr=0.0, warn=False)
        assert torch.allclose(plans[i], expected, rtol=1e-9, atol=1e-15)
    assert torch.allclose(plans, _authors_sinkhorn(a, b, cost), rtol=1e-4, atol=1e-9)
    converged = (sinkhorn_plan(a, b, cost, 0.05, 2000) * cost).sum((1, 2))
    for i in range(3):
        assert converged[i].item() == pytest.approx(
            ot.sinkhorn2(a[i], b[i], cost[i], 0.05, numItermax=5000, stopThr=1e-12).item(), rel=1e-6)


def test_the_logit_distance_moves_the_non_target_classes_only():
    # three classes, target 0: the non-target distributions have two bins, so the optimal
    # transport moves |p_1 - q_1| across the cost between classes 1 and 2 (entropy adds only
    # a cycle of mass ~exp(-2 * 0.4 / reg))
    z_s = torch.tensor([[5.0, 1.0, 0.0]], dtype=torch.float64)
    z_t = torch.tensor([[-3.0, 0.0, 1.0]], dtype=torch.float64)
    cost = torch.tensor([[0.0, 9.0, 9.0], [9.0, 0.0, 0.4], [9.0, 0.4, 0.0]], dtype=torch.float64)
    t = 2.0
    p1 = math.exp(1 / t) / (math.exp(1 / t) + 1)  # student's share of class 1 among {1, 2}
    q1 = 1 / (1 + math.exp(1 / t))
    value = wkd_logit_loss(z_s, z_t, torch.tensor([0]), cost, t, reg=0.02, iterations=5000)
    assert value.item() == pytest.approx(0.4 * abs(p1 - q1), rel=1e-6)
    same = wkd_logit_loss(z_s, z_s, torch.tensor([0]), cost, t, reg=0.02, iterations=5000)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_the_logit_distance_is_the_batch_mean_of_pots_plans_on_each_samples_other_classes():
    torch.manual_seed(1)
    z_s, z_t = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    y = torch.tensor([2, 0])
    r = torch.rand(4, 4, dtype=torch.float64)
    cost = sharpened((r + r.T).fill_diagonal_(0.0))
    expected = 0.0
    for i in range(2):
        rest = [c for c in range(4) if c != y[i]]
        m = cost[rest][:, rest]
        p, q = F.softmax(z_s[i, rest] / 8.0, 0), F.softmax(z_t[i, rest] / 8.0, 0)
        expected += (ot.sinkhorn(p, q, m, 0.05, numItermax=10, stopThr=0.0, warn=False) * m).sum().item() / 2
    assert wkd_logit_loss(z_s, z_t, y, cost, 8.0).item() == pytest.approx(expected, rel=1e-5)


def test_the_target_term_is_nkds():
    z_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    z_t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    first = -(math.exp(2) / (math.exp(2) + 2)) * (1 - math.log(math.e + 2))
    second = -(1 / 3) * math.log(1 / 3)
    assert target_term(z_s, z_t, torch.tensor([0, 1])).item() == pytest.approx((first + second) / 2, rel=1e-6)


def _authors_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """generate_cost_matrix.py's linear_CKA_precenter: rows paired by position."""
    x, y = x - x.mean(0), y - y.mean(0)
    norm = torch.linalg.norm
    return (norm(y.T @ x) ** 2 / (norm(x.T @ x) * norm(y.T @ y))).item()


def test_the_cka_distance_is_the_authors_on_each_classs_first_samples():
    torch.manual_seed(2)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 2])  # counts 3, 3, 4: each class keeps 3
    features = torch.randn(10, 4, 5, dtype=torch.float64)  # 4 positions x 5 channels each
    distance = linear_cka_distance(features, labels, 3)
    rows = [features[(labels == c).nonzero().squeeze(1)[:3]].reshape(12, 5) for c in range(3)]
    for i in range(3):
        for j in range(3):
            assert distance[i, j].item() == pytest.approx(1 - _authors_cka(rows[i], rows[j]), abs=1e-10)
    assert torch.allclose(distance.diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    scaled = features.clone()
    scaled[labels == 1] *= 7.0  # CKA ignores a class's scale
    assert torch.allclose(linear_cka_distance(scaled, labels, 3), distance, atol=1e-10)
    with pytest.raises(ValueError, match="no training sample"):
        linear_cka_distance(features, labels, 4)


def test_the_classifier_distance_is_one_minus_the_cosine_of_its_rows():
    model = create_model("cnn_small", 3, 1)
    weight = torch.zeros_like(model.fc.weight)
    weight[0, 0], weight[1, 0], weight[1, 1], weight[2, 1] = 1.0, 1.0, 1.0, -2.0
    model.fc.weight.data = weight
    r = 1 / math.sqrt(2)
    expected = 1 - torch.tensor([[1.0, r, 0.0], [r, 1.0, -r], [0.0, -r, 1.0]])
    assert torch.allclose(classifier_distance(model), expected, atol=1e-6)
    assert torch.allclose(sharpened(expected), 1 - torch.exp(-expected) + 1e-8, atol=1e-7)


def test_the_weight_decays_by_cosine_after_its_share_of_the_epochs():
    assert cosine_decay(149, 150 / 240, 240) == 1.0  # the authors' epoch 150
    assert cosine_decay(150, 150 / 240, 240) == pytest.approx(0.5 * (1 + math.cos(math.pi / 90)))
    assert cosine_decay(194, 150 / 240, 240) == pytest.approx(0.5)  # half way: their epoch 195
    assert cosine_decay(239, 150 / 240, 240) == pytest.approx(0.0, abs=1e-12)
    assert cosine_decay(36, 150 / 240, 60) == 1.0  # a 60-epoch trial decays after 37.5
    assert cosine_decay(37, 150 / 240, 60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5 / 22.5)))
    assert cosine_decay(59, 1.0, 60) == 1.0  # share 1: no decay
    assert cosine_decay(0, 0.0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)))  # ImageNet's


class _Data:
    """A DataSource of a few 8x8 one-channel images, in order."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def size(self, split):
        return len(self.x)

    def batches(self, split, batch_size, rank=0, world=1, shuffle_seed=None, augment=False):
        for start in range(0, len(self.x), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size], None


@pytest.fixture(scope="module")
def digits_pair():
    torch.manual_seed(3)
    teacher = create_model("cnn_large", 4, 1).requires_grad_(False)
    student = create_model("cnn_small", 4, 1)
    data = _Data(torch.randn(22, 1, 8, 8), torch.arange(22) % 4)
    return teacher, student, data, model_info(teacher, (1, 8, 8)), model_info(student, (1, 8, 8))


def _step(student, teacher, data, taps, epoch=0):
    x, y = data.x[:8], data.y[:8]
    t_feats = {k: v.detach() for k, v in Tapped(teacher, taps).eval()(x).items()}
    return Step(x, y, torch.arange(8), epoch, Tapped(student, taps)(x), t_feats, student, teacher)


def test_wkd_l_prepares_its_cost_from_the_teachers_last_stage_and_adds_the_target_term(digits_pair):
    teacher, student, data, t_info, s_info = digits_pair
    method = WKDLogit(WKDLogit.Config(), s_info, t_info, DataInfo(4, 22, 10))
    assert WKDLogit.takes_kd is False and WKDLogit.reads_teacher_logits
    with pytest.raises(RuntimeError, match="prepare"):
        method(_step(student, teacher, data, set()))
    method.prepare(teacher, data)
    rows, labels = teacher_rows(teacher, data, "stage3")  # 2x2 maps: 4 rows of 128 channels each
    assert rows.shape == (22, 4, 128)
    assert torch.allclose(method.class_cost, sharpened(linear_cka_distance(rows, labels, 4)))
    step = _step(student, teacher, data, set())
    terms = method(step)
    z_s, z_t = step.student_feats["logits"], step.teacher_feats["logits"]
    assert set(terms) == {"ce", "wkd_l", "target"}
    assert terms["wkd_l"].item() == pytest.approx(
        600.0 * wkd_logit_loss(z_s, z_t, step.y, method.class_cost, 8.0).item(), rel=1e-6)
    assert terms["target"].item() == pytest.approx(target_term(z_s, z_t, step.y).item())
    last = method(_step(student, teacher, data, set(), epoch=9))
    assert last["wkd_l"].item() == pytest.approx(0.0, abs=1e-9)  # decayed to 0 at the last epoch
    terms["wkd_l"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_wkd_l_can_take_its_cost_from_the_teachers_classifier_without_data(digits_pair):
    teacher, student, data, t_info, s_info = digits_pair
    method = WKDLogit(WKDLogit.Config(cost="classifier"), s_info, t_info, DataInfo(4, 22, 10))
    method(_step(student, teacher, data, set()))  # computed on the first step
    assert torch.allclose(method.class_cost, sharpened(classifier_distance(teacher)))


def test_gaussian_wasserstein_by_hand():
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # B=1, C=2, 2x2
    f_t = torch.zeros(1, 2, 2, 2)
    eps = 1e-5
    var = (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3  # unbiased, over H x W
    mean_term = 2.5**2 + 1.0**2
    std_term = (math.sqrt(var + eps) - math.sqrt(eps)) ** 2 + 0.0  # the second channel: constant
    expected = 4 * mean_term + std_term
    assert gaussian_wasserstein(f_s, f_t, eps, 4.0).item() == pytest.approx(expected, rel=1e-6)
    twice = torch.cat([f_s, f_s]), torch.cat([f_t, f_t])  # summed over channels, averaged over samples
    assert gaussian_wasserstein(*twice, eps, 4.0).item() == pytest.approx(expected, rel=1e-6)


def test_wkd_f_projects_the_student_and_weighs_the_distance(digits_pair):
    teacher, student, data, t_info, s_info = digits_pair
    method = WKDFeature(WKDFeature.Config(), s_info, t_info, DataInfo(4, 22, 10))
    assert method.config.tap == "stage3"
    assert isinstance(method.projector[-1], torch.nn.ReLU)  # the authors' ConvReg ends in ReLU
    step = _step(student, teacher, data, {"stage3"})
    terms = method(step)
    projected = method.projector(step.student_feats["stage3"])
    expected = gaussian_wasserstein(projected, step.teacher_feats["stage3"], 1e-5, 4.0)
    assert terms["wkd_f"].item() == pytest.approx(0.08 * expected.item(), rel=1e-5)


@pytest.mark.parametrize("teacher, student", [("cnn_large", "cnn_small"), ("resnet32x4", "resnet8x4"),
                                              ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"),
                                              ("vgg13", "vgg8"), ("resnet34", "resnet18")])
def test_wkd_f_projects_the_students_last_stage_to_the_teachers_on_every_pair(teacher, student):
    shape = {"cnn_large": (1, 8, 8), "resnet34": (3, 224, 224)}.get(teacher, (3, 32, 32))
    t_info, s_info = shapes_of(teacher, shape), shapes_of(student, shape)
    config = WKDFeature.Config()
    WKDFeature.check_pair(config, s_info, t_info)
    method = WKDFeature(config, s_info, t_info, DataInfo(10, 100, 10))
    tap = method.config.tap
    assert method.projector(torch.zeros(2, *s_info.tap_shapes[tap])).shape[1:] == t_info.tap_shapes[tap]


def test_wkd_f_refuses_a_vector_tap_and_a_single_position():
    t_info, s_info = shapes_of("cnn_large", (1, 8, 8)), shapes_of("cnn_small", (1, 8, 8))
    with pytest.raises(ValueError, match="vector"):
        WKDFeature.check_pair(WKDFeature.Config(tap="embedding"), s_info, t_info)
    t_info, s_info = shapes_of("cnn_large", (1, 4, 4)), shapes_of("cnn_small", (1, 4, 4))  # stage3 is 1x1
    with pytest.raises(ValueError, match="two positions"):
        WKDFeature.check_pair(WKDFeature.Config(), s_info, t_info)
