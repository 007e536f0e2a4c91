"""Starting (or attaching to) Ray."""

import logging
import os

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

import ray  # noqa: E402

from pcbench.errors import UserError  # noqa: E402


def start_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Attach to `address` (or RAY_ADDRESS) when given, else start a local instance. A local
    instance runs without the dashboard unless `dashboard`: its processes compete with the
    trials for a laptop's few cores, and the MLflow UI is where pcbench's runs are watched.
    DDP trials need it: without the dashboard's state API, a Train trial that ASHA stops
    leaks its placement group and every later DDP trial waits for workers forever."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        # "local": a new instance of our own, never a cluster some `ray start` left running.
        ray.init(address=address or "local", num_cpus=None if address else num_cpus,
                 include_dashboard=None if address else dashboard,
                 log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise UserError(f"cannot reach the Ray cluster at {address} ({error}); check --address "
                        f"or RAY_ADDRESS") from None
