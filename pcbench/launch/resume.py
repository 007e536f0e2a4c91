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
its MLflow run and its Parquet rows stay one: a search's trial marked so in its config (RESUMES,
by the searcher), a run (a final run's plan and seed) found by its config."""

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs

RESUMES = "resumes"  # in a Tune trial's config: the id of the killed driver's trial it continues
TRIAL_ATTR = "pcbench.trial"  # on an Optuna trial: the Tune trial that ran it
COHORT_ATTR = "pcbench.cohort"  # on an Optuna trial of a cohort search: the cohort it trained in
_PARAMS = "params.json"  # written by Tune's JsonLoggerCallback: the trial's config


class StudyState:
    """For a Searcher whose state is the Optuna study: Tune saves nothing of it, and so never
    finds a searcher pickle of pcbench's to load back."""

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass


def trial_folder(trial) -> str:
    """Tune's trial_dirname_creator: a trial's folder is its id, so a resumed search finds it."""
    return trial.trial_id


@dataclass
class Resumption:
    """The killed drivers' trials of one experiment: each trial's (first) id and the folder of
    its newest checkpoint, and for runs (no search) which run each was: its plan and seed."""

    checkpoints: dict[str, str | None] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # a run's config -> its first trial id

    def continued(self, config: dict[str, Any]) -> str | None:
        """The id of the killed driver's trial that a Tune trial of this config continues: the
        searcher's mark, or the run of the same plan and seed."""
        return config.get(RESUMES) or self.runs.get(run_key(config))

    def checkpoint(self, config: dict[str, Any]) -> str | None:
        trial_id = self.continued(config)
        return self.checkpoints.get(trial_id) if trial_id else None


def run_key(config: dict[str, Any]) -> str:
    return json.dumps(without_mark(config), sort_keys=True)


def without_mark(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != RESUMES}


def read_experiment(experiment: str, runs: bool) -> Resumption:
    """The trials a killed driver left in `experiment` (a folder or a URI), read from each trial
    folder's params.json and checkpoint_* folders; no other file is opened. `runs`: the
    experiment's trials are runs (a grid of plans and seeds), each continued by the trial of
    its config; the first trial of a config is the one that started earliest."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    found = []  # (started, folder, config, newest checkpoint or None)
    for folder in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if folder.type != pyarrow.fs.FileType.Directory:
            continue
        params = fs.get_file_info(f"{folder.path}/{_PARAMS}")
        if params.type != pyarrow.fs.FileType.File:
            continue  # not a trial's folder, or one that never started
        try:
            with fs.open_input_stream(params.path) as f:
                config = json.loads(f.read())
        except (OSError, ValueError):
            continue
        checkpoints = [c for c in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))
                       if c.type == pyarrow.fs.FileType.Directory and c.base_name.startswith("checkpoint_")]
        newest = max(checkpoints, key=lambda c: c.base_name, default=None)  # checkpoint_NNNNNN
        found.append((params.mtime_ns or 0, folder.base_name, config, newest))
    resumption = Resumption()
    for _, name, config, newest in sorted(found, key=lambda f: f[0]):  # a continuation after its first
        first = config.get(RESUMES) or (resumption.runs.setdefault(run_key(config), name) if runs else name)
        resumption.checkpoints.setdefault(first, None)
        if newest is not None:
            resumption.checkpoints[first] = f"{experiment.rstrip('/')}/{name}/{newest.base_name}"
    return resumption
