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


# The logit plug-ins: +ls (logit standardisation) and +ctkd (curriculum temperature)

def _z_scored(row: list[float]) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased
    return [(v - mean) / (std + 1e-7) for v in row]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_kd_with_ls_compares_z_scored_logits_at_ls_temperature_and_weight():
    kd_ls = _method("kd+ls")
    assert (kd_ls.config.temperature, kd_ls.config.w_kd, kd_ls.config.ls_weight, kd_ls.config.w_ce) == \
        (2.0, 0.9, 10.0, 0.1)  # LS's KD setting: T 2, KD weight 0.9 x 10 = 9, CE 0.1
    t = 2.0
    expected = sum(t * t * _kl(_softmax(_z_scored(zt), t), _softmax(_z_scored(zs), t))
                   for zs, zt in zip(Z_S, Z_T)) / 3
    z_s = torch.tensor(Z_S, requires_grad=True)
    terms = kd_ls(_step(z_s, torch.tensor(Z_T), Y))
    assert terms["kd"].item() == pytest.approx(9.0 * expected, rel=1e-5)
    # the label term keeps the raw logits
    ce = torch.nn.functional.cross_entropy(z_s, torch.tensor(Y))
    assert terms["ce"].item() == pytest.approx(0.1 * ce.item())


def test_ls_ignores_each_samples_shift_and_scale_of_the_logits():
    kd_ls, dkd_ls = _method("kd+ls"), _method("dkd+ls", epochs=240)
    z_s, z_t = torch.tensor(Z_S), torch.tensor(Z_T)
    moved = z_t * torch.tensor([[3.0], [0.5], [7.0]]) + torch.tensor([[1.0], [-2.0], [0.0]])
    for method in (kd_ls, dkd_ls):
        a, b = method.transfer(_step(z_s, z_t, Y, 30)), method.transfer(_step(z_s, moved, Y, 30))
        assert all(a[k].item() == pytest.approx(b[k].item(), rel=1e-4) for k in a), method.name


def test_dkd_with_ls_scales_both_parts_on_z_scored_logits():
    dkd_ls = _method("dkd+ls", epochs=240, ls_weight=9.0)
    z_s, z_t = torch.tensor(Z_S), torch.tensor(Z_T)
    terms = dkd_ls(_step(z_s, z_t, Y, epoch=30))
    standardised = [torch.tensor([_z_scored(r) for r in rows]) for rows in (Z_S, Z_T)]
    tckd, nckd = dkd_terms(*standardised, torch.tensor(Y), 2.0)
    assert terms["tckd"].item() == pytest.approx(9.0 * 1.0 * tckd.item(), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(9.0 * 8.0 * nckd.item(), rel=1e-5)


def _pc_pair():
    info = ModelInfo("m", {"embedding": (4,), "logits": (3,)}, ("stage1", "stage2"))
    torch.manual_seed(0)
    feats = {"embedding": torch.randn(3, 4), "logits": torch.tensor(Z_S)}
    t_feats = {"embedding": torch.randn(3, 4), "logits": torch.tensor(Z_T)}
    return info, Step(None, torch.tensor(Y), None, 0, feats, t_feats, None, None)


def test_a_kd_variant_with_ls_standardises_its_kd_term_only():
    info, step = _pc_pair()
    build = lambda name, **k: get_method(name)(get_method(name).Config(**k), info, info, DataInfo(3, 100, 20))  # noqa: E731
    plain, standardised = build("pc+kd", kd_temperature=2.0), build("pc+kd+ls")
    a, b = plain(step), standardised(step)
    assert standardised.config.kd_temperature == 2.0  # LS's base temperature, the KD term's
    assert torch.equal(a["pc"], b["pc"]) and torch.equal(a["ce"], b["ce"])
    z = [torch.tensor([_z_scored(r) for r in rows]) for rows in (Z_S, Z_T)]
    assert b["kd"].item() == pytest.approx(10.0 * 1.0 * kd_loss(*z, 2.0).item(), rel=1e-5)
    assert a["kd"].item() == pytest.approx(kd_loss(torch.tensor(Z_S), torch.tensor(Z_T), 2.0).item())


def test_ls_starts_the_kd_term_at_its_base_temperature_even_where_the_method_has_its_own():
    assert get_method("fcfd+kd").Config(temperature=8.0).kd_temperature == 8.0  # FCFD's rule
    assert get_method("fcfd+kd+ls").Config(temperature=8.0).kd_temperature == 2.0
    assert get_method("fcfd+kd+ls").Config(kd_temperature=3.0).kd_temperature == 3.0


def test_ctkd_temperature_starts_at_ctkds_and_its_reversal_follows_a_cosine_over_a_share():
    kd_ctkd = _method("kd+ctkd", epochs=240)
    assert dict(kd_ctkd.named_parameters()).keys() == {"curriculum.logit"}  # the optimizer steps it
    start = kd_ctkd.temperature(_step(torch.tensor(Z_S), torch.tensor(Z_T), Y))
    assert start.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # Global_T = 1
    from pcbench.methods.base import reversal_strength
    # CTKD's CosineDecay(0, -1, 10) at its epochs 1, 5, 10, 11 (counted from 1): pcbench's 0, 4, 9, 10
    for epoch, value in [(0, (1 - math.cos(math.pi / 10)) / 2), (4, 0.5), (9, 1.0), (10, 1.0)]:
        assert reversal_strength(epoch, 10 / 240, 240, 1.0) == pytest.approx(value)
    # a share of the trial's epochs: over 60 epochs, 10/240 is 2.5 epochs
    assert reversal_strength(0, 10 / 240, 60, 2.0) == pytest.approx(2.0 * (1 - math.cos(math.pi / 2.5)) / 2)


@pytest.mark.parametrize("epoch, strength", [(0, (1 - math.cos(math.pi / 10)) / 2), (4, 0.5), (20, 1.0)])
def test_ctkd_trains_its_temperature_up_the_loss_the_student_descends(epoch, strength):
    kd_ctkd = _method("kd+ctkd", epochs=240)
    step = _step(torch.tensor(Z_S), torch.tensor(Z_T), Y, epoch)
    kd_ctkd(step)["kd"].backward()
    # the same loss with a plain temperature parameter: its gradient, reversed and scaled
    p = torch.ones((), requires_grad=True)
    (0.9 * kd_loss(torch.tensor(Z_S), torch.tensor(Z_T), 1 + 20 * torch.sigmoid(p))).backward()
    assert kd_ctkd.curriculum.logit.grad.item() == pytest.approx(-strength * p.grad.item(), rel=1e-5)


def test_ctkd_replaces_the_temperature_every_logit_method_reads():
    z_s, z_t, y = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)
    cases = [("dkd+ctkd", lambda t: dkd_terms(z_s, z_t, y, t), lambda c: (c.alpha, c.beta)),
             ("dist+ctkd", lambda t: dist_terms(z_s, z_t, t),
              lambda c: (c.weight * c.beta, c.weight * c.gamma)),
             ("nkd+ctkd", lambda t: nkd_terms(z_s, z_t, y, t), lambda c: (1.0, c.gamma)),
             ("wttm+ctkd", lambda t: (wttm_loss(z_s, z_t, t),), lambda c: (c.weight,))]
    for name, expected, weights in cases:
        method = _method(name, epochs=240)
        t = method.temperature(_step(z_s, z_t, Y, 30)).item()
        terms = list(method.transfer(_step(z_s, z_t, Y, 30)).values())
        want = [w * v.item() for w, v in zip(weights(method.config), expected(t))]
        assert [v.item() for v in terms] == pytest.approx(want, rel=1e-4), name
    # the learnt temperature and LS compose: z-scored logits over the learnt T
    kd_both = _method("kd+ls+ctkd", epochs=240)
    t = kd_both.temperature(_step(z_s, z_t, Y)).item()
    z = [torch.tensor([_z_scored(r) for r in rows]) for rows in (Z_S, Z_T)]
    assert kd_both(_step(z_s, z_t, Y))["kd"].item() == pytest.approx(
        10.0 * 0.9 * kd_loss(*z, t).item(), rel=1e-4)


