"""Two commands started at the same moment on a new SQLite store: both work (the store is
created once, under a lock, before any run is made)."""

import subprocess
import sys
import time

OPEN_AT_ONCE = """
import pathlib, sys, time
import optuna
from pcbench.tracking import Tracker
from pcbench.storage import sqlite_lock
uri, optuna_uri, folder, me = sys.argv[1:]
pathlib.Path(folder, f"ready-{me}").touch()
while not pathlib.Path(folder, "go").exists():
    time.sleep(0.005)
tracker = Tracker(uri, "race")
tracker.end_run(tracker.start_run(f"run-{me}", {}, {}))
with sqlite_lock(optuna_uri):
    optuna.storages.RDBStorage(optuna_uri)
"""


def test_two_commands_create_one_new_sqlite_store_at_once(tmp_path):
    """Without the lock this crashed one of the two in MLflow's schema migration."""
    uri, optuna_uri = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    racers = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, uri, optuna_uri, str(tmp_path), str(i)],
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(r.poll() is None for r in racers)
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both open the store in the same few milliseconds
    for racer in racers:
        assert racer.wait(timeout=120) == 0, racer.stderr.read()[-3000:]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]
