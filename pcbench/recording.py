"""What the driver records about every trial, however it ran (Ray Tune or a plain process):
an MLflow child run under the search's parent run, and rows for the Parquet store."""

import json
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pcbench.config import TrialConfig
from pcbench.engine import DIVERGED
from pcbench.launch.plan import Stage
from pcbench.results import ResultsStore
from pcbench.selection import SCORING_RULE, SELECTION_SPLIT, trial_status

if TYPE_CHECKING:  # MLflow is imported only where something is tracked
    from pcbench.tracking import Tracker

CKA = "cka/embedding"  # the diagnostic the tables keep in a column of its own
_PACKAGES = ("pcbench", "torch", "torchvision", "ray", "optuna", "mlflow", "pot")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class _Trial:
    def __init__(self, config: TrialConfig, knobs: dict[str, Any], run_id: str, stage: Stage):
        self.config, self.knobs, self.run_id, self.stage = config, knobs, run_id, stage
        self.started = time.monotonic()
        self.epochs: list[dict[str, Any]] = []
        self.diverged: str | None = None  # the engine's reason, when the loss blew up


class SearchRecorder:
    """A TrialListener that writes MLflow runs as trials go, and each trial's Parquet rows (a
    part file of each table, written whole) the moment it ends: a driver that dies loses at
    most the trials in flight. `rows` keeps every trial row written, in order."""

    def __init__(self, tracker: "Tracker", parent_run_id: str, store: ResultsStore, search_id: str,
                 suite: str | None = None, resumed: bool = False):
        self.tracker, self.parent_run_id = tracker, parent_run_id
        self.store, self.search_id, self.suite = store, search_id, suite
        self.versions = package_versions()
        self._trials: dict[str, _Trial] = {}
        self.trials_seen = self.trials_failed = self.trials_diverged = 0
        self.rows: list[dict[str, Any]] = []
        # Resuming a killed driver's search: its finished trials are kept and never recorded
        # twice; its trials that were in flight (their runs KILLED) get their runs back.
        self._killed_runs: dict[str, str] = {}
        self._finished: set[str] = set()
        if resumed:
            self._resume()

    def _resume(self) -> None:
        trials = self.store.read("trials")
        self.rows = trials[trials["search_id"] == self.search_id].to_dict("records")
        finished = {row["trial_id"] for row in self.rows}
        for run in self.tracker.children(self.parent_run_id):
            trial_id = run.data.tags.get("pcbench.trial_id")
            if trial_id not in finished:
                if run.info.status == "RUNNING":
                    self.tracker.end_run(run.info.run_id, "KILLED")
                self._killed_runs[trial_id] = run.info.run_id
        self._finished = finished

    def end_in_flight(self, status: str = "KILLED") -> None:
        """The command is stopping: the trials still running end as `status` in MLflow (their
        rows are not written; a resumed search runs them on from their checkpoints)."""
        for trial in self._trials.values():
            self.tracker.set_tags(trial.run_id, {"pcbench.status": status.lower()})
            self.tracker.end_run(trial.run_id, status)
        self._trials.clear()

    def trial_started(self, trial_id, config, knobs, stage):
        if trial_id in self._trials or trial_id in self._finished:
            return  # restarted after a failure (the same run), or recorded before a resume
        if trial_id in self._killed_runs:  # in flight when the last driver died: the same run
            run_id = self._killed_runs.pop(trial_id)
            self.tracker.reopen_run(run_id)
            trial = _Trial(config, knobs, run_id, stage)
            trial.epochs = self.tracker.epoch_history(run_id)
            self._trials[trial_id] = trial
            return
        tags = {"pcbench.method": config.method.name, "pcbench.teacher": config.teacher,
                "pcbench.student": config.student, "pcbench.dataset": config.data.name,
                "pcbench.teacher_dataset": config.teacher_data,
                "pcbench.seed": config.seed, "pcbench.teacher_sha256": config.teacher_sha256 or "",
                "pcbench.config_hash": config.hash, "pcbench.trial_id": trial_id,
                "pcbench.search_id": self.search_id, "pcbench.phase": stage.phase,
                "pcbench.versions": json.dumps(self.versions, sort_keys=True)}
        params = {k: v for k, v in config.flat().items() if k not in ("teacher_weights",)}
        run_id = self.tracker.start_run(f"{config.method.name}-{trial_id}", params, tags,
                                        self.parent_run_id)
        self.tracker.log_dict(run_id, config.to_dict(), "config.yaml")
        self._trials[trial_id] = _Trial(config, knobs, run_id, stage)

    def trial_epoch(self, trial_id, metrics):
        if trial_id in self._finished:
            return
        trial = self._trials[trial_id]
        if metrics.get(DIVERGED):  # a last, partial epoch: the reason, not a row
            trial.diverged = metrics[DIVERGED]
            return
        # a resumed trial repeats the epochs after its last checkpoint: the new one counts
        trial.epochs = [e for e in trial.epochs if e["epoch"] < metrics["epoch"]] + [metrics]
        self.tracker.log_metrics(trial.run_id, metrics, step=int(metrics["epoch"]))

    def trial_finished(self, trial_id, error):
        if trial_id in self._finished:
            return
        trial = self._trials.pop(trial_id)
        self.trials_seen += 1
        self.trials_failed += error is not None
        self.trials_diverged += error is None and trial.diverged is not None
        cfg, epochs = trial.config, trial.epochs
        last = epochs[-1] if epochs else {}
        planned = cfg.train.epochs
        diverged = error is None and trial.diverged is not None
        status = trial_status(error, diverged, last.get("epoch"), planned)
        if diverged:
            error = f"diverged: {trial.diverged}"
        tags = {"pcbench.status": status, "pcbench.device": last.get("device", "")}
        self.tracker.set_tags(trial.run_id, {**tags, **({"pcbench.error": error} if error else {})})
        self.tracker.end_run(trial.run_id, "FAILED" if error else "FINISHED")
        row = {
            "search_id": self.search_id, "trial_id": trial_id, "mlflow_run_id": trial.run_id,
            "suite": self.suite, "phase": trial.stage.phase, "selected_trial": trial.stage.selected_trial,
            "method": cfg.method.name, "dataset": cfg.data.name, "teacher": cfg.teacher,
            "teacher_dataset": cfg.teacher_data, "student": cfg.student,
            "student_init": cfg.student_init, "seed": cfg.seed,
            "knobs": json.dumps(trial.knobs, sort_keys=True),
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "val_acc": last.get("val_acc"),
            "val_acc_best": max((e["val_acc"] for e in epochs if "val_acc" in e), default=None),
            "test_acc": last.get("test_acc"), "epochs_run": len(epochs), "epochs_planned": planned,
            # a cohort member's share of the process's time (compute_hours add up to the cost)
            "wall_seconds": (time.monotonic() - trial.started) / trial.stage.cohort,
            "cohort_size": trial.stage.cohort,
            "seeds_planned": trial.stage.planned_seeds or None,
            "train_seconds": sum(e.get("epoch_seconds", 0.0) for e in epochs),
            "workers": cfg.train.workers, "gpus": trial.stage.gpus_per_trial, "device": last.get("device"),
            "cka": last.get(CKA), "rank_agreement": last.get("rank_agreement"),
            "config_hash": cfg.hash, "teacher_sha256": cfg.teacher_sha256,
            "teacher_test_acc": cfg.teacher_test_acc, "recipe": cfg.train.recipe,
            "precision": cfg.train.precision, "status": status,
            "error": error, "scoring_rule": SCORING_RULE, "selection_split": SELECTION_SPLIT,
            "versions": json.dumps(self.versions, sort_keys=True),
            "finished_at": datetime.now(timezone.utc),
        }
        epoch_rows = [{
            "search_id": self.search_id, "trial_id": trial_id, "method": cfg.method.name,
            "epoch": int(e["epoch"]), "train_loss": e.get("train_loss"),
            "loss_terms": json.dumps({k.removeprefix("loss/"): v for k, v in e.items()
                                      if k.startswith("loss/")}, sort_keys=True),
            "val_acc": e.get("val_acc"), "val_loss": e.get("val_loss"),
            "test_acc": e.get("test_acc"), "lr": e.get("lr"),
            "epoch_seconds": e.get("epoch_seconds"), "cka": e.get(CKA),
            "cka_taps": json.dumps({k.removeprefix("cka/"): v for k, v in e.items() if k.startswith("cka/")},
                                   sort_keys=True) if CKA in e else None,
            "rank_agreement": e.get("rank_agreement"),
        } for e in epochs]
        part = f"{self.search_id}-{trial.stage.phase}-{trial_id}"
        self.store.write("epochs", epoch_rows, part)  # epochs first: a trial row means all is there
        self.store.write("trials", [row], part)
        self.rows.append(row)
