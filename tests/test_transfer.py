"""Transfer from another task: a teacher trained on one data set distils into a student of
another (digits 0-4 -> digits 5-9 here, no download). Logit terms are refused, feature methods
read the teacher's features of the student's images, and a student of the teacher's
architecture may start from its weights."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pcbench.cli import app
from pcbench.config import build_config
from pcbench.engine import LocalReporter, init_from_teacher, train_trial
from pcbench.errors import UserError
from pcbench.models import create_model
from pcbench.spaces import prepare_search
from pcbench.suite import SUITES_DIR
from pcbench.teachers import attach, needs_teacher

TRANSFER = {"data": {"name": "digits-5to9"}, "teacher_dataset": "digits-0to4"}


@pytest.fixture(scope="module")
def half_teachers(teacher_store):
    return {m: teacher_store.ensure(m, "digits-0to4") for m in ("cnn_large", "cnn_small")}


def test_the_halves_of_digits_are_two_five_class_tasks():
    from pcbench.data import load_dataset
    low, high = load_dataset("digits-0to4", None, None, 0), load_dataset("digits-5to9", None, None, 0)
    assert low.num_classes == high.num_classes == 5
    for data in (low, high):
        labels = torch.cat([y for _, y, _ in data.batches("train", 256)])
        assert set(labels.tolist()) == set(range(5))
    assert 500 < low.size("train") < 700 and 500 < high.size("train") < 700


@pytest.mark.parametrize("method, overrides",
                         [("kd", {}), ("dkd", {}), ("fcfd", {}), ("pc+kd", {})])
def test_logit_terms_are_refused_across_tasks(method, overrides):
    with pytest.raises(UserError, match="compares the teacher's logits with the student's"):
        build_config({"method": method, **TRANSFER}, overrides)


def test_a_layer_of_logits_is_refused_across_tasks():
    with pytest.raises(UserError, match="fitnet reads the logits"):
        build_config({"method": "fitnet", **TRANSFER}, {"fitnet.tap": "logits"})


def test_transfer_settings_are_checked_and_the_same_task_keeps_its_hash():
    with pytest.raises(UserError, match="pick data sets of one image shape"):
        build_config({"method": "pc", "data": {"name": "digits"}, "teacher_dataset": "cifar10"}, {})
    with pytest.raises(UserError, match="use one architecture"):
        build_config({"method": "pc"}, {"train.init_from_teacher": True})
    same = build_config({"method": "pc", "teacher_dataset": "digits"}, {})
    assert same.teacher_dataset is None and not same.transfer
    assert same.hash == build_config({"method": "pc"}, {}).hash
    assert build_config({"method": "pc", **TRANSFER}, {}).hash != build_config({"method": "pc"}, {}).hash


def test_a_search_across_tasks_searches_the_feature_knobs_alone():
    _, space = prepare_search({"method": "pc", **TRANSFER}, {})
    assert "method.tau" in space.distributions
    assert not any("kd" in key or "temperature" in key for key in space.distributions)


def test_a_feature_method_distils_a_teacher_of_other_classes(half_teachers):
    config = attach(build_config({"method": "pc", **TRANSFER}, {"train.epochs": 2}),
                    half_teachers["cnn_large"])
    reporter = LocalReporter()
    final = train_trial(config, reporter)
    assert final["epoch"] == 2 and 0.0 <= final["test_acc"] <= 1.0
    assert 0.0 <= final["cka/embedding"] <= 1.0  # measured against the other task's teacher


def test_a_student_started_from_the_teacher_has_all_its_weights_but_the_classifier(half_teachers):
    record = half_teachers["cnn_small"]
    config = attach(build_config({"method": "ce", "teacher": "cnn_small", **TRANSFER},
                                 {"train.init_from_teacher": True}), record)
    assert needs_teacher(config)  # CE too: the driver must attach it
    teacher = torch.load(record.path, weights_only=True)["model"]
    torch.manual_seed(0)
    student = create_model("cnn_small", num_classes=5, in_channels=1)
    fresh_head = student.fc.weight.detach().clone()
    init_from_teacher(student, config)
    for key, value in student.state_dict().items():
        if key.startswith("fc."):
            assert not torch.equal(value, teacher[key])
        else:
            assert torch.equal(value, teacher[key]), key
    assert torch.equal(student.fc.weight, fresh_head)  # re-initialised: its own fresh weights


@pytest.mark.parametrize("suite, scratch, finetune, scratch_lr", [("transfer-demo.yaml", 20, 10, 0.05),
                                                                  ("transfer.yaml", 240, 12, 0.05),
                                                                  ("transfer-folder.yaml", 100, 48, 0.1)])
def test_the_transfer_suites_fine_tune_the_pair_that_starts_from_the_teacher(suite, scratch, finetune,
                                                                            scratch_lr, tmp_path):
    result = CliRunner().invoke(app, ["benchmark", str(SUITES_DIR / suite), "--dry-run", "--json",
                                      "--data-dir", str(tmp_path), "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    for entry in plan:  # the fine-tuning recipe's lr and length; the from-scratch recipe's otherwise
        started = entry["student_init"] == "teacher"
        assert entry["first_point"]["train.lr"] == (0.01 if started else scratch_lr), entry
        # each pair searched and re-run for its own recipe's length
        assert entry["budget"]["epochs"] == entry["final"]["epochs"] == (finetune if started else scratch)
    assert {e["student_init"] for e in plan} == {"scratch", "teacher"}
    # OT's three settings: the teacher's architecture on a new task (from its weights), a smaller
    # student on the teacher's task, a smaller student on a new task
    settings = {(e["teacher"], e["student"], e["dataset"] == e["teacher_dataset"], e["student_init"])
                for e in plan}
    assert len(settings) == 3 and {(same, init) for *_, same, init in settings} == {
        (False, "teacher"), (True, "scratch"), (False, "scratch")}
    methods = {(e["dataset"] == e["teacher_dataset"], e["student_init"]): set() for e in plan}
    for e in plan:
        methods[e["dataset"] == e["teacher_dataset"], e["student_init"]].add(e["method"])
    assert {"ce", "l2sp", "delta"} <= methods[False, "teacher"]  # fine-tuning's own baselines
    assert not {"l2sp", "delta"} & (methods[True, "scratch"] | methods[False, "scratch"])


@pytest.mark.slow
def test_the_transfer_demo_suite_runs_and_its_leaderboard_names_the_teachers_task(
        tmp_path, teacher_store, local_ray):
    result = CliRunner().invoke(app, [str(a) for a in (
        "benchmark", SUITES_DIR / "transfer-demo.yaml", "--method", "pc",
        "--samples", 1, "--epochs", 2, "--seeds", 1, "--results", tmp_path / "results",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--teachers", teacher_store.root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 3 * 2 and (trials.status == "completed").all()  # pairs x (search + final)
    assert (trials.teacher_dataset == "digits-0to4").all()
    started = trials[trials.student_init == "teacher"]
    assert set(started.teacher) == {"cnn_small"} and len(started) == 2
    assert (started.dataset == "digits-5to9").all()
    assert all(json.loads(c)["train"]["init_from_teacher"] for c in started.config)
    assert {json.loads(c)["train"]["recipe"] for c in started.config} == {"finetune-digits"}
    # the teacher's own task and a new one: the same teacher -> student pair, two studies, two rows
    scratch = trials[trials.student_init == "scratch"]
    assert sorted(scratch.dataset) == ["digits-0to4"] * 2 + ["digits-5to9"] * 2
    board = pd.read_parquet(tmp_path / "results" / "report" / "leaderboard.parquet")
    assert len(board) == 3 and set(board.student_init) == {"scratch", "teacher"}
    assert set(board.dataset) == {"digits-0to4", "digits-5to9"}
    assert board.published_acc.isna().all()  # no published number is for these settings
    markdown = (tmp_path / "results" / "report" / "leaderboard.md").read_text()
    assert "cnn_large (digits-0to4) -> cnn_small" in markdown
    assert "cnn_small (digits-0to4) -> cnn_small, from the teacher's weights" in markdown


def test_a_method_on_some_pairs_of_a_suite_runs_on_those_alone(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", str(SUITES_DIR / "transfer-demo.yaml"), "--method", "kd",
                                      "--method", "l2sp", "--dry-run", "--json",
                                      "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {(e["method"], e["dataset"], e["student_init"]) for e in plan} == {
        ("kd", "digits-0to4", "scratch"), ("l2sp", "digits-5to9", "teacher")}
