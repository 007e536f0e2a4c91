"""MLflow: an experiment per problem, a parent run per search, a child run per trial.

All writes happen in the driver process (one SQLite writer locally; an `mlflow server` on a
cluster)."""

import logging
import time
from typing import Any
from urllib.parse import urlencode

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pcbench.errors import UserError
from pcbench.storage import sqlite_lock, sqlite_path

logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema-migration chatter

# MLflow 3's UI opens an experiment in its GenAI view (traces, token usage) unless the
# experiment says it is model training; its runs page then shows the training view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The runs page as a researcher wants it first: the training view, every run (searches and
# their trials) listed flat by validation accuracy.
RUNS_VIEW = {"workflowType": "machine_learning", "orderByKey": "metrics.`val_acc`", "orderByAsc": "false"}


def runs_page(base_url: str, experiment_id: str) -> str:
    return f"{base_url}/#/experiments/{experiment_id}/runs?{urlencode(RUNS_VIEW)}"


def _local_artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into the working dir."""
    path = sqlite_path(uri)
    return (path.resolve().parent / "mlartifacts").as_uri() if path else None


class Tracker:
    def __init__(self, uri: str, experiment: str, create: bool = True):
        """Opens `experiment` in the store at `uri`, creating it unless `create` is False
        (then `experiment_id` is None when there is none)."""
        self.uri = uri
        self.experiment_id: str | None = None
        with sqlite_lock(uri):  # the client's first use creates (migrates) a new store
            self.client = MlflowClient(tracking_uri=uri)
            self._open(experiment, create)

    def _open(self, experiment: str, create: bool) -> None:
        uri = self.uri
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as error:  # noqa: BLE001 - any store failure is the user's URI
            raise UserError(f"cannot open the MLflow store {uri} ({type(error).__name__}); "
                            f"check --tracking-uri or MLFLOW_TRACKING_URI") from None
        if found is None and not create:
            return
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_local_artifact_root(uri), tags=EXPERIMENT_KIND)
        else:
            self.experiment_id = found.experiment_id
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:  # made by an older pcbench, or by hand
                    self.client.set_experiment_tag(self.experiment_id, key, value)

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, str],
                  parent_run_id: str | None = None) -> str:
        tags = dict(tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={k: str(v) for k, v in tags.items()})
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run.info.run_id, params=items[start:start + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        # non-finite values too: MLflow stores NaN and +-inf, and a blow-up should be seen
        numeric = [Metric(k, float(v), now, step) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric:
            self.client.log_batch(run_id, metrics=numeric)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def unfinished_parent(self, fingerprint: str, search_id: str | None) -> tuple[str, str] | None:
        """(search id, run id) of the latest parent run with these settings that did not
        finish (its driver was killed or stopped), or of `search_id` when given."""
        query = f"tags.`pcbench.fingerprint` = '{fingerprint}' and attributes.status != 'FINISHED'"
        if search_id:
            query += f" and tags.`pcbench.search_id` = '{search_id}'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return (runs[0].data.tags["pcbench.search_id"], runs[0].info.run_id) if runs else None

    def end_running_children(self, parent_run_id: str, status: str) -> None:
        for run in self.children(parent_run_id):
            if run.info.status == "RUNNING":
                self.end_run(run.info.run_id, status)

    def children(self, parent_run_id: str) -> list:
        return self.client.search_runs([self.experiment_id],
                                       f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)

    def epoch_history(self, run_id: str) -> list[dict[str, Any]]:
        """A run's per-epoch metrics rebuilt from MLflow (a trial resumed by a new driver)."""
        run = self.client.get_run(run_id)
        by_step: dict[int, dict[str, Any]] = {}
        for key in run.data.metrics:
            for metric in self.client.get_metric_history(run_id, key):
                by_step.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
        return [by_step[step] for step in sorted(by_step)]
