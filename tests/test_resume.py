"""A driver that dies loses nothing it had finished: `pcbench search` as a real process on its
own local Ray instance, killed with SIGKILL once its first trial has landed and resumed with
`--resume`, or stopped with SIGINT."""

import builtins
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray
EXPERIMENT = "resume-test"


def _command(root: Path, teachers: Path, *extra: str, cohort: int = 1, epochs: int = 2) -> list[str]:
    # by default one trial per process (ASHA), so trials land one by one: a cohort of 3 lands
    # all at once, which leaves no moment between them to kill the driver in
    return [sys.executable, "-m", "pcbench", "search", "--method", "kd", "--samples", "3",
            "--cohort", str(cohort), "--concurrent", "1", "--epochs", str(epochs), "--seed", "0",
            "--experiment", EXPERIMENT, "--results", str(root / "results"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--teachers", str(teachers), *extra]


class _Planted:
    """A pickle that, once loaded, leaves a file behind: what an attacker with write access to
    a shared store would put there."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _plant_pickles(store: Path, marker: Path) -> set[Path]:
    """Every pickle in the store replaced by the planted one, and one more of each name Tune
    restores from in every folder."""
    payload = pickle.dumps(_Planted(marker))
    folders = [store, *(p for p in store.rglob("*") if p.is_dir())]
    targets = {*store.rglob("*.pkl"), *(f / "tuner.pkl" for f in folders),
               *(f / "searcher-state-planted.pkl" for f in folders), *(f / "params.pkl" for f in folders)}
    for target in targets:
        target.write_bytes(payload)
    return targets


def _resume(root: Path, teachers: Path, **options) -> subprocess.CompletedProcess:
    return subprocess.run(_command(root, teachers, "--resume", **options), capture_output=True, text=True,
                          timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True,  # its own group: Ray's processes go with it
                            preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    """Ctrl-C's and a closed terminal's default actions, as a shell gives a command it starts:
    an ignored SIGINT or SIGHUP is inherited (a test run under nohup, or started with & without
    job control, ignores them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _wait_for_trials(results: Path, count: int, process: subprocess.Popen, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while len(list((results / "trials").glob("*.parquet"))) < count:
        assert process.poll() is None, "the search ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no {count} trials landed in {timeout_s} s"
        time.sleep(0.5)


def _mlflow_runs(root: Path):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_a_search_killed_with_sigkill_resumes_where_it_was(tmp_path, teacher_store):
    first = _start(_command(tmp_path, teacher_store.root), tmp_path / "first.log")
    try:
        _wait_for_trials(tmp_path / "results", 1, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    landed = set(pd.read_parquet(tmp_path / "results" / "trials").trial_id)
    assert landed  # recorded as it went: what finished before the kill is on disk
    marker = tmp_path / "planted-pickle-ran"
    planted = _plant_pickles(tmp_path / "results", marker)
    # as a driver killed between Optuna's ask (parameters sampled) and the searcher's mark leaves
    # it: a RUNNING trial of no search, which no Tune trial ran
    optuna.load_study(study_name=f"{EXPERIMENT}-kd", storage=f"sqlite:///{tmp_path / 'optuna.db'}").ask(
        {"method.temperature": optuna.distributions.FloatDistribution(1.0, 8.0)})

    resumed = _resume(tmp_path, teacher_store.root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not marker.exists()  # no pickle in the store was loaded
    for path in planted:
        path.unlink(missing_ok=True)  # out of the tables' folders, for the reads below
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 3 and trials.trial_id.is_unique and trials.search_id.nunique() == 1
    assert landed <= set(trials.trial_id)  # kept, not re-run
    runs = _mlflow_runs(tmp_path)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    assert [r.info.status for r in runs if r.data.tags.get("pcbench.kind") == "search"] == ["FINISHED"]
    assert set(trials.mlflow_run_id) <= {r.info.run_id for r in runs if r.info.status == "FINISHED"}
    study = optuna.load_study(study_name=f"{EXPERIMENT}-kd",
                              storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == len(trials)  # each trial run told once, none twice
    # one the dead driver asked for is adopted or, if none was left to run or it was never
    # marked, failed: nothing stays RUNNING
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [
    (lambda pid: os.killpg(pid, signal.SIGINT), 130),  # as Ctrl-C in a terminal: the whole group
    (lambda pid: os.kill(pid, signal.SIGTERM), 143),  # as a scheduler (Slurm, Kubernetes) ends a job
    (lambda pid: os.kill(pid, signal.SIGHUP), 129),  # its terminal closed
], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_whole_command_and_says_how_to_resume(tmp_path, teacher_store, stop, code):
    log = tmp_path / "search.log"
    # long enough trials that the command is still running when the signal comes
    process = _start(_command(tmp_path, teacher_store.root, "--method", "ce", "--epochs", "8"), log)
    try:
        _wait_for_trials(tmp_path / "results", 1, process)
        stop(process.pid)  # after Ray started: its own SIGTERM handler must not win
        started = time.monotonic()
        assert process.wait(timeout=60) == code, log.read_text()
        assert time.monotonic() - started < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "--resume" in log.read_text()
    runs = _mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("pcbench.kind") == "search"]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}  # in flight: KILLED
    methods = set(pd.read_parquet(tmp_path / "results" / "trials").method)
    assert "ce" not in methods  # kd was stopped, and ce never started


@pytest.mark.slow
def test_a_cohort_in_flight_goes_on_from_its_members_checkpoints(tmp_path, teacher_store):
    """Killed while its one cohort of three trains, a cohort search resumes that cohort, every
    member from its last checkpoint, under the trial ids and MLflow runs it had."""
    first = _start(_command(tmp_path, teacher_store.root, cohort=3, epochs=8), tmp_path / "first.log")
    experiment = tmp_path / "results" / "ray"
    try:
        deadline = time.monotonic() + 240
        while not list(experiment.glob("*/*/checkpoint_*")):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not list((tmp_path / "results").glob("trials/*.parquet"))  # the cohort had not landed

    resumed = _resume(tmp_path, teacher_store.root, cohort=3, epochs=8)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 3 and trials.trial_id.is_unique
    continued = [folder for folder in experiment.glob("*/*") if (folder / "params.json").exists()
                 and "resumes" in json.loads((folder / "params.json").read_text())]
    assert len(continued) == 1  # the cohort, continued, not asked again
    first_result = json.loads((continued[0] / "result.json").read_text().splitlines()[0])
    assert first_result["epoch"] > 1  # from its checkpoint, not from the start
    first_id = json.loads((continued[0] / "params.json").read_text())["resumes"]
    assert set(trials.trial_id) == {f"{first_id}-m{i}" for i in range(3)}  # the members' first ids
    runs = _mlflow_runs(tmp_path)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len([r for r in runs if r.data.tags.get("pcbench.kind") != "search"]) == 3
    epochs = pd.read_parquet(tmp_path / "results" / "epochs")
    # no epoch recorded twice, and every epoch from the checkpoint on (an epoch whose checkpoint
    # landed after the dead driver's last report can be missing: the gap the note names)
    assert epochs.groupby("trial_id").epoch.apply(lambda e: e.is_unique).all()
    longest = epochs.groupby("trial_id").epoch.apply(sorted).map(len).idxmax()
    assert set(range(first_result["epoch"], 9)) <= set(epochs[epochs.trial_id == longest].epoch)


def _trial_processes(marker: str) -> list[int]:
    """This test's Tune trial actors (function trainables run in `ray::ImplicitFunc`; Ray's
    processes inherit the environment of the command that started the instance)."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if (process / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc") and \
                    marker.encode() in (process / "environ").read_bytes():
                found.append(int(process.name))
        except OSError:  # ended meanwhile, or another user's
            continue
    return found


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_goes_on_from_its_checkpoint_with_one_line(tmp_path, teacher_store):
    log, marker = tmp_path / "search.log", f"PCBENCH_TEST_MARKER={tmp_path}"
    os.environ["PCBENCH_TEST_MARKER"] = str(tmp_path)  # inherited by the command and Ray's processes
    try:
        # 30 epochs of about 0.3 s: the trial is still training when its first checkpoint lands
        search = _start(_command(tmp_path, teacher_store.root, "--samples", "1", epochs=30), log)
    finally:
        del os.environ["PCBENCH_TEST_MARKER"]
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "results" / "ray").glob("*/*/checkpoint_*")):
            assert search.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        workers = _trial_processes(marker)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer or a pre-empted node would
        assert search.wait(timeout=300) == 0, log.read_text()
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    output = log.read_text()
    assert output.count("lost its process") == 1, output
    assert "Traceback" not in output and "ActorDiedError" not in output.replace(
        output[output.index("lost its process"):].splitlines()[0], ""), output
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 1 and trials.status.iloc[0] == "completed" and trials.epochs_run.iloc[0] == 30
