"""Starting (or attaching to) Ray."""

import contextlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path

# Before Ray Tune is imported: no CSV/TensorBoard loggers per trial (MLflow and Parquet record
# everything; search.py keeps Tune's JSON log for its own ResultGrid), and no per-trial
# working-directory switch (all paths are absolute).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no console tables
# Checkpointing every epoch with num_to_keep=1 snapshots the experiment state often; on small
# trials that is cheap and expected, so Tune need not warn about it.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ctrl-C stops the whole command (pcbench ends the trials in flight as KILLED and says how to
# resume), not just the current Tune run while the driver carries on with the next method.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# Tune saves its experiment state (trials, searcher) at most this often: what `--resume`
# restores after a killed driver. "auto" would wait 10 s or more between saves.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Tune would log every trial failure's traceback, a recovered one's too: search.py's relay says
# each in one line (a failure's exception, a restart's reason).
os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")

import ray  # noqa: E402

from pcbench.errors import UserError  # noqa: E402
from pcbench.plugins import shipped_paths  # noqa: E402


def start_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False,
              plugins: list[str] = ()) -> None:
    """Attach to `address` (or RAY_ADDRESS) when given, else start a local instance. A local
    instance runs without the dashboard unless `dashboard`: its processes compete with the
    trials for a laptop's few cores, and the MLflow UI is where pcbench's runs are watched.
    DDP trials need it: a Train trial that Tune stops (ASHA, or its last epoch) kills its Train
    controller, and only Train's placement-group cleaner, which asks the dashboard's state API,
    then frees its workers' CPUs. On a cluster the plug-ins' files and folders travel to every
    node in the job's runtime environment (a local instance's workers read them where they are)."""
    shipped = shipped_paths(list(plugins))
    if ray.is_initialized():
        if _attached is not None and not set(shipped) <= _attached:
            raise UserError(f"this process attached to the Ray cluster before the plug-ins "
                            f"{', '.join(sorted(set(shipped) - _attached))} were named, so the cluster "
                            f"does not have them; run the command in a new process")
        return
    address = address or os.environ.get("RAY_ADDRESS") or None  # an empty RAY_ADDRESS: none
    with _keeping_sigterm():
        if address is None:
            _start_local(num_cpus, dashboard)
            return
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env={"py_modules": shipped} if shipped else None)
            _set_attached(shipped)
        except ConnectionError as error:
            raise UserError(f"cannot reach the Ray cluster at {address} ({error}); check --address "
                            f"or RAY_ADDRESS") from None


@contextlib.contextmanager
def _keeping_sigterm():
    """ray.init installs a SIGTERM handler that exits the process at once (Ray's core then
    aborts it: exit 134); the command's own handler, which ends the trials in flight and the
    runs, and exits 143, is put back."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(handler):  # a handler of the command's; else Ray's stays (the API's callers)
            signal.signal(signal.SIGTERM, handler)


# The plug-ins shipped to the cluster this process attached to (None: not attached to one; a
# local instance's workers read plug-ins where they are).
_attached: set[str] | None = None


def _set_attached(shipped: list[str] | None) -> None:
    global _attached
    _attached = None if shipped is None else set(shipped)


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
    _set_attached(None)


def _start_local(num_cpus: int | None, dashboard: bool) -> None:
    """A new instance of our own ("local": never a cluster some `ray start` left running).
    Its GCS port is chosen here and its processes inherit RAY_ADDRESS naming it: Ray's own
    helpers that find "the" cluster (Train's placement-group cleaner) would otherwise read
    /tmp/ray/ray_current_cluster, which names the last `ray start` cluster, often long gone."""
    port = _free_port()
    own = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}
    saved = {name: os.environ.get(name) for name in own}
    os.environ.update(own)  # read by the GCS and the raylet as ray.init spawns them
    # Ray warns at every start that it turned token auth on; pcbench's instances always have it
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                 log_to_driver=False, logging_level=logging.WARNING)
        _own_token_file()
    finally:  # this process may start another instance later (tests do)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _own_token_file() -> None:
    """Ray writes the local instance's auth token to ~/.ray/auth_token readable by everyone;
    only its user may read it (anyone who has it can submit work to the instance)."""
    token = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):  # none written (auth off), or not ours to change
        if token.is_file() and token.stat().st_uid == os.getuid():
            token.chmod(0o600)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
