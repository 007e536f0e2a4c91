"""The whole loop on a real local Ray instance, a real SQLite MLflow store and Parquet files."""

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pcbench.cli import app

# The Ray path is the same for every method; these cover the extra modules (OT, FCFD), the
# layer roles (PC), a teacher-free one (CE) and a logit one (DKD). tests/test_cohort.py
# trains every registered method in the engine.
METHODS = ["ce", "kd", "pc", "ot", "fcfd", "dkd"]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, teacher_store, local_ray):
    root = tmp_path_factory.mktemp("work")
    return {"results": root / "results", "uri": f"sqlite:///{root / 'mlflow.db'}",
            "teachers": teacher_store.root}


def _pcbench(workspace, *args):
    common = ["--results", str(workspace["results"]), "--tracking-uri", workspace["uri"],
              "--teachers", str(workspace["teachers"])]
    result = CliRunner().invoke(app, [*args, *common])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _new_rows(workspace, *args) -> pd.DataFrame:
    """Run a command; the trial rows it wrote (earlier tests of the module share the store)."""
    folder = workspace["results"] / "trials"
    before = set(pd.read_parquet(folder).trial_id) if folder.exists() else set()
    _pcbench(workspace, *args)
    trials = pd.read_parquet(folder)
    return trials[~trials.trial_id.isin(before)]


@pytest.fixture(scope="module")
def searched(workspace):
    methods = [a for m in METHODS for a in ("--method", m)]
    _pcbench(workspace, "search", *methods, "--samples", "1", "--concurrent", "2",
             "--epochs", "2", "--seed", "1", "--experiment", "e2e")
    # later tests of the module search into the same store: theirs are other search ids
    return {**workspace, "search_id": pd.read_parquet(workspace["results"] / "trials").search_id.iloc[0]}


def test_search_logs_one_parent_and_a_child_per_trial_with_histories(searched):
    client = MlflowClient(searched["uri"])
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("pcbench.kind") == "search"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1 == len(METHODS)
    assert sorted({r.data.tags["pcbench.method"] for r in children}) == sorted(METHODS)
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert tags["pcbench.dataset"] == "digits" and tags["pcbench.student"] == "cnn_small"
        assert params["method.name"] == tags["pcbench.method"] and params["train.epochs"] == "2"
        assert len(tags["pcbench.teacher_sha256"]) == 64  # CE's too: measured against it
        # diagnostics every epoch: CKA at the embedding (and the method's taps), rank agreement
        assert len(client.get_metric_history(child.info.run_id, "cka/embedding")) == len(
            client.get_metric_history(child.info.run_id, "rank_agreement")) >= 1
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert client.get_metric_history(child.info.run_id, "loss/ce")
        if tags["pcbench.status"] == "completed":
            # a search trial never evaluates the test split: no test metric exists
            assert len(history) == 2 and "test_acc" not in child.data.metrics
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert "config.yaml" in artifacts


def test_search_writes_trial_and_epoch_rows(searched):
    trials = pd.read_parquet(searched["results"] / "trials")
    epochs = pd.read_parquet(searched["results"] / "epochs")
    trials = trials[trials.search_id == searched["search_id"]]
    epochs = epochs[epochs.search_id == searched["search_id"]]
    assert len(trials) == len(METHODS) and set(trials.method) == set(METHODS)
    assert set(trials.status) <= {"completed", "stopped"}
    assert len(epochs) == trials.epochs_run.sum()
    # recorded as they went: one part file per trial, written when the trial ended
    parts = {p.stem for p in (searched["results"] / "trials").glob("*.parquet")}
    assert {f"{r.search_id}-search-{r.trial_id}" for r in trials.itertuples()} <= parts
    pc_trials = trials[trials.method == "pc"]
    first = json.loads(pc_trials.sort_values("finished_at").iloc[0].knobs)
    assert set(first) >= {"method.tau", "method.weight", "method.tap"}
    assert (trials.selection_split == "val").all() and (trials.scoring_rule == "last_epoch").all()
    terms = json.loads(epochs[epochs.method == "fcfd"].iloc[0].loss_terms)
    assert set(terms) == {"ce", "mix", "feat"}  # fcfd alone: the paper's objective less its KD term
    assert set(json.loads(epochs[epochs.method == "dkd"].iloc[0].loss_terms)) == {"ce", "tckd", "nckd"}
    assert epochs.cka.between(0, 1 + 1e-6).all() and epochs.rank_agreement.between(-1, 1).all()
    assert trials.cka.notna().all()  # the last epoch's, on every trial row
    fcfd_taps = json.loads(epochs[epochs.method == "fcfd"].iloc[0].cka_taps)
    assert "embedding" in fcfd_taps and len(fcfd_taps) > 1  # and the stages FCFD reads


