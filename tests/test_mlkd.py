"""MLKD against its definition (docs/methods.md), computed by hand on small tensors, and the
strong view it reads: the same images, augmented harder, from a stream of its own."""

import math

import pytest
import torch

from pcbench.data import cifar, load_dataset
from pcbench.methods import DataInfo, Step, get_method
from pcbench.models import ModelInfo

Z_S = [[2.0, 1.0, 0.0], [0.5, -1.0, 1.5], [0.0, 0.3, -0.7], [1.0, 1.0, -2.0]]
Z_T = [[1.0, 3.0, 0.5], [2.0, 0.0, -1.0], [-0.5, 1.5, 0.2], [0.0, -1.0, 2.5]]
S_S = [[1.5, 0.0, 0.5], [0.0, -0.5, 1.0], [0.2, 0.1, -0.3], [2.0, 0.5, -1.0]]  # the strong view's
S_T = [[0.5, 2.0, 1.0], [1.0, 0.5, -0.5], [-1.0, 2.0, 0.0], [0.5, -0.5, 2.0]]
Y = [1, 0, 1, 2]


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kd(z_s, z_t, t):
    """T^2 x the batch mean of KL(softmax(z_t / T) || softmax(z_s / T))."""
    kl = [sum(q * math.log(q / p) for p, q in zip(_softmax(s, t), _softmax(r, t))) for s, r in zip(z_s, z_t)]
    return t * t * sum(kl) / len(kl)


def _gram_gap(a, b):
    return sum((x - y) ** 2 for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def _batch_level(z_s, z_t, t):
    p, q = [_softmax(r, t) for r in z_s], [_softmax(r, t) for r in z_t]
    gram = lambda m: [[sum(x * y for x, y in zip(a, b)) for b in m] for a in m]  # noqa: E731
    return _gram_gap(gram(q), gram(p)) / len(z_s)


def _class_level(z_s, z_t, t):
    p, q = [_softmax(r, t) for r in z_s], [_softmax(r, t) for r in z_t]
    columns = lambda m: [[r[c] for r in m] for c in range(len(m[0]))]  # noqa: E731
    gram = lambda m: [[sum(x * y for x, y in zip(a, b)) for b in columns(m)] for a in columns(m)]  # noqa: E731
    return _gram_gap(gram(q), gram(p)) / len(z_s[0])


def _share_at_or_below_median(values):
    ordered = sorted(values)
    n = len(ordered)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return sum(v <= median for v in values) / n


def _step(name="mlkd", **knobs):
    info = ModelInfo("m", {"logits": (3,)}, ("stage1",))
    cls = get_method(name)
    method = cls(cls.Config(**knobs), info, info, DataInfo(3, 100, epochs=10))
    weak = Step(None, torch.tensor(Y), None, 0, {"logits": torch.tensor(Z_S)}, {"logits": torch.tensor(Z_T)},
                None, None)
    weak.strong = Step(None, torch.tensor(Y), None, 0, {"logits": torch.tensor(S_S)},
                       {"logits": torch.tensor(S_T)}, None, None)
    return method, weak


def test_mlkd_aligns_instances_batches_and_classes_at_five_temperatures_on_two_views():
    method, step = _step(temperature=4.0, weight=0.9, w_ce=0.1)
    terms = {k: v.item() for k, v in method(step).items()}
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    samples = _share_at_or_below_median([max(_softmax(r)) for r in Z_T])
    classes = _share_at_or_below_median([sum(_softmax(r)[c] for r in Z_T) for c in range(3)])
    ce = lambda z: -sum(math.log(_softmax(r)[y]) for r, y in zip(z, Y)) / len(Y)  # noqa: E731
    # the authors' code: the strong view's KD at T 2 and 6 reads the weak view's logits
    kd_strong = sum(_kd(S_S, S_T, t) for t in temps[:3]) + sum(_kd(Z_S, Z_T, t) for t in temps[3:])
    assert terms == pytest.approx({
        "ce": 0.1 * ce(Z_S), "ce_strong": 0.1 * ce(S_S),
        "kd": 0.9 * (samples * sum(_kd(Z_S, Z_T, t) for t in temps) + kd_strong),
        "class_level": 0.9 * classes * sum(_class_level(Z_S, Z_T, t) for t in temps),
        "batch_level": 0.9 * samples * sum(_batch_level(Z_S, Z_T, t) for t in temps)}, rel=1e-5)
    assert samples == 0.5 and classes == pytest.approx(2 / 3)  # the "masks" are shares


def test_mlkd_with_ls_standardises_both_views_kd_terms_and_leaves_the_others_raw():
    plain, step = _step()
    ls, _ = _step("mlkd+ls")
    terms, base = ls(step), plain(step)
    assert terms["ce"] == base["ce"] and terms["ce_strong"] == base["ce_strong"]
    # the batch and class levels read the raw logits, as LS's MLKD; only the weight scales them
    # (at LS's temperature 2 in place of 4: compare with plain mlkd there)
    at_two, _ = _step(temperature=2.0)
    for level in ("class_level", "batch_level"):
        assert terms[level].item() == pytest.approx(10 * at_two(step)[level].item(), rel=1e-5)
    shifted = [[v * 3 + 1 for v in row] for row in S_S]  # z-scores ignore each row's scale and shift
    step.strong.student_feats["logits"] = torch.tensor(shifted)
    assert ls(step)["kd"].item() == pytest.approx(terms["kd"].item(), rel=1e-5)
    assert plain(step)["kd"].item() != pytest.approx(base["kd"].item(), rel=1e-3)


@pytest.mark.parametrize("name", ["digits", "cifar100"])
def test_the_strong_view_leaves_the_batch_every_method_sees_as_it_was(name, tmp_path):
    cifar.write("cifar100", tmp_path, per_class=2, test_per_class=1)
    data = load_dataset(name, str(tmp_path), 0.1, split_seed=0)
    assert data.has_strong_view
    kwargs = dict(shuffle_seed=7, augment=True)
    alone = list(data.batches("train", 16, **kwargs))
    both, again = ([(*batch[:3], batch[3]())  # the strong view, made when asked for, in order
                    for batch in data.batches("train", 16, strong_view=True, **kwargs)] for _ in range(2))
    for (x, y, i), (wx, wy, wi, strong), (*_, strong_again) in zip(alone, both, again):
        assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(i, wi)
        assert strong.shape == x.shape and strong.dtype == x.dtype
        assert not torch.equal(strong, x)  # augmented again, harder
        assert torch.equal(strong, strong_again)  # seeded: a resumed epoch sees it again
    # normalised as the weak view is: its pixels, un-normalised, lie within [0, 1] as the weak view's
    x, strong = torch.cat([b[0] for b in both]), torch.cat([b[3] for b in both])
    t = data.transform
    mean, std = (t.mean[0], t.std[0]) if name == "cifar100" else t.stored
    low, high = (0 - mean) / std, (1 - mean) / std
    assert low - 1e-4 <= strong[:, 0].min() and strong[:, 0].max() <= high + 1e-4
    assert strong.std() > 0.5 * x.std()