def test_the_learnt_temperature_lies_in_its_range_and_the_range_must_be_one():
    with pytest.raises(ValueError, match="ctkd_t_max .1.0. must be above ctkd_t_min .2.0."):
        get_method("kd+ctkd").Config(ctkd_t_min=2.0, ctkd_t_max=1.0)
    method = _method("kd+ctkd", ctkd_t_min=2.0, ctkd_t_max=3.0)
    with torch.no_grad():
        method.curriculum.logit.fill_(-100.0)
    assert method.temperature(_step(torch.tensor(Z_S), torch.tensor(Z_T), Y)).item() == pytest.approx(2.0)


@pytest.mark.parametrize("name, message", [
    ("ce+ls", "ce+ls: ce has no teacher, so it takes no +ls; use a logit method's: "),
    ("pc+ls", "pc+ls: pc compares no logits, so it takes no +ls; use pc+kd+ls (the plug-in on the added "
              "KD term) or a logit method's: "),
    ("fcfd+ctkd", "fcfd+ctkd: fcfd compares logits only inside its own terms, out of the plug-in's reach, "
                  "so it takes no +ctkd; use fcfd+kd+ctkd"),
    ("kd+ctkd+ls", "kd+ctkd+ls: write each plug-in once, in the order +kd, +ls, +ctkd: kd+ls+ctkd"),
    ("kd+ls+ls", "write each plug-in once, in the order +kd, +ls, +ctkd: kd+ls"),
    ("kd+tau", "kd+tau: unknown plug-in '+tau'; the variants are +kd, +ls, +ctkd"),
    ("dist+kd+ls", "dist+kd+ls: dist is itself KD on the logits, so it takes no added KD term"),
])
def test_a_name_that_cannot_take_a_plugin_is_one_line_naming_the_fix(name, message):
    from pcbench.methods import is_method
    with pytest.raises(UserError) as error:
        get_method(name)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not is_method(name)


