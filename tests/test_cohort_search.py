"""Cohort searches on the real local Ray instance: the same command and seed give the same
trials, whatever --concurrent is and whatever other method is searched beside it in the same
experiment. Cohorts are the default, so the default search is so."""

import json

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from pcbench.cli import app

pytestmark = pytest.mark.ray


def _search(root, teacher_store, concurrent: int, methods=("kd",)) -> pd.DataFrame:
    result = CliRunner().invoke(app, [  # the default cohort: 4
        "search", *[f"--method={m}" for m in methods], "--samples", "8", "--concurrent", str(concurrent),
        "--epochs", "3", "--seed", "0", "--results", str(root / "results"),
        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--teachers", str(teacher_store.root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_parquet(root / "results" / "trials")
    return trials.sort_values(["method", "knobs"]).reset_index(drop=True)


def test_a_default_search_gives_the_same_trials_whatever_its_concurrency_and_neighbours(
        tmp_path, teacher_store, local_ray):
    one = _search(tmp_path / "one", teacher_store, concurrent=1)
    # kd and ce searched side by side in one Tune experiment, two cohorts at a time
    both = _search(tmp_path / "two", teacher_store, concurrent=2, methods=("kd", "ce"))
    experiments = [p.name for p in (tmp_path / "two" / "results" / "ray").iterdir() if p.is_dir()]
    assert len(experiments) == 1 and experiments[0].endswith("-kd-ce")
    assert both.groupby("method").size().to_dict() == {"ce": 8, "kd": 8}
    two = both[both.method == "kd"].reset_index(drop=True)
    assert len(one) == 8 and (one.cohort_size == 4).all()
    # synchronous halving at the rungs (epochs 1 and 2 of 3): 4 -> 2 -> 1 member of each cohort
    assert sorted(one.status) == ["completed"] * 2 + ["stopped"] * 6
    assert [json.loads(k) for k in one.knobs] == [json.loads(k) for k in two.knobs]
    assert one.status.tolist() == two.status.tolist()
    assert one.val_acc.tolist() == two.val_acc.tolist()  # bit-identical on a CPU
    for root, method in (("one", "kd"), ("two", "kd"), ("two", "ce")):
        study = optuna.load_study(study_name=f"pcbench-digits-cnn_large-to-cnn_small-{method}",
                                  storage=f"sqlite:///{tmp_path / root / 'optuna.db'}")
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8  # every member told


@pytest.mark.slow
def test_a_cohort_runs_as_one_ddp_job_over_two_workers(tmp_path, teacher_store, local_ray):
    result = CliRunner().invoke(app, [
        # two cohorts one after the other: a DDP cohort's actor is never reused
        "search", "--method", "kd", "--samples", "4", "--cohort", "2", "--workers", "2", "--concurrent", "1",
        "--cpus-per-trial", "1", "--epochs", "2", "--results", str(tmp_path / "results"),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--teachers", str(teacher_store.root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 4 and (trials.workers == 2).all() and (trials.cohort_size == 2).all()
    assert trials.trial_id.str.rsplit("-m", n=1).str[0].nunique() == 2  # a Tune trial, a DDP job, each
    # halved at the rung (epoch 1 of 2) on the members' all-reduced validation accuracy
    assert sorted(trials.status) == ["completed"] * 2 + ["stopped"] * 2 and trials.val_acc.notna().all()
