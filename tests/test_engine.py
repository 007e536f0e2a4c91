"""The engine in a plain process, and the teacher store."""

import pytest
import torch

from pcbench.atomic import sha256_of
from pcbench.config import build_config
from pcbench.engine import MODEL_FILE, LocalReporter, train_trial
from pcbench.errors import UserError
from pcbench.teachers import attach


def test_teacher_is_trained_once_stored_with_its_hash_and_reused(teacher_store):
    record = teacher_store.get("cnn_large", "digits")
    assert record.test_acc > 0.95 and sha256_of(record.path) == record.sha256
    state = torch.load(record.path, weights_only=True)
    assert set(state) == {"model"}  # RepDistiller's checkpoint format
    assert teacher_store.ensure("cnn_large", "digits") == record  # not trained again


def test_a_kd_trial_trains_a_good_student_and_reports_every_epoch(teacher_store, tmp_path):
    config = attach(build_config({"method": "kd"}, {"train.epochs": 6}),
                    teacher_store.get("cnn_large", "digits"))
    reporter = LocalReporter(str(tmp_path))
    final = train_trial(config, reporter)
    assert [m["epoch"] for m in reporter.history] == list(range(1, 7))
    assert "test_acc" in final and all("test_acc" not in m for m in reporter.history[:-1])
    assert final["test_acc"] > 0.85
    assert {"loss/ce", "loss/kd"} <= set(final)
    assert final["train_loss"] == pytest.approx(final["loss/ce"] + final["loss/kd"])
    assert (tmp_path / "checkpoint" / MODEL_FILE).exists()


def test_a_restarted_trial_resumes_from_its_checkpoint(teacher_store, tmp_path):
    config = attach(build_config({"method": "fcfd"}, {"train.epochs": 3}),
                    teacher_store.get("cnn_large", "digits"))
    straight = train_trial(config, LocalReporter())

    class StopAfterTwo(LocalReporter):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_trial(config, StopAfterTwo(str(tmp_path)))
    resumed = LocalReporter(str(tmp_path))
    final = train_trial(config, resumed)
    assert [m["epoch"] for m in resumed.history] == [3]
    assert final["val_acc"] == pytest.approx(straight["val_acc"])


def test_a_trial_refuses_a_teacher_file_that_changed_since_it_was_set_up(teacher_store, tmp_path):
    import shutil
    record = teacher_store.get("cnn_large", "digits")
    copy = tmp_path / "teacher.pt"
    shutil.copyfile(record.path, copy)
    config = build_config({"method": "kd"}, {"train.epochs": 1}).model_copy(
        update={"teacher_weights": str(copy), "teacher_sha256": record.sha256})
    train_trial(config, LocalReporter())  # the same bytes: fine
    state = torch.load(copy, weights_only=True)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, copy)
    with pytest.raises(RuntimeError, match="changed since this trial was set up"):
        train_trial(config, LocalReporter())


def test_a_batch_larger_than_the_training_split_is_one_line_not_an_empty_epoch():
    config = build_config({"method": "ce"}, {"data.batch_size": 100_000, "train.epochs": 1})
    with pytest.raises(UserError, match=r"^data.batch_size=100000 is more than the 1221 training samples of "
                                        r"digits \(over 1 workers\); lower data.batch_size$"):
        train_trial(config, LocalReporter())
