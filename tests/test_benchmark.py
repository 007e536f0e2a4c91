"""`pcbench benchmark`: equal search budgets, selection on validation, the winners re-run with
seeds on the full training set, one MLflow parent run, mean +- std on the leaderboard. On a
real local Ray instance, a real SQLite MLflow store, real Parquet files."""

import json
import re

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pcbench.cli import app
from pcbench.data import cifar
from pcbench.models import create_model
from pcbench.suite import SUITES_DIR

pytestmark = pytest.mark.ray


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def demo_benchmark(tmp_path_factory, teacher_store, local_ray):
    root = tmp_path_factory.mktemp("bench")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # in cohorts (the CIFAR suite below runs one trial per process)
    _invoke("benchmark", SUITES_DIR / "demo.yaml", "--method", "kd", "--method", "pc",
            "--samples", 2, "--epochs", 2, "--seeds", 2, "--cohort", 2, "--results", root / "results",
            "--tracking-uri", uri, "--teachers", teacher_store.root)
    return {"results": root / "results", "uri": uri}


def test_each_method_is_searched_then_its_winner_rerun_with_seeds_on_all_training_data(demo_benchmark):
    trials = pd.read_parquet(demo_benchmark["results"] / "trials")
    assert (trials.suite == "demo").all()
    for method in ("kd", "pc"):
        search = trials[(trials.method == method) & (trials.phase == "search")]
        finals = trials[(trials.method == method) & (trials.phase == "final")]
        assert len(search) == 2 and len(finals) == 2
        completed = search[search.status == "completed"]
        winner = completed.sort_values(["val_acc", "finished_at"], ascending=[False, True]).iloc[0]
        assert set(finals.selected_trial) == {winner.trial_id}
        assert sorted(finals.seed) == [1, 2]  # never the search's seed (0)
        for config in map(json.loads, finals.config):
            assert config["data"]["val_fraction"] == 0.0  # the full training set
            assert config["method"] == json.loads(winner.config)["method"]
        assert finals.val_acc.isna().all() and finals.test_acc.notna().all()


def test_search_trials_never_touch_test_and_the_footnote_says_what_the_seeds_can_tell(demo_benchmark):
    trials = pd.read_parquet(demo_benchmark["results"] / "trials")
    epochs = pd.read_parquet(demo_benchmark["results"] / "epochs")
    search = trials[trials.phase == "search"]
    assert len(search) == 4 and search.test_acc.isna().all() and search.val_acc.notna().all()
    assert epochs[epochs.trial_id.isin(search.trial_id)].test_acc.isna().all()
    client = MlflowClient(demo_benchmark["uri"])
    for row in trials.itertuples():
        metrics = client.get_run(row.mlflow_run_id).data.metrics
        assert ("test_acc" in metrics) == (row.phase == "final"), (row.phase, sorted(metrics))
    markdown = (demo_benchmark["results"] / "report" / "leaderboard.md").read_text()
    assert "Holm" in markdown and "detect" in markdown and "| 2/2 |" in markdown


def test_each_seed_of_every_method_trains_as_one_paired_cohort(demo_benchmark):
    trials = pd.read_parquet(demo_benchmark["results"] / "trials")
    finals = trials[trials.phase == "final"]
    assert len(finals) == 4 and (finals.cohort_size == 2).all() and (finals.status == "completed").all()
    # one cohort per seed, holding both methods: members <cohort trial>-m<i>
    cohorts = finals.assign(cohort=finals.trial_id.str.rsplit("-m", n=1).str[0]).groupby("cohort")
    assert sorted(cohorts.seed.first()) == [1, 2]
    for _, members in cohorts:
        assert sorted(members.method) == ["kd", "pc"] and members.seed.nunique() == 1


