"""Checks of where a command reads and writes, made before anything is written or Ray
starts: each failure is a UserError, one line that names the fix. Light: no PyTorch, no Ray,
no MLflow import."""

import contextlib
import errno
import importlib.util
import ipaddress
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from pcbench.errors import UserError
from pcbench.storage import Location, is_uri, resolve, sqlite_path, sqlite_uri

SQLITE_HEADER = b"SQLite format 3\x00"
# MLflow tracking URIs pcbench can use: a SQLite file, a tracking server, or a database
# behind SQLAlchemy (MLflow 3's file store is disabled).
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
# The driver SQLAlchemy names for a database URL -> the module it imports, what to pip install
# (no brackets: the error line is printed through rich, which would take [binary] for markup).
DRIVERS = {"psycopg": ("psycopg", "psycopg psycopg-binary"), "psycopg2": ("psycopg2", "psycopg2-binary"),
           "pg8000": ("pg8000", "pg8000"), "mysqldb": ("MySQLdb", "mysqlclient"),
           "pymysql": ("pymysql", "pymysql"), "pyodbc": ("pyodbc", "pyodbc"),
           "oracledb": ("oracledb", "oracledb"), "cx_oracle": ("cx_Oracle", "cx_Oracle")}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(Path("mlflow.db").resolve())


def check_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a writable directory (nothing is created here)."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"{flag} {path} cannot be written ({probe} is not a writable folder); "
                        f"pass a folder you can write to")


def check_results(value: "str | Path", flag: str = "--results") -> Location:
    """A folder must be writable (check_writable); a URI must give a pyarrow filesystem
    (unknown scheme, missing library or credentials: a UserError). Nothing is created and,
    beyond what `FileSystem.from_uri` does itself, nothing is asked of a remote store."""
    location = resolve(value, flag)
    if location.is_local:
        check_writable(location.local_path if is_uri(value) else Path(value), flag)
    return location


# Tables that make a database one tool's store: the other must not write into it (both keep
# their schema version in `alembic_version`, so each would take the other's for its own).
_STORE_TABLES = {"--tracking-uri": ("an Optuna study database", {"studies", "trials"}),
                 "--optuna-storage": ("an MLflow tracking store", {"experiments", "runs"})}


def _sqlite_tables(path: Path) -> set[str]:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()  # locked or damaged: the store's own open says so


def _check_sqlite(uri: str, flag: str) -> None:
    """A SQLite URI names a file that is a SQLite database or does not exist yet, in a
    folder that can be written, and not the other tool's store."""
    path = sqlite_path(uri)
    if path is None or not path.name:
        raise UserError(f"{flag} {uri}: write a SQLite store as sqlite:////absolute/path.db or "
                        f"sqlite:///relative/path.db")
    if path.exists():
        try:
            with open(path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as error:
            raise UserError(f"{flag} {uri}: cannot read {path} ({error.strerror})") from None
        if path.is_dir() or (header and header != SQLITE_HEADER):
            raise UserError(f"{flag} {uri}: {path} exists and is not a SQLite database; "
                            f"pass a new file or an existing store")
        what, tables = _STORE_TABLES[flag]
        if header and tables <= _sqlite_tables(path):
            raise UserError(f"{flag} {uri}: {path} is {what}; give {flag} a database of its own")
    check_writable(path.parent, flag)


def _scheme(uri: str, flag: str, allowed: tuple[str, ...], what: str) -> str:
    """The URI's scheme (`postgresql+psycopg` counts as `postgresql`), if pcbench can use it."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in allowed:
        raise UserError(f"{flag} {uri}: {what}")
    return scheme


def check_tracking_uri(uri: str) -> None:
    """The MLflow store: a usable scheme, a SQLite file that is one, a server that answers."""
    scheme = _scheme(uri, "--tracking-uri", TRACKING_SCHEMES,
                     "not an MLflow store pcbench can use; give sqlite:///path/mlflow.db or "
                     "http://host:port of an `mlflow server`")
    if scheme == "sqlite":
        _check_sqlite(uri, "--tracking-uri")
    elif scheme in ("http", "https"):
        _check_server(uri)
    elif scheme != "databricks":
        check_driver(uri, "--tracking-uri")


def check_driver(uri: str, flag: str) -> None:
    """The driver SQLAlchemy would load for a database URL is installed: found, not imported.
    SQLAlchemy picks it (`postgresql://` is psycopg2 under SQLAlchemy 2.0, psycopg under 2.1);
    the URL's password never reaches the message."""
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        driver = url.get_dialect().driver  # the dialect's module only: no driver import
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise UserError(f"{flag}: not a database URL SQLAlchemy can use "
                        f"({str(error).splitlines()[0][:200]})") from None
    module, package = DRIVERS.get(driver, (driver, driver))
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{flag} {url.render_as_string(hide_password=True)}: its driver {module} "
                        f"is not installed; pip install {package}")


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow server answers /health within seconds (MLflow's client would retry for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
    except urllib.error.HTTPError as error:
        raise UserError(f"--tracking-uri {uri}: the server answered /health with HTTP {error.code}; "
                        f"is it an `mlflow server`?") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start "
                        f"one or fix the URI") from None


