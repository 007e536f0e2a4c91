"""Results at a folder or a URI opened by pyarrow's filesystems: the Parquet store, a real
search whose Ray trial folders land there, the report read back through the URI, and a URI
pyarrow cannot open refused before anything runs; a database URL whose driver is missing
refused the same way."""

import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timezone

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pcbench import checks, storage
from pcbench.cli import app
from pcbench.errors import UserError
from pcbench.results import ResultsStore
from pcbench.results.store import TRIALS_SCHEMA
from pcbench.session import default_optuna_storage
from pcbench.storage import resolve


def _row(trial, method, val):
    return {**{f.name: None for f in TRIALS_SCHEMA}, "search_id": "s", "trial_id": trial,
            "method": method, "dataset": "digits", "teacher": "cnn_large", "student": "cnn_small",
            "knobs": json.dumps({"method.tau": 0.5}), "val_acc": val, "status": "completed",
            "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}


@pytest.mark.parametrize("form", ["uri", "path"])
def test_store_round_trip_through_a_file_uri_and_a_folder(form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = f"file://{tmp_path}/res" if form == "uri" else "res"  # a relative folder
    store = ResultsStore(value)
    assert store.location.is_local and store.root == str(tmp_path / "res")
    rows = [_row("a", "pc", 0.9), _row("b", "kd", 0.8)]
    written = store.write("trials", rows[:1], "part1")
    store.write("trials", rows[1:], "part2")
    assert written == str(tmp_path / "res" / "trials" / "part1.parquet")
    back = ResultsStore(value).read("trials").sort_values("trial_id")
    assert back.trial_id.tolist() == ["a", "b"] and back.val_acc.tolist() == [0.9, 0.8]
    assert back.finished_at.iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    # whole part files, no temporary names left behind; plain pandas reads the folder
    names = sorted(p.name for p in (tmp_path / "res" / "trials").iterdir())
    assert names == ["part1.parquet", "part2.parquet"]
    assert pq.read_schema(tmp_path / "res" / "trials" / "part1.parquet").names == TRIALS_SCHEMA.names
    assert len(pd.read_parquet(tmp_path / "res" / "trials")) == 2
    assert ResultsStore(value).read("epochs").empty  # a table never written: empty, same schema


def test_a_remote_store_writes_in_place_and_keeps_the_uri_for_ray(monkeypatch):
    # pyarrow's in-memory mock:// filesystem stands in for an object store (no network)
    monkeypatch.setattr(storage, "OBJECT_STORES", {"mock"})
    monkeypatch.setattr(storage, "uuid", None)  # no temporary name is ever made
    store = ResultsStore("mock:///bucket/res")
    assert not store.location.is_local
    store.write("trials", [_row("a", "pc", 0.9)], "p")
    assert store.parts("trials") == ["bucket/res/trials/p.parquet"]
    assert store.read("trials").trial_id.tolist() == ["a"]
    assert resolve("mock:///bucket/res").join("ray").uri == "mock:///bucket/res/ray"  # Ray's storage
    assert resolve("file:///tmp/res/").join("ray").uri == "/tmp/res/ray"
    s3 = resolve("s3://bucket/res?region=us-east-1")  # a region: no network to build it
    assert isinstance(s3.fs, pafs.S3FileSystem) and s3.path == "bucket/res"
    assert s3.join("ray").uri == "s3://bucket/res/ray?region=us-east-1"
    # SQLite cannot live on an object store: the study goes to the working directory
    assert default_optuna_storage("http://mlflow:5000", resolve("mock:///bucket/res")).endswith("/optuna.db")


def test_unknown_scheme_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="pyarrow has no filesystem for foo://"):
        resolve("foo://bar")
    for args in (["search", "--method", "kd", "--results", "foo://bar"],
                 ["run", "--method", "kd", "--no-ray", "--results", "foo://bar"],
                 ["report", "--results", "foo://bar"]):
        result = CliRunner().invoke(app, args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, result.output + repr(result.exception)
        assert len(lines) == 1 and "--results foo://bar: pyarrow has no filesystem for foo://" in lines[0]
        assert list(tmp_path.iterdir()) == []  # no mlflow.db, no optuna.db, no results


def _without(monkeypatch, *modules):
    """As on a machine where `modules` are not installed (for find_spec: the check's only probe)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in modules else find_spec(name, *a, **k))


@pytest.mark.parametrize(("flag", "uri", "module", "install"), [
    ("--tracking-uri", "postgresql+psycopg://pcb:s3cret@db:5432/mlflow", "psycopg", "psycopg psycopg-binary"),
    ("--optuna-storage", "postgresql+psycopg2://pcb:s3cret@db/optuna", "psycopg2", "psycopg2-binary"),
    ("--optuna-storage", "mysql://pcb:s3cret@db/optuna", "MySQLdb", "mysqlclient"),
])
def test_a_database_url_without_its_driver_is_one_line_exit_2(flag, uri, module, install, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    _without(monkeypatch, module)
    result = CliRunner().invoke(app, ["search", "--method", "kd", flag, uri])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert len(lines) == 1 and f"its driver {module} is not installed; pip install {install}" in lines[0]
    assert "s3cret" not in result.output and "pcb:***@db" in lines[0]  # the password stays out
    assert list(tmp_path.iterdir()) == []  # nothing written (and so Ray never started)


def test_the_driver_check_follows_sqlalchemys_default_and_imports_no_driver():
    """`postgresql://` means psycopg2 under SQLAlchemy 2.0 and psycopg under 2.1: the check asks
    SQLAlchemy, and knows the package of each default driver. It finds, never imports, the driver."""
    from sqlalchemy.engine.url import make_url

    for scheme in ("postgresql", "mysql", "mssql", "oracle"):
        assert make_url(f"{scheme}://h/db").get_dialect().driver in checks.DRIVERS
    probe = ("import sys; from pcbench.checks import check_optuna_storage, check_tracking_uri; "
             "check_optuna_storage('postgresql+psycopg://u:p@h/db'); "
             "check_tracking_uri('postgresql+psycopg://u:p@h/db'); "
             "print(sorted(m for m in sys.modules if m.startswith(('psycopg', 'MySQLdb'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr  # psycopg (test extra) found, not loaded
    with pytest.raises(UserError, match=r"--optuna-storage: not a database URL SQLAlchemy can use"):
        checks.check_optuna_storage("postgresql+nodriver://u:p@h/db")


@pytest.mark.ray
def test_search_and_report_through_a_file_uri(tmp_path, teacher_store, local_ray):
    folder = tmp_path / "shared" / "results"
    uri = f"file://{folder}"
    common = ["--results", uri, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--teachers", str(teacher_store.root)]
    result = CliRunner().invoke(app, ["search", "--method", "kd", "--samples", "2", "--epochs", "2",
                                      "--concurrent", "2", *common])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_parquet(folder / "trials")
    assert len(trials) == 2 and set(trials.method) == {"kd"}
    assert len(pd.read_parquet(folder / "epochs")) == trials.epochs_run.sum()
    # Ray's experiment and trial folder (one cohort of the two), with its members' checkpoints,
    # under <results>/ray
    checkpoints = list((folder / "ray").glob("*-kd/*/checkpoint_*"))
    assert len({c.parent for c in checkpoints}) == 1, sorted((folder / "ray").rglob("*"))
    saved = {p.name for c in checkpoints for p in c.iterdir()}
    assert "running.json" in saved and any(name.startswith("member-") for name in saved)
    report = CliRunner().invoke(app, ["report", "--results", uri])
    assert report.exit_code == 0, report.output + repr(report.exception)
    board = pd.read_parquet(folder / "report" / "leaderboard.parquet")  # default: <results>/report
    assert board.method.tolist() == ["kd"] and board.trials.tolist() == [2]