def test_leaderboard_shows_mean_and_std_over_the_seeds(demo_benchmark):
    board = pd.read_parquet(demo_benchmark["results"] / "report" / "leaderboard.parquet")
    trials = pd.read_parquet(demo_benchmark["results"] / "trials")
    assert sorted(board.method) == ["kd", "pc"]
    for row in board.itertuples():
        finals = trials[(trials.method == row.method) & (trials.phase == "final")]
        assert row.seeds == 2 and row.trials == 2
        assert row.test_acc_mean == pytest.approx(finals.test_acc.mean())
        assert row.test_acc_std == pytest.approx(finals.test_acc.std())
        # the diagnostics of the same final runs' last epochs
        assert row.cka == pytest.approx(finals.cka.mean()) and 0 < row.cka <= 1
        assert row.rank_agreement == pytest.approx(finals.rank_agreement.mean())
    markdown = (demo_benchmark["results"] / "report" / "leaderboard.md").read_text()
    assert "±" in markdown and re.search(r"\|\s*CKA\s*\|", markdown)
    html = (demo_benchmark["results"] / "report" / "leaderboard.html").read_text()
    assert 'data-plot="accuracy-cka"' in html


def test_the_board_says_which_differences_are_real(demo_benchmark):
    report = demo_benchmark["results"] / "report"
    board = pd.read_parquet(report / "leaderboard.parquet")
    assert {"ci95_low", "ci95_high", "p_vs_best", "tied_with_best"} <= set(board.columns)
    best = board.iloc[board.test_acc_mean.idxmax()]
    assert best.tied_with_best and best.p_vs_best == 1.0
    assert (board.ci95_low <= board.test_acc_mean).all() and (board.test_acc_mean <= board.ci95_high).all()
    tex = (report / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and f"\\textbf{{{100 * best.test_acc_mean:.2f}" in tex
    experiment = MlflowClient(demo_benchmark["uri"]).get_experiment_by_name("pcbench-benchmark-demo")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_one_parent_run_holds_every_trial_of_the_suite(demo_benchmark):
    client = MlflowClient(demo_benchmark["uri"])
    experiment = client.get_experiment_by_name("pcbench-benchmark-demo")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("pcbench.kind") == "benchmark"]
    assert len(parents) == 1 and parents[0].data.tags["pcbench.suite"] == "demo"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1 == 8  # 2 methods x (2 search trials + 2 seeds)
    assert sorted(r.data.tags["pcbench.phase"] for r in children).count("final") == 4


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    cifar.write("cifar100", root, per_class=2, test_per_class=1)
    return root


@pytest.mark.slow
def test_the_cifar100_suite_runs_on_a_directory_in_the_real_format(cifar100_dir, tmp_path, local_ray):
    teachers = tmp_path / "teachers"
    pairs = [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]  # two families, two stage counts
    for model, _ in pairs:
        # RepDistiller's checkpoint format, imported through the CLI
        torch.save({"model": create_model(model).state_dict(), "epoch": 240}, tmp_path / f"{model}.pth")
        _invoke("teacher", "import", tmp_path / f"{model}.pth", "--model", model,
                "--dataset", "cifar100", "--data-dir", cifar100_dir, "--teachers", teachers)
    _invoke("benchmark", SUITES_DIR / "cifar100.yaml", "--data-dir", cifar100_dir,
            *[a for t, s in pairs for a in ("--pair", f"{t}->{s}")],
            "--method", "kd", "--samples", 1, "--epochs", 1, "--seeds", 1, "--final-epochs", 1,
            "--gpus-per-trial", 0, "--cpus-per-trial", 1, "--concurrent", 2,
            # the suite's GPU settings (bf16 autocast, channels_last) only slow a CPU down
            "--set", "train.precision=fp32", "--set", "train.channels_last=false",
            "--results", tmp_path / "results", "--teachers", teachers,
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert sorted(zip(trials.teacher, trials.student)) == sorted(pairs * 2)
    assert (trials.status == "completed").all() and (trials.dataset == "cifar100").all()
    config = json.loads(trials.iloc[0].config)
    assert config["train"]["recipe"] == "cifar100-crd" and config["train"]["schedule"] == "step"
    board = pd.read_parquet(tmp_path / "results" / "report" / "leaderboard.parquet")
    # the CRD table's KD numbers are 240-epoch ones: a footnote of this short run, never its column
    assert len(board) == 2 and board.published_acc.isna().all() and board.published_elsewhere.notna().all()
