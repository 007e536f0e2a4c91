"""Scale soak of the recording path: N one-epoch digits trials through a real `mlflow server`
whose backend store is PostgreSQL, then a check that nothing was lost or duplicated, what the
driver paid per trial, what Ray left on disk, and how long `pcbench report` takes over N parts.

    python benchmarks/soak.py                          # 1,000 trials: ce, 1 epoch, --cohort 1
    python benchmarks/soak.py --trials 40              # a small validation
    python benchmarks/soak.py --method kd --cohort 0 --concurrent 4 --keep   # kd, cohorts of 4

The trials: `pcbench.search` of `--method` (ce: no teacher to train) for `--epochs` 1, with
`--cohort 1` by default: one Tune trial, one MLflow child run and one Parquet part per trial,
so every trial passes the whole per-trial path (Tune, Optuna, the recorder), and the trials end
fastest here (40 trials on 2 busy cores, steady state: 0.68 s per trial, against 1.77 s in
cohorts of 4). `--cohort 0` uses pcbench's default (4): a Tune trial per 4 trials.

What it starts, all on 127.0.0.1, and stops at the end (also on failure, Ctrl-C or SIGTERM):
- PostgreSQL: a new cluster in a temporary folder, a free port, a generated password
  (scram-sha-256, every login by password; its Unix socket inside its own data folder). The
  server's programs come from the machine (`initdb` on PATH or /usr/lib/postgresql/*/bin) or,
  when it has none (or with `--postgres pip`), from the `pgserver` wheel on PyPI, which ships
  PostgreSQL's binaries (the script pip-installs it, --no-deps: only its binaries are used). As
  root (PostgreSQL refuses to run as root) its programs run as the user `postgres` (else
  `nobody`) through runuser; no root is needed otherwise.
- `mlflow server` with that backend store (the URI travels in MLFLOW_BACKEND_STORE_URI, never
  on a command line), proxied artifacts in the temporary folder, `--mlflow-workers` as the
  cluster's launcher starts it (cluster/mlflow_server.py: 4). The job-queue folder the server
  makes under /dev/shm on every start is removed with it.
- The driver: `pcbench.search` in a child process of its own (so its CPU time and peak memory
  are the driver's alone), this checkout's pcbench (PYTHONPATH), with a local Ray instance
  whose temporary folder is inside the temporary folder (RAY_TMPDIR); any Ray process left
  under it is ended by pid afterwards.

The SQLAlchemy driver: MLflow opens `postgresql://` with SQLAlchemy's default dialect driver,
psycopg (3) under SQLAlchemy 2.1 and psycopg2 under 2.0. The script installs the one SQLAlchemy
names when it is missing, and names it in the URI (`postgresql+psycopg://`).

Writes reports/perf/soak.json and a Markdown table beside it (soak.md; `--out`), and exits 1 if
a check failed. To install beforehand (pyproject.toml has no `bench` extra):
`pip install 'psycopg[binary]>=3.1'` (also in the `test` extra), and `pip install --no-deps
pgserver` only on a machine without PostgreSQL's server programs.
"""

