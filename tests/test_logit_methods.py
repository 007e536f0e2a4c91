"""The logit methods dist, nkd, wttm against their definitions (docs/methods.md), computed by
hand on small tensors; kd and dkd through their hooks; the logit plug-ins +ls and +ctkd."""

import math

import pytest
import torch

from pcbench.errors import UserError
from pcbench.methods import DataInfo, Step, get_method
from pcbench.methods.base import kd_loss
from pcbench.methods.dist import dist_terms
from pcbench.methods.dkd import dkd_terms
from pcbench.methods.nkd import nkd_terms
from pcbench.methods.wttm import wttm_loss
from pcbench.models import ModelInfo

Z_S = [[2.0, 1.0, 0.0], [0.5, -1.0, 1.5], [0.0, 0.3, -0.7]]
Z_T = [[1.0, 3.0, 0.5], [2.0, 0.0, -1.0], [-0.5, 1.5, 0.2]]
Y = [0, 2, 1]


def _softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)))


def _method(name: str, classes: int = 3, epochs: int = 20, **knobs):
    info = ModelInfo("m", {"logits": (classes,)}, ("stage1",))
    cls = get_method(name)
    return cls(cls.Config(**knobs), info, info, DataInfo(classes, 100, epochs=epochs))


def _step(z_s, z_t, y, epoch: int = 0) -> Step:
    return Step(None, torch.tensor(y), None, epoch, {"logits": z_s}, {"logits": z_t}, None, None)


def test_dist_is_one_minus_the_pearson_correlation_over_classes_and_over_the_batch():
    t = 2.0
    p_s = [_softmax(row, t) for row in Z_S]
    p_t = [_softmax(row, t) for row in Z_T]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(p_s, p_t)) / 3  # each sample over its classes
    columns = lambda p: [[row[c] for row in p] for c in range(3)]  # noqa: E731
    intra = 1 - sum(_pearson(a, b) for a, b in zip(columns(p_s), columns(p_t))) / 3  # each class
    got = dist_terms(torch.tensor(Z_S), torch.tensor(Z_T), t)
    assert [g.item() for g in got] == [pytest.approx(t * t * inter, rel=1e-5),
                                       pytest.approx(t * t * intra, rel=1e-5)]
    # the method: weight 2 x (beta 1 x inter, gamma 1 x intra) at T 4 by default
    dist = _method("dist", beta=0.5)
    terms = dist.transfer(_step(torch.tensor(Z_S), torch.tensor(Z_T), Y))
    inter4, intra4 = dist_terms(torch.tensor(Z_S), torch.tensor(Z_T), 4.0)
    assert terms["inter"].item() == pytest.approx(2 * 0.5 * inter4.item())
    assert terms["intra"].item() == pytest.approx(2 * 1.0 * intra4.item())


def test_dist_matches_relations_not_values():
    # identical predictions: both correlations 1, both terms 0
    z = torch.tensor(Z_T)
    assert [v.item() for v in dist_terms(z, z, 4.0)] == [pytest.approx(0.0, abs=1e-4)] * 2
    # correlations, not distances: a student whose predictions are an affine map of the
    # teacher's (per sample) has no inter-class loss, though its KL is not zero
    p_t = torch.softmax(z / 4.0, 1)
    p_s = 0.5 * p_t + 0.5 / 3  # still a distribution; z^S = log p_s * T
    inter, _ = dist_terms(4.0 * p_s.log(), z, 4.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-4) and kd_loss(4.0 * p_s.log(), z, 4.0) > 0.01


def test_nkd_target_term_at_t1_unweighted_and_non_target_term_a_cross_entropy():
    t, gamma = 3.0, 3.5
    target, non_target = 0.0, 0.0
    for z_s, z_t, y in zip(Z_S, Z_T, Y):
        target += -_softmax(z_t)[y] * math.log(_softmax(z_s)[y]) / 3
        o_s = [v for c, v in enumerate(z_s) if c != y]
        o_t = [v for c, v in enumerate(z_t) if c != y]
        q_s, q_t = _softmax(o_s, t), _softmax(o_t, t)
        non_target += -t * t * sum(a * math.log(b) for a, b in zip(q_t, q_s)) / 3
    got_target, got_non = nkd_terms(torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y), t)
    assert got_target.item() == pytest.approx(target, rel=1e-6)
    assert got_non.item() == pytest.approx(non_target, rel=1e-6)
    terms = _method("nkd").transfer(_step(torch.tensor(Z_S), torch.tensor(Z_T), Y))
    assert terms["target"].item() == pytest.approx(target, rel=1e-6)  # not weighted by gamma
    assert terms["non_target"].item() == pytest.approx(gamma * non_target, rel=1e-6)


def test_nkd_non_target_term_is_kl_plus_the_teachers_entropy():
    # a cross-entropy, not a KL: at the teacher's own logits it is the teacher's entropy, not 0
    z = torch.tensor(Z_T)
    _, non_target = nkd_terms(z, z, torch.tensor(Y), 1.0)
    entropy = 0.0
    for z_t, y in zip(Z_T, Y):
        q = _softmax([v for c, v in enumerate(z_t) if c != y])
        entropy += -sum(p * math.log(p) for p in q) / 3
    assert non_target.item() == pytest.approx(entropy, rel=1e-6)


def test_wttm_matches_the_power_transformed_teacher_weighted_by_its_power_sum():
    t = 2.5
    expected = 0.0
    for z_s, z_t in zip(Z_S, Z_T):
        powered = [p ** (1 / t) for p in _softmax(z_t)]  # gamma = 1/T, on the teacher only
        u = sum(powered)
        q = [p / u for p in powered]
        p_s = _softmax(z_s)  # the student at T 1
        expected += u * sum(a * math.log(a / b) for a, b in zip(q, p_s)) / 3
    assert wttm_loss(torch.tensor(Z_S), torch.tensor(Z_T), t).item() == pytest.approx(expected, rel=1e-5)
    terms = _method("wttm", temperature=t).transfer(_step(torch.tensor(Z_S), torch.tensor(Z_T), Y))
    assert terms["wttm"].item() == pytest.approx(4.0 * expected, rel=1e-5)


def test_wttm_at_t1_is_kl_without_t_squared():
    z_s, z_t = torch.tensor(Z_S), torch.tensor(Z_T)
    assert wttm_loss(z_s, z_t, 1.0).item() == pytest.approx(kd_loss(z_s, z_t, 1.0).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dist", "nkd", "wttm"])
def test_a_logit_method_takes_no_added_kd_term(name):
    cls = get_method(name)
    assert cls.reads_teacher_logits and cls.logit_hooks and not cls.takes_kd
    with pytest.raises(UserError, match=f"{name}\\+kd: {name} is itself KD on the logits"):
        get_method(f"{name}+kd")


def test_kd_and_dkd_read_their_logits_and_temperature_through_the_hooks_unchanged():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(4, 5), torch.randn(4, 5), [0, 1, 2, 3]
    step = _step(z_s, z_t, y)
    kd = _method("kd", classes=5)
    assert torch.equal(kd.transfer(step)["kd"], 0.9 * kd_loss(z_s, z_t, 4.0))  # bit-identical
    dkd = _method("dkd", classes=5, epochs=240)
    tckd, nckd = dkd_terms(z_s, z_t, torch.tensor(y), 4.0)
    terms = dkd.transfer(_step(z_s, z_t, y, epoch=30))  # past the warm-up
    assert torch.equal(terms["tckd"], 1.0 * tckd) and torch.equal(terms["nckd"], 8.0 * nckd)
