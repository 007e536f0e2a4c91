"""Every bad input: exit code 2, one line on stderr that names the fix, nothing written.
In-process (CliRunner) for speed; tests/test_cli_errors.py runs the classic cases as real
processes and checks that Ray never starts."""

import http.server
import os
import sqlite3
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from pcbench.checks import check_address
from pcbench.cli import app
from pcbench.data import cifar

SUITE = ("name: t\ndataset: digits\npairs: [{teacher: cnn_large, student: cnn_small}]\n"
         "methods: [ce]\nbudget: {trials: 1}\n")


def _files(tmp_path):
    (tmp_path / "bad.yaml").write_text("knobs:\n  method.tau: {type: float, low: 0.1, high: [\n")
    (tmp_path / "unknown.yaml").write_text("knobs:\n  method.sharpness: {type: float, low: 0.1, high: 1.0}\n")
    (tmp_path / "random.bin").write_bytes(os.urandom(256) + b"\xff\xfe")
    (tmp_path / "notsqlite.txt").write_text("hello\n")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "twice.yaml").write_text(SUITE.replace("methods: [ce]", "methods: [ce, kd, ce]"))
    (tmp_path / "pairtwice.yaml").write_text(SUITE.replace(
        "pairs: [{teacher: cnn_large, student: cnn_small}]",
        "pairs: [{teacher: cnn_large, student: cnn_small}, {teacher: cnn_large, student: cnn_small}]"))
    (tmp_path / "pairmethods.yaml").write_text(SUITE.replace(
        "student: cnn_small}]", "student: cnn_small, methods: [kd, kd]}]"))
    stores = (("mlflowlike.db", ("experiments", "runs")), ("optunalike.db", ("studies", "trials")))
    for name, tables in stores:
        with sqlite3.connect(tmp_path / name) as db:  # the tables that make each tool's store
            for table in tables:
                db.execute(f"CREATE TABLE {table} (id INTEGER)")
    (tmp_path / "samesetting.yaml").write_text(SUITE.replace(
        "pairs: [{teacher: cnn_large, student: cnn_small}]",
        "pairs: [{teacher: cnn_large, student: cnn_small}, {teacher: cnn_large, student: cnn_small, "
        "name: again, set: {train.lr: 0.1}}]"))
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghijklm", "bcdefghijklmn")))
    (tmp_path / "toplevel.yaml").write_text("method.tau: {type: float, low: 0.1, high: 1.0}\n")
    (tmp_path / "mode.yaml").write_text(
        "knobs:\n  method.teacher_train_mode: {type: categorical, choices: [true, false]}\n")
    cifar.write("cifar10", tmp_path / "data", per_class=2, test_per_class=1)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"\x80\x04truncated")
    truncated = tmp_path / "broken" / "trials"
    truncated.mkdir(parents=True)
    (truncated / "part.parquet").write_bytes(b"PAR1\x00\x00")
    record = tmp_path / "teachers" / "digits"
    record.mkdir(parents=True)
    (record / "cnn_large.json").write_text("{ not json")