import argparse
import contextlib
import glob
import importlib.util
import json
import math
import os
import platform
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "perf" / "soak.json"
EXPERIMENT = "pcbench-soak"
DB_USER, DB_NAME = "soak", "mlflow"
REPORT_TARGET_S = 10.0
PER_EPOCH = ("train_loss", "val_acc", "val_loss", "lr")  # what every trial logs each epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000, help="N trials (default 1000)")
    parser.add_argument("--method", default="ce", help="the searched method (default ce: no teacher)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--concurrent", type=int, default=2, help="trial processes at once (default 2)")
    parser.add_argument("--cohort", type=int, default=1,
                        help="trials per process in lockstep (default 1: one Tune trial per trial; "
                             "0: pcbench's default, 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlflow-workers", type=int, default=4)
    parser.add_argument("--postgres", choices=["auto", "machine", "pip"], default="auto",
                        help="where PostgreSQL's programs come from (auto: the machine's, else pgserver)")
    parser.add_argument("--teachers", help="a teacher store to reuse (default: a new one, trained on "
                                           "first use by methods that need a teacher)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON (the Markdown table beside it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _driver(Path(args.child))
    if args.trials < 1:
        parser.error("--trials: 1 or more")
    sys.exit(Soak(args).run())


# --- the orchestration -----------------------------------------------------------------------------

class Soak:
    def __init__(self, args):
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="pcbench-soak-", dir="/tmp"))  # short: Ray's sockets
        self.pg: Postgres | None = None
        self.mlflow: subprocess.Popen | None = None
        self.ray_tmp = self.scratch / "rt"
        self.out: dict = {}

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # stop as on Ctrl-C: the finally below runs
            signal.signal(sig, _raise_exit)
        started = time.time()
        try:
            return self._run(started)
        finally:
            self._stop_all()
            if self.args.keep:
                print(f"kept {self.scratch}")
            else:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def _run(self, started: float) -> int:
        a = self.args
        say(f"scratch {self.scratch}")
        driver = ensure_db_driver()
        self.pg = Postgres(self.scratch, a.postgres)
        uri = self.pg.start()
        backend = uri.replace("postgresql://", f"postgresql+{driver['driver']}://", 1)
        self.tracking_uri = self._start_mlflow(backend)
        servers_before = self._server_cpu()
        results = self.scratch / "results"
        teachers = Path(a.teachers) if a.teachers else self.scratch / "teachers"
        spec = {"method": a.method, "samples": a.trials, "epochs": a.epochs, "concurrent": a.concurrent,
                "cohort": a.cohort or None, "seed": a.seed, "results": str(results),
                "teachers": str(teachers),
                "tracking_uri": self.tracking_uri, "experiment": EXPERIMENT,
                "timeline": str(self.scratch / "driver.json")}
        search = self._run_driver(spec)
        servers_after = self._server_cpu()
        idle_s = 10.0  # then the servers' own background work (MLflow's job runner), no client
        time.sleep(idle_s)
        idle_rate = {k: (v - servers_after.get(k, 0.0)) / idle_s for k, v in self._server_cpu().items()}
        self.out = {
            "note": (f"small-scale validation ({a.trials} trials), not the 1,000-trial soak"
                     if a.trials < 1000 else f"{a.trials}-trial soak"),
            "machine": machine(),
            "settings": {k: spec[k] for k in ("method", "samples", "epochs", "concurrent", "cohort", "seed")}
                        | {"mlflow_workers": a.mlflow_workers},
            "postgres": {**self.pg.info, **driver},
            "driver": search,
            "servers_cpu_s": {k: round(v - servers_before.get(k, 0.0), 2) for k, v in servers_after.items()},
            "servers_idle_cores": {k: round(v, 3) for k, v in idle_rate.items()},
            "mlflow_start_s": round(self.mlflow_start_s, 1),
        }
        # per trial: over the driver's steady window (the search's total holds the server's
        # start-up work: MLflow's job runner and its workers' first requests)
        steady = search.get("steady")
        if steady and len(self.server_samples) > 1:  # the same window as the driver's steady state
            (t0, t1), k = steady["window"], steady["trials"]
            samples = self.server_samples
            self.out["servers_cpu_steady_ms_per_trial"] = {
                name: round(1000 * (_at(samples, t1, name) - _at(samples, t0, name)) / k, 1)
                for name in samples[-1][1]}
        say("checking MLflow, PostgreSQL and the Parquet store")
        try:
            self.out["checks"] = check(self.tracking_uri, self.pg, results, self.scratch / "artifacts",
                                       search.get("search_id"), a.trials)
        except Exception as error:  # noqa: BLE001 - a driver that failed early leaves little to read
            self.out["checks"] = {"ok": False, "trials": a.trials,
                                  "problems": [f"the checks could not run: {type(error).__name__}: {error}"]}
        self.out["database"] = self.pg.sizes()
        self.out["ray_folders"] = folder_stats(results / "ray", a.trials)
        self.out["optuna_db_bytes"] = sum(p.stat().st_size for p in results.glob("optuna.db*"))
        say("timing `pcbench report`")
        self.out["report"] = time_report(results, self.scratch)
        self.out["extrapolation"] = extrapolate(search, self.out["report"], a.trials)
        self.out["total_wall_s"] = round(time.time() - started, 1)
        ok = self.out["checks"]["ok"] and not search.get("error")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(self.out, indent=1, default=str) + "\n")
        table = markdown(self.out)
        a.out.with_suffix(".md").write_text(table + "\n")
        print(f"\n{table}\n\nwrote {a.out} and {a.out.with_suffix('.md')}")
        if not ok:
            why = [search["error"]] * bool(search.get("error")) + self.out["checks"]["problems"][:20]
            print("CHECKS FAILED: " + "; ".join(why))
        return 0 if ok else 1

    def _start_mlflow(self, backend: str) -> str:
        port = free_port()
        log = open(self.scratch / "mlflow.log", "w")  # noqa: SIM115 - the server's life long
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend}
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                   "--artifacts-destination", str(self.scratch / "artifacts"),
                   "--workers", str(self.args.mlflow_workers)]
        say(f"starting mlflow server on 127.0.0.1:{port} ({self.args.mlflow_workers} workers)")
        began = time.time()
        self.mlflow = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while not _healthy(url):
            if self.mlflow.poll() is not None or time.monotonic() > deadline:
                tail = (self.scratch / "mlflow.log").read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError("mlflow server did not start:\n" + "\n".join(tail))
            time.sleep(0.5)
        self.mlflow_start_s = time.time() - began
        return url

    def _run_driver(self, spec: dict) -> dict:
        """The search in a child process (its own session); its timeline, or why it failed."""
        spec_file = self.scratch / "spec.json"
        spec_file.write_text(json.dumps(spec))
        self.ray_tmp.mkdir()
        # this checkout's pcbench, in the driver and in Ray's workers (they inherit it)
        env = {**os.environ, "RAY_TMPDIR": str(self.ray_tmp), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.pop("RAY_ADDRESS", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        say(f"driver: pcbench.search({spec['method']!r}, samples={spec['samples']}, epochs={spec['epochs']}, "
            f"concurrent={spec['concurrent']}, cohort={spec['cohort']}) -> {spec['tracking_uri']}")
        began = time.time()
        log_path = self.scratch / "driver.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen([sys.executable, __file__, "--child", str(spec_file)], cwd=self.scratch,
                                     env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            self.driver_pid = child.pid
            self.server_samples: list[tuple[float, dict[str, float]]] = []
            try:
                while child.poll() is None:  # the servers' CPU along the way, every second
                    self.server_samples.append((time.time(), self._server_cpu()))
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=1.0)
                code = child.wait()
            finally:
                if child.poll() is None:  # we are being stopped: the driver too
                    _kill_group(child.pid, grace_s=20)
        wall = time.time() - began
        self._end_ray_leftovers()
        timeline = Path(spec["timeline"])
        out = json.loads(timeline.read_text()) if timeline.exists() else {}
        out["process_wall_s"] = round(wall, 2)
        out["exit_code"] = code
        if code != 0 or "search_wall_s" not in out:
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            out["error"] = f"the driver exited {code}: " + " | ".join(tail[-8:])
            print("\n".join(tail), file=sys.stderr)
        return out

    def _server_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the MLflow server's processes and PostgreSQL's (their own and
        their ended children's)."""
        cpu = {}
        if self.mlflow is not None:
            cpu["mlflow_server"] = sum(_proc_cpu(p) for p in _pids_in_group(self.mlflow.pid))
        if self.pg is not None and self.pg.postmaster_pid():
            cpu["postgres"] = sum(_proc_cpu(p) for p in _tree(self.pg.postmaster_pid()))
        return cpu

    def _end_ray_leftovers(self) -> None:
        """Ray's processes of the driver's instance (their command lines name its temp folder)."""
        mine = str(self.ray_tmp)
        pids = [pid for pid in _all_pids() if mine in _cmdline(pid) and pid != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in pids if _alive(p)]
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in alive) and time.monotonic() < deadline:
                time.sleep(0.2)
        if pids:
            say(f"ended {len(pids)} Ray process(es) left by the driver")

    def _stop_all(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "driver_pid", None) and _alive(self.driver_pid):
                _kill_group(self.driver_pid, grace_s=20)
        with contextlib.suppress(Exception):
            self._end_ray_leftovers()
        if self.mlflow is not None:
            made = _server_temp_dirs(self.mlflow.pid)
            with contextlib.suppress(Exception):
                _kill_group(self.mlflow.pid, grace_s=30)
            for path in made:  # MLflow's job queue folder (in /dev/shm), which it leaves behind
                shutil.rmtree(path, ignore_errors=True)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()


def _at(samples: list[tuple[float, dict[str, float]]], t: float, name: str) -> float:
    """A sampled counter at time t, interpolated."""
    for (ta, a), (tb, b) in zip(samples, samples[1:]):
        if ta <= t <= tb and name in a and name in b:
            return a[name] + (b[name] - a[name]) * (t - ta) / max(tb - ta, 1e-9)
    return samples[-1][1].get(name, 0.0) if t > samples[-1][0] else samples[0][1].get(name, 0.0)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


# --- PostgreSQL ------------------------------------------------------------------------------------

class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, password logins only."""

    def __init__(self, scratch: Path, source: str):
        self.scratch, self.source = scratch, source
        self.data = scratch / "postgres"
        self.port = free_port()
        self.password = secrets.token_hex(24)
        self.env = dict(os.environ)
        self.user = None  # the system user PostgreSQL runs as, when we are root
        self.info: dict = {}

    def _bin(self) -> tuple[Path, str]:
        if self.source in ("auto", "machine"):
            found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                  key=lambda p: int(Path(p).parts[-3]), default=None)
            if found:
                bindir = Path(found).resolve().parent
                if all((bindir / n).exists() for n in ("pg_ctl", "postgres")):
                    return bindir, f"the machine's ({bindir})"
            if self.source == "machine":
                raise RuntimeError("no PostgreSQL on this machine (initdb); use --postgres pip")
        if importlib.util.find_spec("pgserver") is None:
            say("no PostgreSQL here: pip install pgserver (PostgreSQL's binaries in a wheel)")
            pip_install("pgserver>=0.1.4", deps=False)  # its Python side (psutil, ...) is not used
        spec = importlib.util.find_spec("pgserver")  # found, not imported: only its binaries are used
        package = Path(spec.origin).parent
        install, libs = package / "pginstall", package.parent / "pgserver.libs"  # libpq: auditwheel's
        if os.geteuid() == 0:  # the user it runs as may not reach root's site-packages: a copy, in
            copy = self.scratch / "pgserver"  # the same layout (the binaries' RPATH is relative)
            for part in ("bin", "lib", "share"):
                shutil.copytree(install / part, copy / "pginstall" / part, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, self.scratch / "pgserver.libs", symlinks=True)
            install, libs = copy / "pginstall", self.scratch / "pgserver.libs"
        self.env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(install / "lib"), str(libs), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
        return install / "bin", f"pgserver {_version('pgserver')} ({install / 'bin'})"

    def _as_user(self, command: list[str]) -> list[str]:
        if self.user is None:
            return command
        library = self.env.get("LD_LIBRARY_PATH", "")
        return ["runuser", "-u", self.user, "--", "env", f"LD_LIBRARY_PATH={library}", *command]

    def start(self) -> str:
        bindir, where = self._bin()
        self.bindir = bindir
        if os.geteuid() == 0:  # PostgreSQL refuses root: an unprivileged user runs it
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            self.scratch.chmod(0o711)  # it traverses to its data folder, and lists nothing
            for path in self.scratch.parents:
                if path != Path("/") and not os.stat(path).st_mode & 0o001:
                    raise RuntimeError(f"{self.user} cannot reach {self.scratch} (through {path})")
        self.data.mkdir(mode=0o700)
        pwfile = self.scratch / ".pgpass-init"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.data, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                                 env=self.env).stdout.strip()
        say(f"starting PostgreSQL ({version}, {where}) on 127.0.0.1:{self.port}"
            + (f" as {self.user}" if self.user else ""))
        try:
            self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", DB_USER, "-E", "UTF8",
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"])
        finally:
            pwfile.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.data} "
                   f"-c max_connections=200")
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"),
                   "-o", options, "-w", "-t", "120", "start"])
        self.started = True
        import psycopg
        with psycopg.connect(**self.connect_args("postgres"), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {DB_NAME}")
            listen = db.execute("SHOW listen_addresses").fetchone()[0]
            server_version = db.execute("SHOW server_version").fetchone()[0]
        self.info = {"source": where, "version": server_version, "listen_addresses": listen,
                     "port": self.port, "auth": "scram-sha-256", "runs_as": self.user or _whoami(),
                     "settings": "defaults (fsync on), max_connections=200"}
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def connect_args(self, dbname: str = DB_NAME) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": DB_USER, "password": self.password,
                "dbname": dbname, "connect_timeout": 30}

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(self._as_user(command), capture_output=True, text=True, env=self.env,
                              cwd=self.scratch)
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]} {tail}")

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def sizes(self) -> dict:
        import psycopg
        with psycopg.connect(**self.connect_args()) as db:
            out = {"database_bytes": db.execute("SELECT pg_database_size(%s)", (DB_NAME,)).fetchone()[0]}
            for table in ("runs", "params", "tags", "metrics", "latest_metrics"):
                out[f"{table}_rows"] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            # connections opened (PostgreSQL 14+) and transactions: does MLflow pool its connections?
            sessions, commits = db.execute("SELECT sessions, xact_commit FROM pg_stat_database "
                                           "WHERE datname = %s", (DB_NAME,)).fetchone()
            out["sessions_opened"], out["transactions_committed"] = sessions, commits
        return out

    def stop(self) -> None:
        if not getattr(self, "started", False):
            return
        pid = self.postmaster_pid()
        with contextlib.suppress(Exception):
            subprocess.run(self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                          "-w", "-t", "60", "stop"]),
                           capture_output=True, env=self.env, timeout=90)
        if pid and _alive(pid):  # pg_ctl could not: the postmaster by its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            time.sleep(2)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.started = False


def ensure_db_driver() -> dict:
    """The DBAPI module SQLAlchemy's `postgresql://` loads (found, not imported), installed when
    missing."""
    from sqlalchemy import __version__ as sqlalchemy_version
    from sqlalchemy.dialects import registry

    driver = registry.load("postgresql").driver  # psycopg under SQLAlchemy 2.1, psycopg2 under 2.0
    package = {"psycopg": "psycopg[binary]>=3.1", "psycopg2": "psycopg2-binary>=2.9"}.get(driver)
    if importlib.util.find_spec(driver) is None:
        if package is None:
            raise RuntimeError(f"SQLAlchemy's postgresql:// uses {driver}, which is not installed")
        say(f"pip install {package} (SQLAlchemy {sqlalchemy_version}'s postgresql:// driver)")
        pip_install(package)
    if importlib.util.find_spec("psycopg") is None:  # the checks read PostgreSQL with psycopg
        pip_install("psycopg[binary]>=3.1")
    return {"sqlalchemy": sqlalchemy_version, "driver": driver,
            "driver_version": _version("psycopg2-binary" if driver == "psycopg2" else driver)}


def pip_install(requirement: str, deps: bool = True) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *([] if deps else ["--no-deps"]),
                    requirement], check=True)
    importlib.invalidate_caches()


# --- the driver (child process) ----------------------------------------------------------------------

def _driver(spec_file: Path) -> None:
    """Runs the search as `pcbench search` would, and writes its timeline: wall and CPU per
    trial, peak memory, the recording calls timed by kind, samples along the way."""
    spec = json.loads(spec_file.read_text())
    t_start, cpu_start = time.time(), _cpu()
    sys.path.insert(0, str(REPO))  # this checkout's pcbench
    import pcbench.api as api
    import pcbench.recording as recording
    import pcbench.results.store as store
    import pcbench.tracking as tracking
    imported, cpu_imported = time.time(), _cpu()
    timers: dict[str, list[float]] = {}

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*a, **k):
            began = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                entry = timers.setdefault(label, [0.0, 0])
                entry[0] += time.perf_counter() - began
                entry[1] += 1
        setattr(owner, name, timed)

    for event in ("trial_started", "trial_epoch", "trial_finished"):
        wrap(recording.SearchRecorder, event, f"recorder.{event}")
    for call in ("start_run", "log_dict", "log_metrics", "set_tags", "end_run"):
        wrap(tracking.Tracker, call, f"mlflow.{call}")
    wrap(store.ResultsStore, "write", "parquet.write")
    # the driver's other per-trial work that may grow with the search: Optuna's asks and tells
    # (TPE over every earlier trial, its SQLite study) and Tune's experiment state, which it
    # rewrites whole (every trial in it) at most every TUNE_GLOBAL_CHECKPOINT_S (pcbench: 2 s)
    from ray.tune.execution.tune_controller import TuneController

    import pcbench.launch.search as launch_search
    for call in ("suggest", "on_trial_result", "on_trial_complete"):
        wrap(launch_search._OptunaSearch, call, f"optuna.{call}")
    wrap(TuneController, "save_to_dir", "tune.save_experiment_state")
    listener = _Listener(timers)
    error = None
    search_began, cpu_began = time.time(), _cpu()
    result = None
    try:
        result = api.search([spec["method"]], samples=spec["samples"], epochs=spec["epochs"],
                            concurrent=spec["concurrent"], cohort=spec["cohort"], seed=spec["seed"],
                            results=spec["results"], teachers=spec["teachers"],
                            tracking_uri=spec["tracking_uri"], experiment=spec["experiment"],
                            progress=listener)
    except BaseException as caught:  # noqa: BLE001 - written down, then raised
        error = f"{type(caught).__name__}: {caught}"
        raise
    finally:
        search_ended, cpu_ended = time.time(), _cpu()
        maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        n = max(spec["samples"], 1)
        out = {
            "search_id": getattr(result, "search_id", None),
            "trials_reported": getattr(result, "trials", None), "failed": getattr(result, "failed", None),
            "diverged": getattr(result, "diverged", None), "error": error,
            "imports_s": round(imported - t_start, 2),
            "imports_cpu_s": round(cpu_imported - cpu_start, 2),
            "search_wall_s": round(search_ended - search_began, 2),
            "search_cpu_s": round(cpu_ended - cpu_began, 2),
            "wall_per_trial_s": round((search_ended - search_began) / n, 4),
            "cpu_per_trial_s": round((cpu_ended - cpu_began) / n, 4),
            "peak_rss_mib": round(maxrss_kib / 1024, 1),
            "recording": {k: {"seconds": round(s, 3), "calls": c, "ms_per_trial": round(1000 * s / n, 2)}
                          for k, (s, c) in sorted(timers.items())},
            **listener.summary(search_began),
        }
        Path(spec["timeline"]).write_text(json.dumps(out, indent=1))
        with contextlib.suppress(Exception):
            api.stop_ray()


class _Listener:
    """Trial events as the driver sees them; after each finished trial: the time, the driver's
    CPU seconds and its resident memory (to tell fixed costs from per-trial ones)."""

    def __init__(self, timers: dict[str, list[float]]):
        self.timers = timers  # label: [seconds, calls], summed as the search goes
        self.snapshots: list[dict[str, float]] = []  # the timers' seconds after each finished trial
        self.started: dict[str, float] = {}
        self.finished: list[tuple[float, float, float]] = []  # (time, cpu, rss MiB)
        self.statuses: dict[str, int] = {}
        self.epochs = 0

    def say(self, line):
        pass

    def on_search(self, item, trials):
        pass

    def trial_started(self, trial_id, config, knobs, stage):
        self.started.setdefault(trial_id, time.time())

    def trial_epoch(self, trial_id, metrics):
        self.epochs += 1

    def trial_finished(self, trial_id, error):
        self.statuses["error" if error else "ok"] = self.statuses.get("error" if error else "ok", 0) + 1
        self.finished.append((time.time(), _cpu(), _rss_mib()))
        self.snapshots.append({k: v[0] for k, v in self.timers.items()})

    def summary(self, began: float) -> dict:
        out = {"trials_started": len(self.started), "trials_finished": len(self.finished),
               "finished_ok_or_error": self.statuses, "epoch_events": self.epochs}
        f = self.finished
        if not f:
            return out
        out["first_trial_started_after_s"] = round(min(self.started.values()) - began, 2)
        out["first_trial_finished_after_s"] = round(f[0][0] - began, 2)
        out["last_trial_finished_after_s"] = round(f[-1][0] - began, 2)
        # the steady state: from the 10th to the 90th percentile of finished trials
        lo, hi = int(0.1 * (len(f) - 1)), int(0.9 * (len(f) - 1))
        if hi > lo:
            k = hi - lo
            out["steady"] = {"trials": k, "window": [f[lo][0], f[hi][0]],
                             "wall_per_trial_s": round((f[hi][0] - f[lo][0]) / k, 4),
                             "cpu_per_trial_s": round((f[hi][1] - f[lo][1]) / k, 4),
                             "rss_growth_kib_per_trial": round(1024 * (f[hi][2] - f[lo][2]) / k, 1)}
            # the same by quarter: does a trial cost more as the search grows?
            q = [int(i * (len(f) - 1) / 4) for i in range(5)]
            out["by_quarter"] = []
            snap = self.snapshots
            for a, b in zip(q, q[1:]):
                k = max(b - a, 1)
                calls = {name: round(1000 * (snap[b].get(name, 0.0) - snap[a].get(name, 0.0)) / k, 2)
                         for name in sorted(snap[b]) if not name.startswith("recorder.")}
                out["by_quarter"].append({"trials": f"{a + 1}-{b + 1}",
                                          "wall_per_trial_s": round((f[b][0] - f[a][0]) / k, 4),
                                          "cpu_per_trial_s": round((f[b][1] - f[a][1]) / k, 4),
                                          "rss_mib_at_end": round(f[b][2], 1),
                                          "driver_calls_ms_per_trial": calls})
        step = max(1, len(f) // 20)
        out["samples"] = [{"finished": i + 1, "after_s": round(t - began, 2), "cpu_s": round(c, 2),
                           "rss_mib": round(r, 1)} for i, (t, c, r) in enumerate(f)
                          if i % step == step - 1 or i == len(f) - 1]
        return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- checks ------------------------------------------------------------------------------------------

def check(tracking_uri: str, pg: Postgres, results: Path, artifacts: Path, search_id: str | None,
          n: int) -> dict:
    """Every trial: one child run (FINISHED, its trial id, its status), its per-epoch metrics
    (each epoch once, the values of the epochs table), its config.yaml, and one trials row and
    one epochs row per epoch; the run ids are the rows' mlflow_run_id."""
    import psycopg
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(REPO))
    from pcbench.results import ResultsStore

    problems: list[str] = []
    store = ResultsStore(str(results))
    trials, epochs = store.read("trials"), store.read("epochs")
    trial_parts, epoch_parts = len(store.parts("trials")), len(store.parts("epochs"))
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs, token = [], None
    began = time.time()
    while experiment is not None:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    search_runs_s = time.time() - began
    parents = [r for r in runs if r.data.tags.get("pcbench.kind") == "search"]
    if search_id:
        parents = [r for r in parents if r.data.tags.get("pcbench.search_id") == search_id] or parents
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs, not 1")
    parent_id = parents[0].info.run_id if parents else None
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    child_ids = {r.info.run_id for r in children}
    trial_tags = [r.data.tags.get("pcbench.trial_id") for r in children]
    if search_id:
        trials = trials[trials["search_id"] == search_id]
        epochs = epochs[epochs["search_id"] == search_id]
    row_ids = set(trials["mlflow_run_id"])

    def expect(name, value, wanted):
        if value != wanted:
            problems.append(f"{name}: {value}, expected {wanted}")

    expect("child runs", len(children), n)
    expect("runs in the experiment (the parent and its children)", len(runs), n + 1)
    expect("trials not completed", int((trials["status"] != "completed").sum()), 0)
    expect("unique trial ids among child runs", len(set(trial_tags)), n)
    expect("trials rows", len(trials), n)
    expect("unique trial ids among rows", trials["trial_id"].nunique(), n)
    expect("trials part files", trial_parts, n)
    expect("epochs part files", epoch_parts, n)
    expect("unique run ids among rows", len(row_ids), n)
    if row_ids != child_ids:
        problems.append(f"run ids: {len(row_ids - child_ids)} rows without a child run, "
                        f"{len(child_ids - row_ids)} child runs without a row")
    by_run = {r.info.run_id: r for r in children}
    status_mismatch = not_finished = wrong_trial = 0
    for row in trials.itertuples():
        run = by_run.get(row.mlflow_run_id)
        if run is None:
            continue
        not_finished += run.info.status != "FINISHED"
        status_mismatch += run.data.tags.get("pcbench.status") != row.status
        wrong_trial += run.data.tags.get("pcbench.trial_id") != row.trial_id
    expect("child runs not FINISHED", not_finished, 0)
    expect("runs whose pcbench.status differs from the row's", status_mismatch, 0)
    expect("runs whose pcbench.trial_id differs from the row's", wrong_trial, 0)
    # the epochs table: each trial's epochs once, as many as the row says it ran
    expect("epochs rows", len(epochs), int(trials["epochs_run"].sum()))
    expect("duplicate (trial, epoch) rows", int(epochs.duplicated(["trial_id", "epoch"]).sum()), 0)
    per_trial = epochs.groupby("trial_id")["epoch"].apply(lambda s: sorted(s)).to_dict()
    bad_epochs = sum(per_trial.get(t, []) != list(range(1, int(e) + 1))
                     for t, e in zip(trials["trial_id"], trials["epochs_run"]))
    expect("trials whose epochs rows are not 1..epochs_run", bad_epochs, 0)
    # per-epoch metrics, from PostgreSQL itself: each (run, key, step) once, every epoch there,
    # the values those of the epochs table
    began = time.time()
    with psycopg.connect(**pg.connect_args()) as db:
        rows = db.execute("SELECT run_uuid, key, step, count(*), min(value), max(value) FROM metrics "
                          "WHERE run_uuid = ANY(%s) GROUP BY run_uuid, key, step",
                          (list(child_ids),)).fetchall()
    sql_s = time.time() - began
    metrics: dict[tuple[str, str], dict[int, tuple[int, float, float]]] = {}
    for run_id, key, step, count, low, high in rows:
        metrics.setdefault((run_id, key), {})[step] = (count, low, high)
    duplicated = sum(c > 1 for steps in metrics.values() for c, _, _ in steps.values())
    expect("metric points logged more than once", duplicated, 0)
    epoch_values = {(r.trial_id, int(r.epoch)): r for r in epochs.itertuples()}
    missing = value_mismatch = 0
    for row in trials.itertuples():
        wanted_steps = set(range(1, int(row.epochs_run) + 1))
        for key in PER_EPOCH:
            steps = metrics.get((row.mlflow_run_id, key), {})
            if set(steps) != wanted_steps:
                missing += 1
                continue
            for step in steps:
                stored = getattr(epoch_values.get((row.trial_id, step)), key, None)
                _, low, high = steps[step]
                if stored is None or not _same(stored, low) or not _same(stored, high):
                    value_mismatch += 1
    expect("(run, metric) histories not exactly epochs 1..epochs_run", missing, 0)
    expect("metric values that differ from the epochs table", value_mismatch, 0)
    # the latest value MLflow serves (search_runs) is the last epoch's val_acc of the row
    served = sum(not _same(by_run[r.mlflow_run_id].data.metrics.get("val_acc"), r.val_acc)
                 for r in trials.itertuples() if r.mlflow_run_id in by_run)
    expect("runs whose served val_acc differs from the row's", served, 0)
    configs = {Path(p).parts[-3] for p in glob.glob(str(artifacts / "**" / "config.yaml"), recursive=True)}
    expect("child runs without their config.yaml artifact", len(child_ids - configs), 0)
    return {"ok": not problems, "problems": problems, "trials": n, "child_runs": len(children),
            "unique_trial_ids": len(set(trial_tags)), "trials_rows": len(trials), "epochs_rows": len(epochs),
            "trials_parts": trial_parts, "epochs_parts": epoch_parts,
            "run_ids_matching_rows": len(row_ids & child_ids),
            "statuses": trials["status"].value_counts().to_dict(),
            "metric_points_checked": sum(len(s) for s in metrics.values()),
            "config_artifacts": len(child_ids & configs),
            "search_runs_s": round(search_runs_s, 2), "metrics_sql_s": round(sql_s, 2)}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# --- Ray's folders, the report, compaction -----------------------------------------------------------

