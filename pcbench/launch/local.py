"""The local backend: a plan's trials one after another in this process, with the engine
and no Ray (`pcbench run --no-ray`, and where Ray cannot be installed). Same plan, same
listener events as the Ray backend (search.py)."""

import tempfile
import uuid
from typing import Sequence

from pcbench.config import build_config
from pcbench.launch.plan import SearchPlan, TrialListener
from pcbench.storage import resolve


def run_local(plan: SearchPlan, listeners: Sequence[TrialListener]) -> None:
    """Each trial's checkpoints go to <storage>/<plan>/<trial> when the storage is a local
    folder; with a remote URI, to a local temporary folder removed when the trial ends (its
    rows still go to the results store)."""
    if plan.space is not None or plan.paired:
        raise ValueError("the local backend runs configurations one at a time; a search or a "
                         "cohort needs Ray")
    location = resolve(plan.storage)
    for knobs in plan.runs():
        trial_id = uuid.uuid4().hex[:8]
        if location.is_local:
            _train(plan, knobs, trial_id, str(location.local_path / plan.name / trial_id), listeners)
        else:
            with tempfile.TemporaryDirectory(prefix=f"pcbench-{trial_id}-") as folder:
                _train(plan, knobs, trial_id, folder, listeners)


def _train(plan: SearchPlan, knobs: dict, trial_id: str, folder: str,
           listeners: Sequence[TrialListener]) -> None:
    from pcbench.engine import LocalReporter, train_trial  # torch: only when a trial runs

    config = build_config(plan.template.to_dict(), knobs)
    for listener in listeners:
        listener.trial_started(trial_id, config, knobs, plan.stage)

    def on_epoch(metrics: dict) -> None:
        for listener in listeners:
            listener.trial_epoch(trial_id, metrics)

    error = None
    try:
        train_trial(config, LocalReporter(folder, on_epoch))
    except Exception as exc:  # recorded on the trial, then raised
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for listener in listeners:
            listener.trial_finished(trial_id, error)