def check_optuna_storage(uri: str, tracking_uri: str | None = None) -> None:
    """Optuna's database: a usable scheme and driver, a SQLite file that is one, and never the
    MLflow store (`tracking_uri`) itself."""
    same_file = sqlite_path(uri) and sqlite_path(tracking_uri or "") and \
        sqlite_path(uri).resolve() == sqlite_path(tracking_uri).resolve()
    if tracking_uri is not None and (uri == tracking_uri or same_file):
        raise UserError(f"--optuna-storage {uri} is also the --tracking-uri; give Optuna a database of "
                        f"its own (by default optuna.db beside mlflow.db)")
    scheme = _scheme(uri, "--optuna-storage", OPTUNA_SCHEMES,
                     "not a database URL Optuna can use; give sqlite:///path/optuna.db or "
                     "postgresql://user@host/db")
    if scheme == "sqlite":
        _check_sqlite(uri, "--optuna-storage")
    else:
        check_driver(uri, "--optuna-storage")


def check_address(address: str | None) -> None:
    """Ray retries an unreachable address for minutes; a plain connect answers at once."""
    if not address or address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("", "ray", "http", "https") or not host or not port.isdigit():
        raise UserError(f"--address {address}: not a Ray address; give auto, HOST:PORT, "
                        f"ray://HOST:PORT or http://HOST:8265")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            # a TLS GCS answers the plain preface with an alert: not probed
            speaks_grpc = (scheme in ("http", "https") or os.environ.get("RAY_USE_TLS", "0") not in ("", "0")
                           or _answers_http2(connection))
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); "
                        f"check --address or RAY_ADDRESS") from None
    if not speaks_grpc:  # Ray would retry it for a minute: it is not Ray's GCS (or client server)
        raise UserError(f"{address} answers, but not as Ray: give the head's GCS port (ray start "
                        f"--head prints it; 6379 by default) or ray://HOST:10001")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + SETTINGS


def _answers_http2(connection: socket.socket) -> bool:
    """Ray's GCS and client server are gRPC: sent HTTP/2's preface, they answer with a SETTINGS
    frame (type 4, the frame header's fourth byte); an HTTP/1 server answers text, or nothing."""
    try:
        connection.settimeout(3)
        connection.sendall(_HTTP2_PREFACE)
        header = connection.recv(9)
    except OSError:
        return False
    return len(header) >= 4 and header[3] == 4




def check_port(port: int, host: str = "127.0.0.1") -> None:
    """The UI can listen on `host:port`: the port is free there (bound on that very host: one
    taken on 127.0.0.2 is not seen from 127.0.0.1), and the host is this machine's."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 1..65535; pick a free one such as 5000")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host}: not an address or name of this machine; give one such "
                        f"as 127.0.0.1") from None
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port} is in use on {host}; pick another with --port") from None
            raise UserError(f"--host {host}: cannot listen there ({error.strerror}); give an "
                            f"address of this machine such as 127.0.0.1") from None


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
    except (socket.gaierror, UnicodeError, ValueError):
        return False


def check_environment(local_ray: bool) -> None:
    """The folders the environment names: TMPDIR (Ray's session folders; an empty one would put
    them in the working directory) and, where a local Ray instance starts with token auth, HOME
    (Ray writes its auth token in ~/.ray unless one is there to read)."""
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir is not None and not _can_write_in(tmpdir):
        raise UserError(f"TMPDIR={tmpdir!r} is not a writable folder; unset it or point it at one")
    if not local_ray or os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    try:
        home = str(Path.home())  # HOME, else the user's entry
    except RuntimeError:
        home = None
    ray_folder = os.path.join(home, ".ray") if home else None
    token = os.path.join(ray_folder, "auth_token") if ray_folder else None
    if token and os.path.isfile(token) and os.access(token, os.R_OK):
        return  # Ray only reads it
    if not _can_write_in(ray_folder if ray_folder and os.path.isdir(ray_folder) else home):
        raise UserError(f"HOME={os.environ.get('HOME')!r} is not a writable folder, where Ray keeps the "
                        f"local instance's auth token (~/.ray); set HOME to one, or pass --address of a "
                        f"running cluster")


def _can_write_in(folder: str | None) -> bool:
    """By trying (a folder made and removed at once): permission bits do not bind root, and
    /proc or a read-only mount refuse whatever they say."""
    import tempfile

    if not folder or not os.path.isdir(folder):
        return False
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pcbench-probe-"):
            return True
    except OSError:
        return False