def folder_stats(root: Path, n: int) -> dict:
    files = dirs = size = 0
    by_name: dict[str, list[int]] = {}
    for folder, subdirs, names in os.walk(root):
        dirs += len(subdirs)
        for name in names:
            with contextlib.suppress(OSError):
                b = os.lstat(os.path.join(folder, name)).st_size
                files += 1
                size += b
                kind = _generic(name)
                entry = by_name.setdefault(kind, [0, 0])
                entry[0] += 1
                entry[1] += b
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:8]
    return {"path": "<results>/ray", "bytes": size, "mib": round(size / 2**20, 2), "files": files,
            "folders": dirs,
            "bytes_per_trial": round(size / max(n, 1)), "files_per_trial": round(files / max(n, 1), 2),
            "largest_kinds": [{"name": k, "files": c, "bytes": b} for k, (c, b) in top]}


def _generic(name: str) -> str:
    """A file name with its digits and hex ids folded, to group like files."""
    import re
    return re.sub(r"[0-9a-f]{8,}|\d+", "#", name)


_REPORT_PARTS = """
import json, sys, time
t0 = time.time()
from pcbench.results import ResultsStore, leaderboard, write_report
t1 = time.time()
store = ResultsStore(sys.argv[1])
parts = store.parts("trials")
t2 = time.time()
trials = store.read("trials")
t3 = time.time()
board = leaderboard(trials)
t4 = time.time()
write_report(board, sys.argv[2], trials=trials)
t5 = time.time()
epochs = store.read("epochs")
t6 = time.time()
import pyarrow.dataset as ds
ds.dataset(parts, format="parquet", filesystem=store.location.fs).to_table()
t7 = time.time()
print(json.dumps({"imports_s": t1 - t0, "list_parts_s": t2 - t1, "read_trials_s": t3 - t2,
                  "leaderboard_s": t4 - t3, "write_report_s": t5 - t4,
                  "parts": len(parts), "rows": len(trials),
                  "read_epochs_s (not in the report)": t6 - t5,
                  "read_trials_as_one_dataset_s (pyarrow.dataset, same parts)": t7 - t6}))
"""

