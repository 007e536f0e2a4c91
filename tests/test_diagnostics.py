"""Representation diagnostics against their definitions, and in the engine: measured every
epoch against the teacher, for every method, without changing what a trial trains."""

import pytest
import torch
from scipy import stats

from pcbench.config import build_config
from pcbench.diagnostics import Reference, centred_gram, cosine_dissimilarity, row_ranks
from pcbench.engine import LocalReporter, train_trial
from pcbench.methods import get_method
from pcbench.models import stage_taps
from pcbench.teachers import attach


def _cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s linear CKA in feature space: |Y'X|^2 / (|X'X| |Y'Y|), centred."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_linear_cka_is_kornbliths_and_blind_to_rotation_scale_and_width():
    torch.manual_seed(0)
    x, y = torch.randn(64, 10, dtype=torch.float64), torch.randn(64, 30, dtype=torch.float64)
    mixed = x @ torch.randn(10, 30, dtype=torch.float64) + 0.5 * y
    ref = Reference({"embedding": x})
    assert ref.compare({"embedding": mixed})["cka/embedding"] == pytest.approx(_cka(x, mixed))
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    assert ref.compare({"embedding": 3.0 * x @ rotation})["cka/embedding"] == pytest.approx(1.0)
    assert float((centred_gram(x) * centred_gram(y)).sum()) == pytest.approx(_cka(x, y))


def test_rank_agreement_is_the_mean_spearman_of_the_dissimilarity_rows():
    torch.manual_seed(1)
    teacher, student = torch.randn(40, 16, dtype=torch.float64), torch.randn(40, 8, dtype=torch.float64)
    student = torch.cat([teacher[:, :8] + 0.3 * student, student], 1)
    dt, ds = cosine_dissimilarity(teacher), cosine_dissimilarity(student)
    expected = sum(stats.spearmanr(torch.cat([dt[r, :r], dt[r, r + 1:]]), torch.cat([ds[r, :r], ds[r, r + 1:]]))[0]
                   for r in range(40)) / 40
    measured = Reference({"embedding": teacher}).compare({"embedding": student})["rank_agreement"]
    assert measured == pytest.approx(expected)
    assert 0.2 < measured < 0.99
    assert Reference({"embedding": teacher}).compare({"embedding": 2 * teacher})["rank_agreement"] == pytest.approx(1.0)
    assert row_ranks(dt).norm(dim=1) == pytest.approx(torch.ones(40, dtype=torch.float64))


def test_every_epoch_reports_cka_per_tap_and_rank_agreement_without_changing_the_trial(teacher_store):
    record = teacher_store.get("cnn_large", "digits")
    fitnet = attach(build_config({"method": "fitnet"}, {"train.epochs": 2}), record)
    [hint] = get_method("fitnet").taps(fitnet.method, stage_taps(fitnet.student))
    on, off = LocalReporter(), LocalReporter()
    train_trial(fitnet, on)
    train_trial(fitnet.model_copy(update={"train": fitnet.train.model_copy(update={"diagnostics": False})}), off)
    for epoch in on.history:
        taps = {k for k in epoch if k.startswith("cka/")}
        assert taps == {"cka/embedding", f"cka/{hint}"}  # the method's tap, and the embedding
        assert all(0.0 <= epoch[k] <= 1.0 + 1e-6 for k in taps) and -1.0 <= epoch["rank_agreement"] <= 1.0
    assert not any(k.startswith("cka/") or k == "rank_agreement" for k in off.history[-1])
    assert [m["val_acc"] for m in on.history] == [m["val_acc"] for m in off.history]  # a measurement only
    assert on.history[-1]["test_acc"] == off.history[-1]["test_acc"]
    assert fitnet.hash == build_config(fitnet.to_dict(), {"train.diagnostics": False}).hash


def test_a_ce_student_is_measured_against_the_attached_teacher_even_without_a_validation_split(teacher_store):
    record = teacher_store.get("cnn_large", "digits")
    ce = attach(build_config({"method": "ce"}, {"train.epochs": 1}), record)
    reporter = LocalReporter()
    final = train_trial(ce, reporter)
    assert {"cka/embedding", "rank_agreement"} <= set(final)
    # a final run (no validation split) is measured on the test images
    full = build_config(ce.to_dict(), {"data.val_fraction": 0.0})
    assert "cka/embedding" in train_trial(full, LocalReporter())
