"""Cohorts in the engine: K trials of one pair trained in lockstep on one data stream and one
teacher forward per batch, each member ending exactly as it would have alone."""

import pytest
from pairs import starts_from_teacher

from pcbench.config import build_config
from pcbench.engine import LocalReporter, train_cohort, train_trial
from pcbench.methods import method_names
from pcbench.teachers import attach

EPOCHS = 2


def _config(teacher_store, method: str, **overrides):
    return attach(build_config({"method": method}, {"train.epochs": EPOCHS, **overrides}),
                  teacher_store.get("cnn_large", "digits"))


def _same(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    for key in ("train_loss", "val_acc", "val_loss", "test_acc"):
        assert a.get(key) == pytest.approx(b.get(key), rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def members(teacher_store):
    """Every registered method but fsp (which needs a pair of one width) and those that start
    from the teacher's weights (the teacher's architecture), and different knobs: CRD draws
    random negatives, FCFD samples paths, CE reads no teacher, AB and FT start with their
    initialisation stage."""
    return [_config(teacher_store, "kd"),
            *(_config(teacher_store, m) for m in method_names()
              if m not in ("kd", "fsp") and not starts_from_teacher(m)),
            _config(teacher_store, "pc", **{"train.lr": 0.02})]


@pytest.fixture(scope="module")
def alone(members):
    return [train_trial(config, LocalReporter()) for config in members]


# The members whose trials are hardest to keep apart, for the stop and resume cases (every
# method is in the first case): KD first (the one stopped), CE (no teacher), CRD (random
# negatives, memory banks), FCFD (sampled paths), AB (an initialisation stage), MLKD (the strong
# view), PC (twice, two learning rates).
TRICKY = ("kd", "ce", "crd", "fcfd", "ab", "mlkd", "pc")


@pytest.fixture(scope="module")
def tricky(members, alone):
    chosen = [i for i, config in enumerate(members) if config.method.name in TRICKY]
    return [members[i] for i in chosen], [alone[i] for i in chosen]


def test_members_of_a_cohort_end_as_they_would_alone(members, alone):
    reporters = [LocalReporter() for _ in members]
    together = train_cohort(members, reporters)
    for one, other, reporter in zip(together, alone, reporters):
        _same(one, other)
        assert [m["epoch"] for m in reporter.history] == list(range(1, EPOCHS + 1))


def test_a_member_stopped_at_a_rung_or_diverged_leaves_the_others_unchanged(tricky, teacher_store):
    members, alone = tricky

    class StopFirstAfterOne:
        def stop(self, epoch, val_acc):
            return {0} if epoch == 1 else set()

    blown = _config(teacher_store, "kd", **{"train.lr": 1e6})
    reporters = [LocalReporter() for _ in range(len(members) + 1)]
    together = train_cohort([*members, blown], reporters, halving=StopFirstAfterOne())
    assert [m["epoch"] for m in reporters[0].history] == [1]  # stopped at the rung
    assert together[-1]["diverged"].startswith("non-finite loss at epoch 1")
    for one, other in zip(together[1:-1], alone[1:]):
        _same(one, other)


def test_a_cohort_stopped_mid_way_resumes_every_member_from_its_checkpoint(tricky, tmp_path):
    members, alone = tricky

    class StopAfterOne(LocalReporter):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 1 and self.directory.endswith(str(len(members) - 1)):
                raise KeyboardInterrupt  # a lost worker, after every member saved epoch 1

    folders = [str(tmp_path / str(i)) for i in range(len(members))]
    with pytest.raises(KeyboardInterrupt):
        train_cohort(members, [StopAfterOne(f) for f in folders])
    resumed = [LocalReporter(f) for f in folders]
    # the first member had ended (stopped at a rung, say) before the stop: it does not train again
    together = train_cohort(members, resumed, ended={0})
    assert resumed[0].history == []
    for one, other, reporter in zip(together[1:], alone[1:], resumed[1:]):
        assert [m["epoch"] for m in reporter.history] == [2]
        _same(one, other)  # its random state was in its checkpoint: as if never stopped


def test_a_cohort_refuses_members_that_cannot_share_a_data_stream(members):
    with pytest.raises(ValueError, match="members differ in seed"):
        train_cohort([members[0], members[0].model_copy(update={"seed": 1})], [LocalReporter()] * 2)


def test_members_whose_teacher_runs_in_different_batchnorm_modes_are_no_cohort(teacher_store):
    from pcbench.engine import cohort_mismatch
    fcfd = _config(teacher_store, "fcfd", **{"fcfd.teacher_train_mode": True})
    assert cohort_mismatch([fcfd, _config(teacher_store, "kd")]) == "members differ in the teacher's train mode"
    assert cohort_mismatch([fcfd, _config(teacher_store, "ce")]) is None  # CE never runs the teacher