CASES = {
    "a suite that is a YAML alias bomb": (["benchmark", "bomb.yaml"], "more than 100 YAML aliases"),
    "a report written into the store's trials": (
        ["report", "--results", "broken", "--out", "broken/trials/x"], "is inside the store's tables"),
    "a resume id with a quote": (["search", "--method", "ce", "--resume-id", "x' OR '1'='1"],
                                 "is not a search id"),
    "an experiment name of 300 characters": (["search", "--method", "ce", "--experiment", "e" * 300],
                                             "--experiment: give a name of 1 to 200"),
    "a seed past 31 bits": (["run", "--method", "ce", "--seed", str(2**70)],
                            "seed: Input should be less than or equal to 2147483647"),
    "CPUs per trial not a number": (["search", "--method", "ce", "--cpus-per-trial", "nan"],
                                    "--cpus-per-trial must be a number > 0"),
    "--set replacing a whole section": (["search", "--method", "ce", "--set", "train={}"],
                                        "--set train={}: set a section's keys one by one"),
    "a suite that lists a method twice": (["benchmark", "twice.yaml"], "method ce listed twice"),
    "a suite that lists a pair twice": (["benchmark", "pairtwice.yaml"],
                                        "pair cnn_large->cnn_small listed twice; list each once; give one "
                                        "of them a `name:` if they differ"),
    "two pairs that are one setting": (["benchmark", "samesetting.yaml"],
                                       "two pairs are one setting (cnn_large->cnn_small on digits"),
    "a pair that lists a method twice": (["benchmark", "pairmethods.yaml"],
                                         "method of pair cnn_large->cnn_small kd listed twice"),
    "a method on none of the pairs chosen": (
        ["benchmark", "transfer-demo", "--method", "l2sp", "--pair", "cnn_large->cnn_small"],
        "--method l2sp is on none of the pairs chosen"),
    "an empty space file": (["search", "--method", "pc", "--space", "empty.yaml"],
                            "a space file holds one key, 'knobs:'"),
    "a space file with its knobs at the top level": (
        ["search", "--method", "pc", "--space", "toplevel.yaml"], "found method.tau"),
    "--set into a single value": (["search", "--method", "ce", "--set", "seed.x=1"],
                                  "--set seed.x: seed is a single value, not a section"),
    "epochs not a number, with a recipe": (
        ["search", "--method", "ce", "--recipe", "digits", "--set", "train.epochs=abc"],
        "train.epochs: 'abc' is not a positive whole number"),
    "logits across tasks": (["run", "--method", "kd", "--dataset", "digits-5to9", "--teacher-dataset",
                             "digits-0to4"], "kd compares the teacher's logits with the student's"),
    "fsp on a pair of two widths": (["search", "--method", "fsp"],
                                    "cnn_large -> cnn_small: fsp matches the channels of the stem"),
    "a student from a teacher of another architecture": (
        ["run", "--method", "ce", "--init-from-teacher"],
        "train.init_from_teacher copies the teacher's weights"),
    "an infinite learning rate": (["run", "--method", "ce", "--set", "train.lr=.inf"],
                                  "train.lr: Input should be a finite number"),
    "a space file of random bytes": (["search", "--method", "pc", "--space", "random.bin"],
                                     "random.bin is not a text file"),
    "a suite file of random bytes": (["benchmark", "random.bin"], "random.bin is not a text file"),
    "a tracking URI that is no store": (["search", "--method", "ce", "--tracking-uri", "garbage"],
                                        "--tracking-uri garbage: not an MLflow store"),
    "an unknown tracking scheme": (["search", "--method", "ce", "--tracking-uri", "foo://x"],
                                   "--tracking-uri foo://x: not an MLflow store"),
    "a tracking store that is not SQLite": (
        ["search", "--method", "ce", "--tracking-uri", "sqlite:///notsqlite.txt"],
        "notsqlite.txt exists and is not a SQLite database"),
    "an unreachable tracking server": (
        ["search", "--method", "ce", "--tracking-uri", "http://127.0.0.1:9"],
        "--tracking-uri http://127.0.0.1:9: no MLflow server answers there"),
    "an Optuna storage of no database": (
        ["search", "--method", "ce", "--optuna-storage", "garbage://x"],
        "--optuna-storage garbage://x: not a database URL"),
    "a Ray address that is none": (["search", "--method", "ce", "--address", "garbage"],
                                   "--address garbage: not a Ray address"),
    "a report over damaged parts only": (["report", "--results", "broken"],
                                         "no readable trials part under broken"),
    "a text file as a checkpoint": (
        ["teacher", "import", "notes.txt", "--model", "cnn_large", "--dataset", "digits"],
        "cannot read notes.txt as a PyTorch checkpoint"),
    "an empty checkpoint": (["teacher", "import", "empty.pt", "--model", "cnn_large", "--dataset", "digits"],
                            "cannot read empty.pt as a PyTorch checkpoint"),
    "a corrupt teacher record": (["teacher", "list", "--teachers", "teachers"],
                                 "cnn_large.json is unreadable"),
    "a port out of range": (["ui", "--port", "99999"], "--port 99999: a port is 1..65535"),
    "a benchmark of zero samples": (["benchmark", "suite.yaml", "--samples", "0"],
                                    "--samples 0 runs nothing"),
    "a benchmark of zero seeds": (["benchmark", "suite.yaml", "--seeds", "0"], "--seeds 0 runs nothing"),
    "a shared knob searched in cohorts": (
        ["search", "--method", "fcfd", "--cohort", "2", "--space", "mode.yaml"],
        "--cohort 2: the members of a cohort share method.teacher_train_mode"),
    "a pair the suite lacks": (["benchmark", "suite.yaml", "--pair", "cnn_large->resnet8"],
                               "--pair cnn_large->resnet8 is not in suite.yaml; choose among "
                               "cnn_large->cnn_small"),
    "a corrupt CIFAR file": (["search", "--method", "ce", "--dataset", "cifar10", "--data-dir", "data"],
                             "data_batch_2 is not a CIFAR batch file"),
    "an unknown option": (["search", "--bogus"], "No such option: --bogus; see `"),
    "a value of the wrong type": (["search", "--samples", "many"], "Invalid value for '--samples'"),
    "tap the model lacks": (["search", "--method", "pc", "--set", "method.tap=stage9"],
                            "tap 'stage9' does not exist in student cnn_small"),
    "space that does not parse": (["search", "--method", "pc", "--space", "bad.yaml"],
                                  "bad.yaml is not valid YAML"),
    "space with an unknown knob": (["search", "--method", "pc", "--space", "unknown.yaml"],
                                   "knob 'method.sharpness' is not a setting of method 'pc'"),
    "negative temperature": (["run", "--method", "kd", "--set", "method.temperature=-1"],
                             "method.temperature: Input should be greater than 0"),
    "zero temperature": (["search", "--method", "pc+kd", "--set", "method.kd_temperature=0"],
                         "method.kd_temperature: Input should be greater than 0"),
    "a KD knob on a method alone": (["search", "--method", "pc", "--set", "pc.w_kd=0.5"],
                                    "method.w_kd: not a knob of method 'pc' (the KD term is the "
                                    "variant's: --method pc+kd)"),
    "renaming the method": (["search", "--method", "kd", "--set", "method.name=pc", "--dry-run"],
                            "--set method.name: the method is chosen by --method"),
    "renaming it, scoped": (["search", "--method", "kd", "--set", "kd.name=pc", "--dry-run"],
                            "--set kd.name: the method is chosen by --method"),
    "a bogus scoped knob": (["search", "--method", "pc", "--set", "pc.bogus=1"],
                            "method.bogus: not a knob of method 'pc'"),
    "ce+kd": (["search", "--method", "ce+kd"], "ce+kd: ce has no teacher, so it takes no added KD term"),
    "kd+kd": (["search", "--method", "kd+kd"], "kd+kd: kd is itself KD on the logits"),
    "unknown data set": (["search", "--method", "pc", "--dataset", "cifar1000"],
                         "unknown data set 'cifar1000'"),
    "zero samples": (["search", "--method", "pc", "--samples", "0"],
                     "--samples 0 runs nothing; give 1 or more"),
    "malformed --set": (["run", "--method", "pc", "--set", "tau"], "is not key=value"),
    "a boolean where a number is due": (["search", "--method", "kd", "--set", "train.lr=true", "--dry-run"],
                                        "train.lr: a number is due, not true"),
    "more CPUs than the machine": (["search", "--method", "ce", "--cpus-per-trial", "4096"],
                                   "--cpus-per-trial 4096.0 exceeds this machine's"),
    "resume with nothing to resume": (["search", "--method", "ce", "--resume", "--samples", "1"],
                                      "no unfinished search with these settings"),
    "the MLflow store given to Optuna": (
        ["search", "--method", "ce", "--optuna-storage", "sqlite:///mlflowlike.db"],
        "mlflowlike.db is an MLflow tracking store; give --optuna-storage a database of its own"),
    "the Optuna store given to MLflow": (
        ["search", "--method", "ce", "--tracking-uri", "sqlite:///optunalike.db"],
        "optunalike.db is an Optuna study database; give --tracking-uri a database of its own"),
    "one database for both": (
        ["search", "--method", "ce", "--tracking-uri", "sqlite:///both.db", "--optuna-storage",
         "sqlite:///./both.db"], "is also the --tracking-uri; give Optuna a database of its own"),
    "an unusable TMPDIR": (["search", "--method", "ce", "--samples", "1"],
                           "TMPDIR='/proc' is not a writable folder", {"TMPDIR": "/proc"}),
    "an empty TMPDIR": (["search", "--method", "ce", "--samples", "1"],
                        "TMPDIR='' is not a writable folder", {"TMPDIR": ""}),
    "a HOME Ray cannot write in": (["search", "--method", "ce", "--samples", "1"],
                                   "HOME='/proc' is not a writable folder", {"HOME": "/proc"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch):
    args, expected, *environment = CASES[case]
    _files(tmp_path)
    for name, value in (environment[0] if environment else {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert [p for p in created if p not in before] == [], created


def test_report_skips_a_damaged_part_with_a_warning(tmp_path):
    from datetime import datetime, timezone

    from pcbench.results import ResultsStore
    from pcbench.results.store import TRIALS_SCHEMA

    row = {**{f.name: None for f in TRIALS_SCHEMA}, "search_id": "s", "trial_id": "a", "method": "ce",
           "dataset": "digits", "teacher": "cnn_large", "student": "cnn_small", "seed": 0, "knobs": "{}",
           "val_acc": 0.9, "test_acc": 0.91, "status": "completed", "wall_seconds": 1.0,
           "scoring_rule": "last_epoch", "selection_split": "val", "epochs_planned": 2,
           "finished_at": datetime.now(timezone.utc)}
    ResultsStore(tmp_path / "results").write("trials", [row], "good")
    (tmp_path / "results" / "trials" / "bad.parquet").write_bytes(b"PAR1 truncated")
    result = CliRunner().invoke(app, ["report", "--results", str(tmp_path / "results"),
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "bad.parquet" in warnings[0]
    assert (tmp_path / "report" / "leaderboard.parquet").exists()
    # a copy of a part (a sync tool's, a backup) is read once, with a warning naming it
    trials = tmp_path / "results" / "trials"
    (trials / "good-copy.parquet").write_bytes((trials / "good.parquet").read_bytes())
    result = CliRunner().invoke(app, ["report", "--results", str(tmp_path / "results"),
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and any("good" in w and "counted once" in w for w in warnings), warnings
    assert len(ResultsStore(tmp_path / "results").read("trials", [])) == 1
    board = pd.read_parquet(tmp_path / "report" / "leaderboard.parquet")
    assert board.trials.tolist() == [1]


def test_an_empty_ray_address_means_a_local_instance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "")  # as an unset variable exported by a script
    result = CliRunner().invoke(app, ["search", "--method", "ce", "--dry-run"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "missing" not in result.stderr


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # its log would share the command's stderr
        pass


def test_an_address_that_answers_but_is_not_ray_is_refused_at_once(tmp_path, monkeypatch):
    """An HTTP server where Ray's GCS is due: Ray would retry it for a minute; one line instead."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    try:
        started = time.monotonic()
        result = CliRunner().invoke(app, ["search", "--method", "ce", "--address",
                                          f"127.0.0.1:{server.server_address[1]}"])
    finally:
        server.shutdown()
    assert result.exit_code == 2 and time.monotonic() - started < 15, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"127.0.0.1:{server.server_address[1]} answers, but not as Ray: give the head's GCS "
                         f"port (ray start --head prints it; 6379 by default) or ray://HOST:10001")


@pytest.mark.ray
def test_a_ray_gcs_passes_the_address_check(local_ray):
    import ray

    check_address(ray.get_runtime_context().gcs_address)  # no error: it answers HTTP/2
