"""pcbench's MLflow tracking server on a cluster, secure by default: MLflow's basic-auth app
with a generated admin password and Flask secret key, a PostgreSQL backend store, and every
secret in a file only its user can read (never on a command line, never in the repository).

    # AWS/GCP head (cluster/aws.yaml, gcp.yaml): PostgreSQL on loopback, MLflow in the
    # background; returns once MLflow answers
    python cluster/mlflow_server.py start --state ~/mlflow --postgres --artifacts s3://BUCKET/mlflow
    # Kubernetes (cluster/kuberay/mlflow.yaml): in the foreground, secrets from a Secret
    python cluster/mlflow_server.py serve --state /run/mlflow --host 0.0.0.0 --artifacts s3://...
    python cluster/mlflow_server.py stop --state ~/mlflow

The state folder (0700; every file in it 0600):
    secrets.json    admin password, Flask secret key, PostgreSQL password: taken from the
                    environment (MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY,
                    PCBENCH_DB_PASSWORD) when set, else generated once and kept
    basic_auth.ini  MLflow's auth configuration (MLFLOW_AUTH_CONFIG_PATH)
    client.env      MLFLOW_TRACKING_URI, _USERNAME and _PASSWORD for the driver: the head
                    sources it before `ray start --head`, so `ray job submit` entrypoints have it
    postgres/       the PostgreSQL cluster (--postgres): 127.0.0.1 only, password auth
    server.log, postgres.log, mlflow.pid

Standard library only: it runs before anything else on the head.
"""

import argparse
import glob
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ADMIN = "admin"
DB_USER = DB_NAME = "mlflow"
_FROM_ENV = {"admin_password": "MLFLOW_AUTH_ADMIN_PASSWORD",
             "flask_secret_key": "MLFLOW_FLASK_SERVER_SECRET_KEY",
             "db_password": "PCBENCH_DB_PASSWORD"}


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user alone, from the first byte (no chmod after the fact)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def state_dir(path: Path) -> Path:
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    # 0711 as root: the `postgres` user must traverse it to its data folder (it lists nothing).
    path.chmod(0o711 if os.geteuid() == 0 else 0o700)
    return path


def load_secrets(state: Path, names: list[str]) -> dict[str, str]:
    """The environment's values first, then the ones kept from an earlier start, else new ones
    (hex: safe in a URL, an ini file and a shell). Kept so a restart keeps its logins."""
    kept_file = state / "secrets.json"
    kept = json.loads(kept_file.read_text()) if kept_file.exists() else {}
    values = {**kept, **{name: os.environ.get(_FROM_ENV[name]) or kept.get(name) or secrets.token_hex(24)
                         for name in names}}
    if values != kept:
        _write_private(kept_file, json.dumps(values, indent=1) + "\n")
    return values