def test_variant_names_and_their_method():
    from pcbench.methods import base_method, is_method, split_variant
    for name in ["kd+ls", "dkd+ls", "kd+ctkd", "pc+kd+ls", "kd+ls+ctkd", "pc+kd+ls+ctkd", "wttm+ctkd"]:
        assert is_method(name) and get_method(name).name == name
    assert split_variant("pc+kd+ls") == ("pc", ("+kd", "+ls")) and base_method("pc+kd+ls") == "pc"
    assert issubclass(get_method("pc+kd+ls"), get_method("pc+kd"))  # built on the variant before it
    variant = get_method("dkd+ls+ctkd")
    assert variant.adds_ls and variant.adds_ctkd and not variant.adds_kd and not variant.takes_kd


def test_a_method_scoped_setting_reaches_its_variants():
    from pcbench.config import build_config
    assert build_config({"method": "kd+ls"}, {"kd.temperature": 3.0}).method.temperature == 3.0
    config = build_config({"method": "dkd+ctkd"}, {"dkd.beta": 2.0, "dkd+ctkd.ctkd_lambda": 0.5}).method
    assert (config.beta, config.ctkd_lambda) == (2.0, 0.5)


def test_variant_spaces_add_the_same_plugin_knobs_and_ctkd_drops_the_temperature():
    from pcbench.spaces import prepare_search

    def space(name):
        template, found = prepare_search({"method": name}, {})
        return found.first_point(template), found.describe()

    kd_first, kd_space = space("kd")
    ls_first, ls_space = space("kd+ls")
    # ls_weight scales the KD term: never searched (only kd_term.yaml searches a KD weight)
    assert set(ls_space) == set(kd_space)
    assert ls_first["method.temperature"] == 2.0
    assert ls_space["method.temperature"] == kd_space["method.temperature"]  # the method's range
    ctkd_first, ctkd_space = space("kd+ctkd")
    ctkd_knobs = {"method.ctkd_share", "method.ctkd_lambda"}
    assert set(ctkd_space) == set(kd_space) - {"method.temperature"} | ctkd_knobs
    assert "method.kd_temperature" not in space("pc+kd+ctkd")[1]
    plugin_knobs = {k for name in ["kd+ls", "dkd+ls", "dist+ls", "nkd+ls+ctkd", "wttm+ls", "pc+kd+ls"]
                    for k in space(name)[1] if k.startswith(("method.ls_", "method.ctkd_"))}
    assert plugin_knobs == ctkd_knobs  # +ls adds no knob to any variant's search


def test_a_methods_own_space_may_not_hold_a_plugin_knob(tmp_path):
    from pcbench.spaces import prepare_search
    path = tmp_path / "kd.yaml"
    path.write_text("knobs:\n  method.ls_weight: {type: float, low: 1, high: 20}\n")
    message = "'method.ls_weight' belongs to the \\+ls plug-in, which every <method>\\+ls variant searches"
    with pytest.raises(UserError, match=message + " alike from search_spaces/ls_term.yaml"):
        prepare_search({"method": "kd+ls"}, {}, path)


def test_a_learnt_temperature_gets_a_finite_gradient_through_dkds_masked_teacher():
    # NCKD's teacher distribution is exactly 0 at the target class; the learnt temperature's
    # gradient must not turn that 0 into NaN
    torch.manual_seed(0)
    dkd_ctkd = _method("dkd+ctkd", classes=5, epochs=240)
    z_s, z_t, y = torch.randn(4, 5), 5 * torch.randn(4, 5), [0, 1, 2, 3]
    sum(dkd_ctkd(_step(z_s, z_t, y, 30)).values()).backward()
    assert torch.isfinite(dkd_ctkd.curriculum.logit.grad) and dkd_ctkd.curriculum.logit.grad != 0
    t = dkd_ctkd.temperature(_step(z_s, z_t, y, 30)).item()  # the same values as at a fixed T
    tckd, nckd = dkd_terms(z_s, z_t, torch.tensor(y), t)
    terms = dkd_ctkd.transfer(_step(z_s, z_t, y, 30))
    assert terms["nckd"].item() == pytest.approx(8.0 * nckd.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["dist", "nkd", "wttm", "kd+ls", "dkd+ctkd", "pc+kd+ls"])
def test_logit_methods_and_their_variants_are_refused_with_a_teacher_of_another_task(name):
    from pcbench.config import build_config
    transfer = {"data": {"name": "digits-5to9"}, "teacher_dataset": "digits-0to4"}
    with pytest.raises(UserError, match="compares the teacher's logits with the student's"):
        build_config({"method": name, **transfer}, {})


@pytest.mark.slow
def test_the_logit_methods_and_plugins_train_in_the_engine(teacher_store):
    """Two epochs on digits each, through the engine (the learnt temperature stepped by the
    optimizer with the student): finite losses and accuracies."""
    from pcbench.config import build_config
    from pcbench.engine import LocalReporter, train_trial
    from pcbench.teachers import attach

    for name in ["dist", "nkd", "wttm", "kd+ls", "dkd+ls+ctkd", "pc+kd+ctkd"]:
        config = attach(build_config({"method": name}, {"train.epochs": 2}),
                        teacher_store.get("cnn_large", "digits"))
        metrics = train_trial(config, LocalReporter())
        assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_acc"]), name