_COMPACT = """
import json, sys, time
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
from pcbench.results import ResultsStore
src, dst = ResultsStore(sys.argv[1]), Path(sys.argv[2])
out = {}
for table in ("trials", "epochs"):
    t0 = time.time()
    data = src.read(table)
    t1 = time.time()
    (dst / table).mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), dst / table / "compacted.parquet")
    t2 = time.time()
    out[table] = {"read_parts_s": round(t1 - t0, 3), "write_one_file_s": round(t2 - t1, 3),
                  "bytes_before": sum(Path(p).stat().st_size for p in src.parts(table)),
                  "bytes_after": (dst / table / "compacted.parquet").stat().st_size}
t0 = time.time()
ResultsStore(str(dst)).read("trials")
out["read_compacted_trials_s"] = round(time.time() - t0, 3)
print(json.dumps(out))
"""


def time_report(results: Path, scratch: Path) -> dict:
    """`pcbench report` as typed (a fresh process), its parts timed in another, and what one
    compacted file per table would change."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out: dict = {}
    began = time.time()
    done = subprocess.run([sys.executable, "-m", "pcbench", "report", "--results", str(results), "--out",
                           str(scratch / "report-cli")], capture_output=True, text=True, env=env, cwd=scratch)
    out["cli_wall_s"] = round(time.time() - began, 2)
    out["cli_exit_code"] = done.returncode
    if done.returncode != 0:
        out["cli_error"] = (done.stdout + done.stderr)[-1500:]
    parts = subprocess.run([sys.executable, "-c", _REPORT_PARTS, str(results), str(scratch / "report-parts")],
                           capture_output=True, text=True, env=env, cwd=scratch)
    if parts.returncode == 0:
        out["stages_s"] = {k: (round(v, 3) if isinstance(v, float) else v)
                           for k, v in json.loads(parts.stdout.strip().splitlines()[-1]).items()}
        stages = out["stages_s"]
        out["read_ms_per_part"] = round(1000 * stages["read_trials_s"] / max(stages["parts"], 1), 2)
    else:
        out["stages_error"] = parts.stderr[-1500:]
    compacted = scratch / "compacted"
    packed = subprocess.run([sys.executable, "-c", _COMPACT, str(results), str(compacted)],
                            capture_output=True, text=True, env=env, cwd=scratch)
    if packed.returncode == 0:
        out["compaction"] = json.loads(packed.stdout.strip().splitlines()[-1])
        began = time.time()
        again = subprocess.run([sys.executable, "-m", "pcbench", "report", "--results", str(compacted),
                                "--out", str(scratch / "report-compacted")], capture_output=True, text=True,
                               env=env, cwd=scratch)
        out["compaction"]["cli_wall_s_on_compacted"] = round(time.time() - began, 2)
        out["compaction"]["cli_exit_code"] = again.returncode
    else:
        out["compaction_error"] = packed.stderr[-1500:]
    out["over_target"] = out["cli_wall_s"] > REPORT_TARGET_S
    return out


def extrapolate(search: dict, report: dict, n: int, target: int = 1000) -> dict:
    """The search's wall at `target` trials: its fixed part plus the steady per-trial rate."""
    steady = search.get("steady")
    if not steady or "search_wall_s" not in search:
        return {}
    per = steady["wall_per_trial_s"]
    fixed = search["search_wall_s"] - per * n
    out = {"model": "the search's fixed part plus the steady per-trial rate, constant; by_quarter "
                    "shows what grows with the trials (Tune's experiment state is rewritten whole)",
           "trials": target, "fixed_s": round(fixed, 1), "wall_per_trial_s": per,
           "search_wall_s": round(fixed + per * target, 1),
           "driver_cpu_s": round(search["search_cpu_s"] + steady["cpu_per_trial_s"] * (target - n), 1)}
    stages = report.get("stages_s")
    if stages and stages.get("parts"):
        per_part = stages["read_trials_s"] / stages["parts"]
        out["report_cli_wall_s"] = round(report["cli_wall_s"] + per_part * (target - stages["parts"]), 1)
    return out