def test_report_ranks_every_method_on_its_validation_choice(searched, tmp_path):
    result = CliRunner().invoke(app, ["report", "--results", str(searched["results"]),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    board = pd.read_parquet(tmp_path / "leaderboard.parquet")
    assert sorted(board.method) == sorted(METHODS)
    # a search's board ranks on validation: searches never evaluate the test split
    assert board.val_acc.notna().all() and board.test_acc_mean.isna().all() and (board.trials == 1).all()
    assert (board.protocol == "search").all()
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert all(f"| {m} |" in markdown for m in METHODS)


@pytest.mark.slow
def test_a_search_of_two_worker_ddp_trials_runs_every_trial(workspace):
    """Each trial a Ray Train DDP job, two at once, on the shared local Ray instance. The third
    trial can start only once a finished trial's workers have given their CPUs back: Tune
    kills a finished DDP trial's Train controller, and Train's cleaner must free its placement
    group."""
    ddp = _new_rows(workspace, "search", "--method", "fcfd", "--samples", "3", "--concurrent", "2",
                    "--workers", "2", "--epochs", "1", "--cpus-per-trial", "1",
                    "--experiment", "e2e-ddp")
    assert len(ddp) == 3 and (ddp.workers == 2).all() and (ddp.status == "completed").all()
    history = MlflowClient(workspace["uri"]).get_metric_history(ddp.iloc[0].mlflow_run_id, "val_acc")
    assert len(history) == 1


def test_no_ray_runs_the_same_engine_in_process(workspace):
    """Only the rows this command writes count: earlier tests of the module wrote pc rows too."""
    [row] = _new_rows(workspace, "run", "--method", "pc", "--no-ray", "--epochs", "2",
                      "--experiment", "e2e-no-ray").itertuples()
    assert json_field(pd.Series([row.config]), "method", "name")[0] == "pc"
    assert (row.status, row.epochs_run, row.workers) == ("completed", 2, 1)
    client = MlflowClient(workspace["uri"])
    [parent] = client.search_runs([client.get_experiment_by_name("e2e-no-ray").experiment_id],
                                  filter_string="tags.`pcbench.kind` = 'run'")
    assert parent.data.params["ray"] == "False"  # in this process, not on Ray
    assert row.mlflow_run_id in {r.info.run_id for r in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}


def json_field(column, *path):
    def get(text):
        value = json.loads(text)
        for key in path:
            value = value[key]
        return value
    return column.map(get)


def test_each_method_search_keeps_its_optuna_study_in_a_database(searched):
    import optuna

    storage = searched["uri"].replace("mlflow.db", "optuna.db")  # beside the MLflow store
    trials = pd.read_parquet(searched["results"] / "trials")
    for method in ("pc", "fcfd"):
        study = optuna.load_study(study_name=f"e2e-{method}", storage=storage)
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(finished) == 1
        ours = trials[(trials.method == method) & (trials.search_id == searched["search_id"])]
        assert sorted(t.value for t in finished) == pytest.approx(sorted(ours.val_acc))
        knobs = [json.loads(k) for k in ours.knobs]
        assert sorted(t.params["method.weight"] for t in finished) == pytest.approx(
            sorted(k["method.weight"] for k in knobs))


def test_a_diverged_trial_fails_everywhere_and_is_never_ranked(workspace, tmp_path):
    """ce with a weight of 1e30 blows up in its first epoch; kd beside it is unaffected."""
    import optuna

    mine = _new_rows(workspace, "search", "--method", "ce", "--method", "kd", "--samples", "2",
                     "--concurrent", "2", "--epochs", "2", "--set", "ce.w_ce=1e30",
                     "--experiment", "e2e-diverged")
    ce, kd = mine[mine.method == "ce"], mine[mine.method == "kd"]
    assert len(ce) == 2 and (ce.status == "diverged").all()
    assert ce.error.str.fullmatch(r"diverged: non-finite loss at epoch 1, step \d+").all()
    assert len(kd) == 2 and set(kd.status) <= {"completed", "stopped"} and (kd.status == "completed").any()
    client = MlflowClient(workspace["uri"])
    for row in ce.itertuples():
        run = client.get_run(row.mlflow_run_id)
        assert run.info.status == "FAILED" and run.data.tags["pcbench.status"] == "diverged"
    storage = workspace["uri"].replace("mlflow.db", "optuna.db")
    states = {m: [t.state for t in optuna.load_study(study_name=f"e2e-diverged-{m}", storage=storage).trials]
              for m in ("ce", "kd")}
    assert states == {"ce": [optuna.trial.TrialState.FAIL] * 2, "kd": [optuna.trial.TrialState.COMPLETE] * 2}
    # (a trial stopped early by ASHA is told COMPLETE with its last value, as Ray does)
    from pcbench.results import leaderboard
    board = leaderboard(mine).set_index("method")
    assert board.loc["kd", "val_acc"] > 0 and board.loc["ce", "diverged"] == 2
    assert pd.isna(board.loc["ce", "test_acc_mean"]) and board.index[0] == "kd"  # shown, never ranked


def test_the_local_instance_leaves_its_auth_token_readable_by_its_user_alone(local_ray):
    import stat
    from pathlib import Path

    token = Path.home() / ".ray" / "auth_token"
    if not token.exists():
        pytest.skip("this Ray runs without token authentication")
    assert stat.S_IMODE(token.stat().st_mode) & 0o077 == 0  # anyone with it can submit work
