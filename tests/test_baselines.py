"""Each baseline's value on small hand-made tensors against its paper's formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from pcbench.methods import DataInfo, get_method
from pcbench.methods.at import at_loss
from pcbench.methods.base import Step
from pcbench.methods.crd import nce_loss
from pcbench.methods.dkd import dkd_terms
from pcbench.methods.fitnet import conv_regressor
from pcbench.methods.pkt import pkt_loss
from pcbench.methods.rkd import rkd_angle, rkd_distance
from pcbench.methods.sp import sp_loss
from pcbench.models import ModelInfo


def test_at_is_the_squared_difference_of_normalised_attention_maps():
    fs = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]]])  # B=1, C=1, 2x2
    ft = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])
    a_s = torch.tensor([1.0, 4.0, 0.0, 1.0]) / math.sqrt(18.0)  # |f|^2 averaged over C, unit norm
    a_t = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert at_loss(fs, ft).item() == pytest.approx(((a_s - a_t) ** 2).mean().item())


def test_sp_compares_row_normalised_gram_matrices():
    fs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_s = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    g_s = g_s / g_s.norm(dim=1, keepdim=True)
    g_t = torch.eye(2)
    assert sp_loss(fs, ft).item() == pytest.approx(((g_t - g_s) ** 2).sum().item() / 4)


def test_rkd_distance_and_angle_by_hand():
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = 3.0 * t  # distances scale, angles do not: both terms vanish
    assert rkd_distance(s, t).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(s, t).item() == pytest.approx(0.0, abs=1e-6)
    s2 = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # teacher distances /mean: 1, 1, sqrt2 over mean (2+sqrt2)/3; student 2, 1, sqrt5
    d_t = torch.tensor([1.0, 1.0, math.sqrt(2)])
    d_s = torch.tensor([2.0, 1.0, math.sqrt(5)])
    d_t, d_s = d_t / d_t.mean(), d_s / d_s.mean()
    full = lambda d: torch.tensor([[0, d[0], d[1]], [d[0], 0, d[2]], [d[1], d[2], 0]])  # noqa: E731
    expected = F.smooth_l1_loss(full(d_s), full(d_t)).item()
    assert rkd_distance(s2, t).item() == pytest.approx(expected, rel=1e-5)


def test_pkt_is_kl_between_row_normalised_cosine_kernels():
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p_s = torch.tensor([[1.0, 0.5], [0.5, 1.0]]) / 1.5  # (cos + 1) / 2, rows sum to one
    p_t = torch.full((2, 2), 0.5)
    expected = (p_t * torch.log((p_t + 1e-7) / (p_s + 1e-7))).mean()
    assert pkt_loss(fs, ft).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dkd_splits_kd_into_target_and_non_target_terms():
    z_s, z_t, y, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 3.0, 0.5]]), torch.tensor([0]), 1.0
    p_s, p_t = z_s.softmax(1)[0], z_t.softmax(1)[0]
    b_s, b_t = torch.stack([p_s[0], 1 - p_s[0]]), torch.stack([p_t[0], 1 - p_t[0]])
    tckd = (b_t * (b_t / b_s).log()).sum()
    q_s, q_t = p_s[1:] / p_s[1:].sum(), p_t[1:] / p_t[1:].sum()
    nckd = (q_t * (q_t / q_s).log()).sum()
    got_t, got_n = dkd_terms(z_s, z_t, y, t)
    assert (got_t.item(), got_n.item()) == (pytest.approx(tckd.item(), rel=1e-5),
                                            pytest.approx(nckd.item(), rel=1e-4))
    # KD = TCKD + (1 - p_t^target) * NCKD (the paper's decomposition)
    kd = (p_t * (p_t / p_s).log()).sum()
    assert kd.item() == pytest.approx((tckd + (1 - p_t[0]) * nckd).item(), rel=1e-4)


def test_crd_nce_loss_by_hand():
    scores = torch.tensor([[0.5, 0.1, 0.2]])  # positive, two negatives
    n, k = 10, 2
    noise = k / n
    expected = -(math.log(0.5 / (0.5 + noise + 1e-7)) + math.log(noise / (0.1 + noise + 1e-7))
                 + math.log(noise / (0.2 + noise + 1e-7)))
    assert nce_loss(scores, n).item() == pytest.approx(expected, rel=1e-6)


def test_crd_memory_is_sized_by_the_data_set_and_updated_at_the_batch_positions():
    info = ModelInfo("m", {"embedding": (8,)}, ("stage1",))
    config = get_method("crd").Config(feat_dim=4, negatives=16384)
    crd = get_method("crd")(config, info, info, DataInfo(num_classes=10, train_size=50, epochs=20))
    assert crd.memory_s.shape == (50, 4) and crd.k == 49  # negatives capped at N - 1
    before = crd.memory_t.clone()
    feats = {"embedding": torch.randn(4, 8), "logits": torch.randn(4, 10)}
    index = torch.tensor([3, 7, 11, 19])
    terms = crd.transfer(Step(None, None, index, 0, feats, feats, None, None))
    changed = (crd.memory_t != before).any(1).nonzero().flatten().tolist()
    assert changed == index.tolist() and torch.isfinite(terms["crd"])
    assert torch.allclose(crd.memory_t[index].norm(dim=1), torch.ones(4))


def test_fitnet_regressor_maps_student_hint_onto_teacher_shape():
    for s, t in [((8, 8, 8), (32, 4, 4)), ((8, 4, 4), (32, 8, 8)), ((8, 6, 6), (32, 4, 4))]:
        out = conv_regressor(s, t)(torch.randn(2, *s))
        assert out.shape == (2, *t)


def test_rkd_angle_by_hand():
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])

    def cosines(e):  # cos of the angle at e[j] between e[i] and e[k], for every (i, j, k)
        out = torch.zeros(3, 3, 3)
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    a, b = e[i] - e[j], e[k] - e[j]
                    if a.norm() > 0 and b.norm() > 0:
                        out[i, j, k] = (a @ b) / (a.norm() * b.norm())
        return out.flatten()
    expected = F.smooth_l1_loss(cosines(s), cosines(t))
    assert rkd_angle(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0.01


def test_at_pools_the_larger_map_and_uses_absolute_values():
    fs, ft = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    assert at_loss(fs, ft).item() == pytest.approx(at_loss(F.avg_pool2d(fs, 2), ft).item(), rel=1e-5)
    assert torch.isfinite(at_loss(fs, ft, p=1.5))  # negative features, fractional p


def _crd_rank(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)  # identical banks and embeddings on both ranks
    info = ModelInfo("m", {"embedding": (8,)}, ("stage1",))
    crd = get_method("crd")(get_method("crd").Config(feat_dim=4), info, info, DataInfo(10, 20, epochs=20))
    torch.manual_seed(1 + rank)  # each rank its own batch
    feats = {"embedding": torch.randn(2, 8), "logits": torch.randn(2, 10)}
    index = torch.tensor([2 * rank, 2 * rank + 1])
    crd.transfer(Step(None, None, index, 0, feats, feats, None, None))
    out[rank] = (crd.memory_s.clone(), crd.memory_t.clone(), crd.normalizer.clone())
    dist.destroy_process_group()


def test_crd_memory_stays_identical_across_ddp_ranks():
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_crd_rank, args=(2, port, out), nprocs=2)
    (ms0, mt0, z0), (ms1, mt1, z1) = out[0], out[1]
    assert torch.equal(ms0, ms1) and torch.equal(mt0, mt1) and torch.equal(z0, z1)
    # Rows 0-3 (both ranks' samples) were updated and re-normalised; the rest are untouched.
    assert (ms0[:4].norm(dim=1) - 1).abs().max() < 1e-5
    assert (ms0[4:].norm(dim=1) - 1).abs().min() > 1e-4


def _info(name: str, shapes: dict) -> ModelInfo:
    return ModelInfo(name, shapes, ("stage1", "stage2"), True)


def test_cc_multiplies_consecutive_samples_embedding_gaps_and_trains_both_projections():
    from pcbench.methods.cc import cc_loss
    e_s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    e_t = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
    delta = (e_s - e_t).abs()  # [1,0], [0,2], [2,0]
    assert cc_loss(e_s, e_t).item() == pytest.approx((0 * 1 + 0 * 2 + (0 * 2 + 2 * 0)) / 2)
    assert cc_loss(e_s, e_t).item() == pytest.approx(((delta[:-1] * delta[1:]).sum(1)).mean().item())
    shapes = {"embedding": (4,), "logits": (3,)}
    cc = get_method("cc")(get_method("cc").Config(), _info("s", shapes), _info("t", shapes),
                          DataInfo(3, 10, epochs=20))
    assert cc.embed_s.out_features == cc.embed_t.out_features == 128
    feats = {"embedding": torch.randn(5, 4), "logits": torch.randn(5, 3)}
    step = Step(None, torch.zeros(5, dtype=torch.long), None, 0, feats, {k: v.detach() for k, v in feats.items()},
                None, None)
    term = cc.transfer(step)["cc"]
    term.backward()
    assert term.item() == pytest.approx(0.02 * cc_loss(cc.embed_s(feats["embedding"]),
                                                       cc.embed_t(feats["embedding"])).item())
    assert cc.embed_t.weight.grad is not None  # the teacher's projection learns too, as RepDistiller's


def test_nst_is_the_polynomial_kernel_mmd_of_unit_channel_maps():
    from pcbench.methods.nst import nst_loss
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]])  # B=1, C=2, 2x2
    f_t = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]]])
    s = [torch.tensor([1.0, 0, 0, 0]), torch.tensor([1.0, 1, 0, 0]) / math.sqrt(2)]
    t = [torch.tensor([0.0, 1, 0, 0]), torch.tensor([1.0, 0, 0, 0])]
    k = lambda a, b: sum(float(x @ y) ** 2 for x in a for y in b) / (len(a) * len(b))  # noqa: E731
    assert nst_loss(f_s, f_t).item() == pytest.approx(k(t, t) + k(s, s) - 2 * k(s, t))
    assert nst_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-6)
    # the larger map is pooled to the smaller one's size first
    big = f_s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert nst_loss(big, f_t).item() == pytest.approx(nst_loss(f_s, f_t).item())


def test_vid_is_the_gaussian_negative_log_likelihood_with_a_learnt_variance_starting_at_five():
    from pcbench.methods.vid import VariationalRegressor
    torch.manual_seed(0)
    regressor = VariationalRegressor(3, 4, init_var=5.0)
    assert (F.softplus(regressor.log_scale) + 1e-5).tolist() == pytest.approx([5.0] * 4)
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    mu = regressor.mean(f_s)
    expected = 0.5 * ((mu - f_t) ** 2 / 5.0 + math.log(5.0))
    assert regressor(f_s, f_t).item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert [m.bias for m in regressor.mean if isinstance(m, torch.nn.Conv2d)] == [None] * 3  # bias-free 1x1
    regressor(f_s, f_t).backward()
    assert regressor.log_scale.grad is not None
