"""OT against its definition (docs/methods.md) and POT's reference solvers."""

import numpy as np
import ot as pot
import pytest
import torch

from pcbench.methods.ot import neuron_cost, neurons, ot_loss


@pytest.fixture
def layers():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 24, 4, 4, generator=g), torch.randn(32, 10, 4, 4, generator=g)


@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_invariant_to_permuting_student_channels(layers, solver):
    t, s = layers
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(1))
    a_t = neurons(t, "pool", "none")
    before = ot_loss(neuron_cost(a_t, neurons(s, "pool", "none")), solver).item()
    after = ot_loss(neuron_cost(a_t, neurons(s[:, perm], "pool", "none")), solver).item()
    assert after == pytest.approx(before, abs=1e-6)


@pytest.mark.parametrize("spatial", ["pool", "flatten"])
def test_zero_when_student_neurons_permute_the_teachers(layers, spatial):
    t, _ = layers
    perm = torch.randperm(t.shape[1], generator=torch.Generator().manual_seed(2))
    cost = neuron_cost(neurons(t, spatial, "none"), neurons(t[:, perm], spatial, "none"))
    assert ot_loss(cost).item() == pytest.approx(0.0, abs=1e-6)


def test_exact_matches_pot_on_the_same_cost(layers):
    t, s = layers
    cost = neuron_cost(neurons(t, "pool", "zscore"), neurons(s, "pool", "zscore")).double()
    p, q = cost.shape
    reference = pot.emd2(np.full(p, 1 / p), np.full(q, 1 / q), cost.numpy())
    assert ot_loss(cost).item() == pytest.approx(reference, abs=1e-6)
    # and the cost matrix itself is POT's squared Euclidean distance over the batch
    a_t, a_s = neurons(t, "pool", "none").double(), neurons(s, "pool", "none").double()
    expected = pot.dist(a_t.numpy(), a_s.numpy()) / a_t.shape[1]
    assert np.allclose(neuron_cost(a_t, a_s).numpy(), expected, atol=1e-9)


def test_sinkhorn_matches_pot_plan_cost(layers):
    t, s = layers
    cost = neuron_cost(neurons(t, "pool", "none"), neurons(s, "pool", "none")).double()
    p, q = cost.shape
    reg = 0.05 * float(np.median(cost.numpy()))
    plan = pot.sinkhorn(np.full(p, 1 / p), np.full(q, 1 / q), cost.numpy(), reg,
                        method="sinkhorn_log", numItermax=5000, stopThr=1e-6)
    expected = float((plan * cost.numpy()).sum())
    assert ot_loss(cost, "sinkhorn", 0.05).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_finite_gradients_when_widths_differ(layers, solver):
    t, s = layers
    s = s.clone().requires_grad_()
    ot_loss(neuron_cost(neurons(t, "pool", "none"), neurons(s, "pool", "none")), solver).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_flatten_over_maps_of_different_sizes_is_refused_before_anything_runs(tmp_path):
    from pcbench.errors import UserError
    from pcbench.session import Request, Session, validate
    session = Session.open(results=str(tmp_path / "results"), teachers=tmp_path / "teachers",
                           tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", search=False, ray=False)
    # resnet32x4 -> ShuffleV1: stage1 is 32x32 in the teacher, 16x16 in the student
    request = Request(["ot"], {"data": {"name": "cifar100"}, "teacher": "resnet32x4",
                               "student": "ShuffleV1"},
                      {"ot.spatial": "flatten", "ot.taps": "stage1"}, search=False)
    with pytest.raises(UserError, match="resnet32x4 -> ShuffleV1: ot spatial=flatten .* stage1 is "
                                        "16x16 in the student and 32x32 in the teacher; use ot.spatial=pool"):
        validate(session, request, missing=[])
    validate(session, Request(["ot"], request.base, {"ot.taps": "stage1"}, search=False), missing=[])