def write_auth_config(state: Path, admin_password: str, database_uri: str) -> Path:
    """MLflow's basic_auth.ini. MLflow ships no default admin password: it creates `admin` with
    this one on the first start against an empty user store. Signed-in users may read every
    experiment (READ); an experiment's creator manages it."""
    ini = state / "basic_auth.ini"
    _write_private(ini, "[mlflow]\n"
                        "default_permission = READ\n"
                        f"database_uri = {database_uri}\n"
                        f"admin_username = {ADMIN}\n"
                        f"admin_password = {admin_password}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return ini


def write_client_env(state: Path, tracking_uri: str, admin_password: str) -> Path:
    env = state / "client.env"
    _write_private(env, "".join(f"{k}={shlex.quote(v)}\n" for k, v in (
        ("MLFLOW_TRACKING_URI", tracking_uri), ("MLFLOW_TRACKING_USERNAME", ADMIN),
        ("MLFLOW_TRACKING_PASSWORD", admin_password))))
    return env


def _pg_tool(name: str) -> str:
    """Debian and Ubuntu keep the server's programs off PATH, in /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                      key=lambda p: int(Path(p).parts[-3]), default=None)
    if not found:
        sys.exit(f"PostgreSQL's {name} is not installed; the pcbench image has it (cluster/Dockerfile)")
    return found


def _as_pg_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: an image run as root hands it to the `postgres` user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(state: Path, password: str, port: int) -> str:
    """A PostgreSQL cluster in state/postgres, reachable on 127.0.0.1:port only (and its Unix
    socket in its own 0700 folder), every login by password; started unless it runs. Returns
    the store's URI."""
    data = state / "postgres"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data}"
    ctl = [_pg_tool("pg_ctl"), "-D", str(data)]
    if os.geteuid() == 0 and subprocess.run(_as_pg_user(["test", "-x", str(state)])).returncode != 0:
        sys.exit(f"as root, PostgreSQL runs as the user postgres, which cannot reach {state}: give a "
                 f"--state that it can traverse to (not under /root)")
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        # initdb reads the password from a file: a private one, gone once it has run
        pw_file = state / ".initdb-password"
        _write_private(pw_file, password + "\n")
        try:
            if os.geteuid() == 0:
                shutil.chown(pw_file, "postgres", "postgres")
            subprocess.run(_as_pg_user([_pg_tool("initdb"), "-D", str(data), "-U", DB_USER, "-E", "UTF8",
                                        "--auth=scram-sha-256", f"--pwfile={pw_file}"]),
                           check=True, stdout=subprocess.DEVNULL)
        finally:
            pw_file.unlink()
    if subprocess.run(_as_pg_user([*ctl, "status"]), stdout=subprocess.DEVNULL).returncode != 0:
        log = data / "server.log"  # in its folder: the postgres user writes it
        subprocess.run(_as_pg_user([*ctl, "-l", str(log), "-o", options, "-w", "start"]), check=True,
                       stdout=subprocess.DEVNULL)
    # every start, not only the first: a first start stopped before it would leave no database
    made = subprocess.run([_pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME],
                          env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stderr:
        sys.exit(f"createdb {DB_NAME} failed: {made.stderr.strip()}")
    # the driver named: `postgresql://` means psycopg2 under SQLAlchemy 2.0, psycopg under 2.1
    return f"postgresql+psycopg://{DB_USER}:{password}@127.0.0.1:{port}/{DB_NAME}"


def prepare(args) -> tuple[list[str], dict[str, str]]:
    """Secrets, PostgreSQL (--postgres), the auth and client files; the server's command and
    environment. The backend store's URI travels in the environment, not on the command line."""
    state = state_dir(Path(args.state))
    values = load_secrets(state, ["admin_password", "flask_secret_key"] + ["db_password"] * args.postgres)
    if args.postgres:
        backend = start_postgres(state, values["db_password"], args.pg_port)
    else:
        backend = args.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI")
        if not backend:
            sys.exit("give --postgres, --backend-store-uri or MLFLOW_BACKEND_STORE_URI")
    # users and permissions beside the runs: in PostgreSQL (its own alembic table, its own
    # tables), so they outlive a pod; a SQLite store gets its own file
    auth_db = backend if backend.startswith("postgresql") else f"sqlite:///{state / 'basic_auth.db'}"
    ini = write_auth_config(state, values["admin_password"], auth_db)
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    write_client_env(state, f"http://{local}:{args.port}", values["admin_password"])
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(ini),
               MLFLOW_FLASK_SERVER_SECRET_KEY=values["flask_secret_key"],
               MLFLOW_BACKEND_STORE_URI=backend)
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "PCBENCH_DB_PASSWORD"):
        env.pop(name, None)  # the ini holds them: one source
    allowed = args.allowed_hosts or "localhost:*,127.0.0.1:*"
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
               "--artifacts-destination", args.artifacts, "--host", args.host, "--port", str(args.port),
               "--allowed-hosts", allowed, "--workers", str(args.workers)]
    return command, env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_mlflow(state: Path) -> None:
    pid_file = state / "mlflow.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)  # the server and its workers
        for _ in range(60):
            os.kill(pid, 0)
            time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()


def stop(args) -> None:
    state = Path(args.state).expanduser().resolve()
    _stop_mlflow(state)
    if (state / "postgres" / "PG_VERSION").exists():
        subprocess.run(_as_pg_user([_pg_tool("pg_ctl"), "-D", str(state / "postgres"), "-m", "fast",
                                    "-w", "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start(args) -> None:
    """(Re)start MLflow in its own session (it outlives the launcher's shell); return once it
    answers, or exit 1 with the end of its log."""
    state = Path(args.state).expanduser().resolve()
    _stop_mlflow(state)  # a re-run `ray up` restarts it with the current settings
    command, env = prepare(args)
    log_path = state / "server.log"
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as log:
        server = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    _write_private(state / "mlflow.pid", f"{server.pid}\n")
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    deadline = time.monotonic() + args.timeout
    while not _healthy(f"http://{local}:{args.port}"):
        if server.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            stop(args)
            sys.exit("MLflow did not start:\n" + "\n".join(tail))
        time.sleep(1)
    print(f"MLflow (basic auth) at http://{local}:{args.port}; credentials in {state / 'client.env'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "serve", "stop"])
    parser.add_argument("--state", required=True, help="folder for secrets, config, logs (0700)")
    parser.add_argument("--artifacts", help="--artifacts-destination: s3://, gs://, or a folder")
    parser.add_argument("--postgres", action="store_true", help="run PostgreSQL on 127.0.0.1 in --state")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--backend-store-uri", help="else MLFLOW_BACKEND_STORE_URI (or --postgres)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--allowed-hosts", help="Host headers served (default: localhost, 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300, help="seconds `start` waits for MLflow")
    args = parser.parse_args(argv)
    os.umask(0o077)  # whatever the server writes too (the auth database holds password hashes)
    if args.action == "stop":
        return stop(args)
    if not args.artifacts:
        parser.error("--artifacts is required")
    try:
        if args.action == "start":
            return start(args)
        command, env = prepare(args)
    except subprocess.CalledProcessError as error:
        sys.exit(f"{Path(error.cmd[0]).name} {' '.join(error.cmd[1:3])}... failed with exit code "
                 f"{error.returncode} (its lines are above)")
    os.execve(command[0], command, env)  # serve: the server is the container's main process


if __name__ == "__main__":
    main()