# --- output ------------------------------------------------------------------------------------------

def markdown(o: dict) -> str:
    d, c, r, ray, e = o["driver"], o["checks"], o["report"], o["ray_folders"], o.get("extrapolation", {})
    s, pg = o["settings"], o["postgres"]
    steady = d.get("steady", {})
    rec = d.get("recording", {})
    rec_ms = sum(v["ms_per_trial"] for k, v in rec.items() if k.startswith("recorder."))
    calls = ", ".join(f"{k} {v['ms_per_trial']}" for k, v in rec.items() if not k.startswith("recorder."))
    rows = [
        ("note", o["note"]),
        ("setup", f"{s['method']}, {s['samples']} trials x {s['epochs']} epoch, --concurrent "
                  f"{s['concurrent']}, --cohort {s['cohort'] or 'default (4)'}; mlflow server "
                  f"({s['mlflow_workers']} workers) on PostgreSQL {pg['version']} via {pg['driver']}; "
                  f"{o['machine']['cpus']} CPUs, load {o['machine']['load_at_end']}"),
        ("recorded", f"{c.get('child_runs')}/{c['trials']} child runs, {c.get('trials_rows')} trial rows, "
                     f"{c.get('epochs_rows')} epoch rows, {c.get('run_ids_matching_rows')} run ids matching "
                     f"rows, {c.get('metric_points_checked')} metric points, {c.get('config_artifacts')} "
                     f"config.yaml; statuses {c.get('statuses')}; checks "
                     + ("passed" if c["ok"] else "FAILED: " + "; ".join(c["problems"][:5]))),
        ("search wall", f"{d.get('search_wall_s')} s ({d.get('wall_per_trial_s')} s per trial; "
                        f"steady {steady.get('wall_per_trial_s')} s)"),
        ("driver CPU", f"{d.get('search_cpu_s')} s ({d.get('cpu_per_trial_s')} s per trial; "
                       f"steady {steady.get('cpu_per_trial_s')} s)"),
        ("driver peak RSS", f"{d.get('peak_rss_mib')} MiB (steady growth "
                            f"{steady.get('rss_growth_kib_per_trial')} KiB per trial)"),
        ("recording (driver)", f"{rec_ms:.1f} ms per trial; calls, ms per trial: {calls}"),
        ("servers' CPU", ", ".join(
            f"{k} {v} s during the search ({o.get('servers_cpu_steady_ms_per_trial', {}).get(k)} ms per "
            f"trial in the steady state; idle {o['servers_idle_cores'].get(k)} cores)"
            for k, v in o["servers_cpu_s"].items())),
        ("PostgreSQL", f"{o['database']['database_bytes'] / 2**20:.1f} MiB; "
                       f"{o['database'].get('sessions_opened')} connections opened, "
                       f"{o['database'].get('transactions_committed')} transactions"),
        ("Ray trial folders", f"{ray['mib']} MiB, {ray['files']} files ({ray['files_per_trial']} files, "
                              f"{ray['bytes_per_trial']} bytes per trial)"),
    ]
    line = f"{r['cli_wall_s']} s over {c.get('trials_parts')} parts"
    if "stages_s" in r:
        line += f" (reading them {r['stages_s']['read_trials_s']} s, {r['read_ms_per_part']} ms each)"
    rows.append(("`pcbench report`", line))
    if "compaction" in r:
        k = r["compaction"]
        packing = sum(k[t]["read_parts_s"] + k[t]["write_one_file_s"] for t in ("trials", "epochs"))
        rows.append(("compacted", f"report {k['cli_wall_s_on_compacted']} s on one file per table "
                                  f"(compacting both tables: {packing:.1f} s)"))
    quarters = []
    for q in d.get("by_quarter", []):
        ms = q["driver_calls_ms_per_trial"]
        kind = {p: sum(v for k, v in ms.items() if k.startswith(p)) for p in ("optuna.", "tune.", "mlflow.")}
        quarters.append(f"{q['trials']}: {q['wall_per_trial_s']} s wall, {q['cpu_per_trial_s']} s CPU; "
                        f"optuna {kind['optuna.']:.0f}, tune state {kind['tune.']:.0f}, "
                        f"mlflow {kind['mlflow.']:.0f} ms")
    if quarters:
        rows.insert(6, ("per trial, by quarter of the trials", "<br>".join(quarters)))
    if e:
        rows.append((f"at {e['trials']:,} trials (extrapolated)",
                     f"search {e['search_wall_s']} s, driver CPU {e['driver_cpu_s']} s"
                     + (f", report {e['report_cli_wall_s']} s" if "report_cli_wall_s" in e else "")))
    return "| soak | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_at_end": [round(x, 1) for x in load] if load else None}


# --- small helpers -----------------------------------------------------------------------------------

def say(line: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {line}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _version(package: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _whoami() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_group(pid: int, grace_s: float) -> None:
    """SIGTERM to the process group `pid` leads (a process we started with its own session),
    then SIGKILL to what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _pids_in_group(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _server_temp_dirs(pgid: int) -> set[str]:
    """The job-queue folder MLflow's server made for itself (_MLFLOW_HUEY_STORAGE_PATH, a new
    mkdtemp under /dev/shm on every start), read from its processes' environments."""
    found = set()
    for pid in _pids_in_group(pgid):
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"_MLFLOW_HUEY_STORAGE_PATH="):
                    path = item.split(b"=", 1)[1].decode()
                    if os.path.basename(path).startswith("tmp") and os.path.isdir(path):
                        found.add(path)
    return found


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _pids_in_group(pgid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        fields = _stat(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(pid)
    return out


def _tree(root: int) -> list[int]:
    parents = {}
    for pid in _all_pids():
        fields = _stat(pid)
        if fields:
            parents.setdefault(int(fields[1]), []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def _proc_cpu(pid: int) -> float:
    fields = _stat(pid)
    if not fields:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
