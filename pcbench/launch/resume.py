"""What a resumed search starts from: pcbench's own records, never a pickle. Tune's experiment
state (tuner.pkl, the searcher's state) is cloudpickle, so anyone who can write a shared results
store could run code as the next user who resumes from it. A resumed search is therefore a new
Tune experiment in the same folder, rebuilt from:
- the trial rows already written (the workflow asks only for the trials still missing);
- the Optuna study's database: each trial's parameters, intermediate values and marks (which
  search asked for it, which Tune trial ran it, which cohort it trained in);
- the trials' folders: params.json (JSON) and the last checkpoint, which the engine loads with
  torch.load(weights_only=True).
A trial in flight when the driver died goes on from its last checkpoint under its first id, so
its MLflow run and its Parquet rows stay one."""

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs

RESUMES = "resumes"  # in a Tune trial's config: the id of the killed driver's trial it continues
TRIAL_ATTR = "pcbench.trial"  # on an Optuna trial: the Tune trial that ran it
COHORT_ATTR = "pcbench.cohort"  # on an Optuna trial of a cohort search: the cohort it trained in
_PARAMS = "params.json"  # written by Tune's JsonLoggerCallback: the trial's config


def trial_folder(trial) -> str:
    """Tune's trial_dirname_creator: a trial's folder is its id, so a resumed search finds it."""
    return trial.trial_id


@dataclass
class Resumption:
    """The killed drivers' trials of one experiment: each trial's (first) id and the folder of
    its newest checkpoint, and which grid run (a final run's plan and seed) each was."""

    checkpoints: dict[str, str | None] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # grid key -> trial id

    def continued(self, config: dict[str, Any]) -> str | None:
        """The id of the trial that a Tune trial of this config continues, if any."""
        return config.get(RESUMES)

    def checkpoint(self, config: dict[str, Any]) -> str | None:
        trial_id = self.continued(config)
        return self.checkpoints.get(trial_id) if trial_id else None

    def grid_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """A grid run's config, marked with the trial it continues where one ran it."""
        trial_id = self.runs.get(grid_key(point))
        return {**point, RESUMES: trial_id} if trial_id else point


def grid_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != RESUMES}, sort_keys=True)


def without_mark(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != RESUMES}


def read_experiment(experiment: str) -> Resumption:
    """The trials a killed driver left in `experiment` (a folder or a URI): read from each trial
    folder's params.json and checkpoint_* folders, newest first; no other file is opened."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    resumption, written = Resumption(), {}
    for folder in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if folder.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{folder.path}/{_PARAMS}") as f:
                config = json.loads(f.read())
        except (OSError, ValueError):
            continue  # not a trial's folder, or one that never started
        first = config.get(RESUMES) or folder.base_name
        resumption.runs.setdefault(grid_key(config), first)
        checkpoints = [c for c in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))
                       if c.type == pyarrow.fs.FileType.Directory and c.base_name.startswith("checkpoint_")]
        newest = max(checkpoints, key=lambda c: c.mtime_ns or 0, default=None)
        if newest is not None and (newest.mtime_ns or 0) >= written.get(first, -1):
            written[first] = newest.mtime_ns or 0
            resumption.checkpoints[first] = f"{experiment.rstrip('/')}/{folder.base_name}/{newest.base_name}"
        else:
            resumption.checkpoints.setdefault(first, None)
    return resumption
