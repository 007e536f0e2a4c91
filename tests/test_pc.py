"""PC against its definition (docs/methods.md), property by property, and against a naive reference."""

import pytest
import torch

from pcbench.methods import pc
from pcbench.methods.pc import dissimilarity, hard_rank, naive_soft_rank, pc_loss, soft_rank


def naive_pc_loss(s, t, tau, delta="cosine", rank_loss="mse"):
    ft = hard_rank(dissimilarity(t, delta))
    fs = naive_soft_rank(dissimilarity(s, delta), tau)
    return pc.rank_disagreement(fs, ft, rank_loss)


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 12, generator=g), torch.randn(40, 12, generator=g)


@pytest.mark.parametrize("delta", ["cosine", "euclidean", "sqeuclidean"])
@pytest.mark.parametrize("rank_loss", ["mse", "spearman"])
def test_chunked_matches_naive_values_and_gradients(features, monkeypatch, delta, rank_loss):
    t, s = features
    monkeypatch.setattr(pc, "CHUNK_ELEMENTS", 40 * 40 * 3)  # force several chunks of 3 rows
    s1, s2 = s.double().clone().requires_grad_(), s.double().clone().requires_grad_()
    shipped = pc_loss(s1, t.double(), 0.3, delta, rank_loss=rank_loss)
    naive = naive_pc_loss(s2, t.double(), 0.3, delta, rank_loss)
    shipped.backward()
    naive.backward()
    assert abs(shipped.item() - naive.item()) < 1e-6
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


def test_batch_permutation_leaves_the_loss_unchanged(features):
    t, s = features
    perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(1))
    assert pc_loss(s[perm], t[perm], 0.2).item() == pytest.approx(pc_loss(s, t, 0.2).item(), abs=1e-6)


def test_monotone_student_rows_give_zero_as_tau_shrinks(features):
    t, _ = features
    # Any positive scale and a per-feature-space monotone map keep every row's order.
    s = 3.0 * t
    losses = [pc_loss(s, t, tau, "euclidean").item() for tau in (0.5, 0.05, 1e-3)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 1e-4


def test_per_row_monotone_map_of_dissimilarities_gives_zero():
    d_t = dissimilarity(torch.randn(30, 5, generator=torch.Generator().manual_seed(2)), "euclidean")
    scales = torch.linspace(0.5, 4.0, 30)[:, None]
    d_s = scales * d_t ** 3  # a different increasing map on each row
    ft, fs = hard_rank(d_t), soft_rank(d_s, 1e-4)
    assert pc.rank_disagreement(fs, ft, "mse").item() < 1e-6


def test_reversed_row_is_the_worst_row():
    d_t = torch.tensor([[0.0, 1, 2, 3, 4], [1, 0, 1, 2, 3], [2, 1, 0, 1, 2], [3, 2, 1, 0, 1],
                        [4, 3, 2, 1, 0]])
    ft = hard_rank(d_t)
    same = soft_rank(d_t, 1e-4)
    reversed_rows = soft_rank(d_t.max() - d_t + torch.eye(5) * 0, 1e-4)
    per_row_same = ((same - ft) ** 2).sum(1)
    per_row_rev = ((reversed_rows - ft) ** 2).sum(1)
    assert torch.all(per_row_rev[[0, 4]] > per_row_same[[0, 4]] + 0.5)
    # Row 0 of the reversed matrix is exactly the reverse order: every rank flipped.
    flipped = 1.0 - ft[0, 1:]
    assert torch.allclose(reversed_rows[0, 1:], flipped, atol=1e-3)


def test_soft_rank_tends_to_hard_rank(features):
    t, _ = features
    d = dissimilarity(t, "euclidean")
    gaps = [(soft_rank(d, tau) - hard_rank(d)).abs().max().item() for tau in (0.3, 0.03, 1e-5)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05


@pytest.mark.parametrize("delta", ["cosine", "euclidean", "sqeuclidean"])
def test_gradients_finite_at_tiny_tau_and_duplicate_points(delta):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(8, 6, generator=g)
    s = torch.cat([base, base]).requires_grad_()  # every point duplicated
    t = torch.randn(16, 6, generator=g)
    pc_loss(s, t, 1e-3, delta).backward()
    assert torch.isfinite(s.grad).all()


def test_cosine_is_scale_invariant(features):
    t, s = features
    assert pc_loss(7.5 * s, t, 0.2).item() == pytest.approx(pc_loss(s, t, 0.2).item(), abs=1e-6)


def test_memory_grows_as_b_squared_not_b_cubed(monkeypatch):
    """With the chunk budget below B^3, the largest tensor the autograd graph saves is O(B^2)."""
    b = 96
    monkeypatch.setattr(pc, "CHUNK_ELEMENTS", b * b * 4)
    s = torch.randn(b, 8, requires_grad=True)
    biggest = 0

    def pack(tensor):
        nonlocal biggest
        biggest = max(biggest, tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = pc_loss(s, torch.randn(b, 8), 0.2)
    loss.backward()
    assert biggest <= b * b * 4 < b ** 3


@pytest.mark.parametrize("delta", ["cosine", "euclidean", "sqeuclidean"])
@pytest.mark.parametrize("tau", [0.5, 0.01])
def test_rows_without_spread_give_bounded_gradients(delta, tau):
    """Degenerate students: a dead unit's zero row (its cosine row is constant; before the
    floors its gradient reached 1e21), a collapsed batch, features at the scale of rounding."""
    g = torch.Generator().manual_seed(5)
    t = torch.randn(16, 6, generator=g)
    zero_row = torch.randn(16, 6, generator=g)
    zero_row[3] = 0.0
    cases = {"zero row": zero_row, "all zero": torch.zeros(16, 6),
             "collapsed": torch.ones(16, 6) + 1e-7 * torch.randn(16, 6, generator=g),
             "tiny": 1e-9 * torch.randn(16, 6, generator=g)}
    for name, features in cases.items():
        s = features.clone().requires_grad_()
        pc_loss(s, t, tau, delta).backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().max() < 1e5, name
