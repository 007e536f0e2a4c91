"""A search over one method's knobs: Ray Tune + OptunaSearch (seeded TPE) + ASHA on
validation accuracy, or, with cohorts, Tune trials that each train a cohort (cohort.py).
Driver-side callbacks hand every trial event, a cohort's per member, to the listeners (the
MLflow/Parquet recorder, the progress display)."""

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import optuna
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from pcbench.config import TrialConfig, build_config
from pcbench.engine import DIVERGED, is_metric
from pcbench.launch.cohort import (
    COHORT,
    MEMBERS,
    PLAN,
    STARTUP_TRIALS,
    CohortSearch,
    SideBySide,
    member_id,
    tune_cohort,
)
from pcbench.launch.plan import RUN, SearchPlan, Stage, TrialListener
from pcbench.launch.resources import trial_resources
from pcbench.launch.resume import (
    RESUMES,
    TRIAL_ATTR,
    Resumption,
    StudyState,
    read_experiment,
    trial_folder,
    without_mark,
)
from pcbench.launch.trial import tune_trial
from pcbench.selection import METRIC, MODE
from pcbench.storage import sqlite_lock

SEARCH_ATTR = "pcbench.search"  # on each Optuna trial: the search that asked for it
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one study per method: no banner each


# The stages (each plan's) and listeners of each experiment running in this driver, by name. Tune pickles
# its callbacks with the experiment state; listeners hold live clients and consoles, so the
# callback finds them here instead.
_LISTENERS: dict[str, tuple[list[list[Stage]], Sequence[TrialListener]]] = {}


class _Relay(tune.Callback):
    """Driver side: turns Tune's trial events into TrialListener calls. A trial that fails
    before it starts (its actor or workers could not be set up) is still started and finished
    for the listeners, so it is recorded as an error like any other. `templates`: the plan's
    members (SearchPlan.members), one but for paired finals. A Tune trial that continues a killed
    driver's trial is that trial for the listeners (its id, its MLflow run)."""

    def __init__(self, name: str, templates: list[list[dict[str, Any]]], cohorts: bool,
                 resumption: Resumption):
        self.name, self.templates = name, templates  # each plan's members
        self.cohorts = cohorts  # trained by tune_cohort: its members report by index
        self.resumption = resumption
        self.started: set[str] = set()

    def __getstate__(self):
        return {**self.__dict__, "started": set()}

    def _first_id(self, trial) -> str:
        """The trial's id for the listeners: the killed driver's trial it continues, or its own."""
        return self.resumption.continued(trial.config) or trial.trial_id

    @property
    def listeners(self) -> Sequence[TrialListener]:
        return _LISTENERS.get(self.name, (None, ()))[1]

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.started:
            return  # restarted after a failure: the same trial, resumed
        self.started.add(trial.trial_id)
        for trial_id, template, knobs, stage in self._trials(trial):
            config = build_config(template, knobs)
            for listener in self.listeners:
                listener.trial_started(trial_id, config, dict(knobs), stage)

    def _trials(self, trial) -> list[tuple[str, dict[str, Any], dict[str, Any], Stage]]:
        """The trials a Tune trial runs, with their templates, knobs and stages: itself, a
        search cohort's members (one template, each its own knobs) or a paired final cohort's
        (each its own template, one seed)."""
        plan = trial.config.get(PLAN, 0)
        stages, templates = _LISTENERS[self.name][0][plan], self.templates[plan]
        knobs = {k: v for k, v in without_mark(trial.config).items() if k != PLAN}
        trial_id = self._first_id(trial)
        members = knobs.get(MEMBERS)
        if members is not None:
            stage = dataclasses.replace(stages[0], cohort=len(members))
            return [(member_id(trial_id, i), templates[0], member, stage)
                    for i, member in enumerate(members)]
        if self.cohorts:
            return [(member_id(trial_id, i), template, knobs,
                     dataclasses.replace(stage, cohort=len(templates)))
                    for i, (template, stage) in enumerate(zip(templates, stages))]
        return [(trial_id, templates[0], knobs, stages[0])]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = self._first_id(trial)
        reports = ({member_id(trial_id, int(i)): m for i, m in result[COHORT].items()}
                   if COHORT in result else {trial_id: result})
        for trial_id, reported in reports.items():
            # what the engine reported, out of the result dicts Tune adds its own fields to
            metrics = {k: v for k, v in reported.items() if is_metric(k) or k == DIVERGED}
            for listener in self.listeners:
                listener.trial_epoch(trial_id, metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(iteration, trials, trial, None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial that lost its process (a worker killed, a node gone) and restarts from its
        last checkpoint: one line for the listeners that show it, not Tune's traceback."""
        reason = _last_line(trial.error_file) or "its process died"
        for trial_id, *_ in self._trials(trial):
            for listener in self.listeners:
                if restarted := getattr(listener, "trial_restarted", None):
                    restarted(trial_id, reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _last_line(trial.error_file) or str(trial.error_file or "trial failed")
        self._finish(iteration, trials, trial, error)

    def _finish(self, iteration, trials, trial, error: str | None) -> None:
        if trial.trial_id not in self.started:
            self.on_trial_start(iteration, trials, trial)
        self.started.discard(trial.trial_id)
        for trial_id, *_ in self._trials(trial):
            for listener in self.listeners:
                listener.trial_finished(trial_id, error)


def _last_line(error_file: str | None) -> str | None:
    """The exception line of a trial's error file (Tune's traceback of it)."""
    try:
        return Path(error_file).read_text().strip().splitlines()[-1]
    except (OSError, TypeError, IndexError):
        return None


class _OptunaSearch(StudyState, OptunaSearch):
    """Ray's OptunaSearch, and what a benchmark needs:
    - a diverged trial is told to Optuna as FAIL (its NaN accuracy is no result; Ray's searcher
      would log a warning and leave the Optuna trial RUNNING);
    - each Optuna trial is marked with the search that asked for it and the Tune trial that
      ran it, and its accuracies are reported by epoch;
    - a resumed search (`resumed`) first runs the Optuna trials its killed driver had left
      RUNNING, each on from the last checkpoint of the Tune trial that ran it, so the study
      holds exactly one trial per trial run. Its state is the study's: nothing is pickled."""

    def __init__(self, *args, search_name: str, resumed: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_name, self.resumed = search_name, resumed
        self._reported: dict[str, set[int]] = {}  # epochs reported to each running trial

    def suggest(self, trial_id: str):
        if self.resumed and trial_id not in self._ot_trials:
            if (orphan := self._orphan()) is not None:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
                first = orphan.user_attrs.get(TRIAL_ATTR)
                return {**unflatten_dict(orphan.params), **({RESUMES: first} if first else {})}
            self.resumed = False  # all adopted: no need to read the study at every ask
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(SEARCH_ATTR, self.search_name)
            self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)
        return params

    def mine(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._ot_study.get_trials(deepcopy=False)
                if t.user_attrs.get(SEARCH_ATTR) == self.search_name]

    def _orphan(self) -> optuna.trial.FrozenTrial | None:
        known = {t._trial_id for t in self._ot_trials.values()}
        return next((t for t in self.mine() if t.state == optuna.trial.TrialState.RUNNING
                     and t._trial_id not in known), None)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # by epoch, not Tune's iteration count, which a continued trial starts again at 1
        super().on_trial_result(trial_id, {**result, "training_iteration": result["epoch"]})
        self._reported.setdefault(trial_id, set()).add(int(result["epoch"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        # a trial ASHA stops is told without its last result: reported here, so the study holds
        # the rung value a resumed search seeds its rungs with
        if result and not result.get(DIVERGED) and trial_id in self._ot_trials:
            if int(result["epoch"]) not in self._reported.get(trial_id, ()):
                self._ot_trials[trial_id].report(result[METRIC], int(result["epoch"]))
        self._reported.pop(trial_id, None)
        if result and result.get(DIVERGED):
            result, error = {k: v for k, v in result.items() if k != METRIC}, True
        super().on_trial_complete(trial_id, result, error)



class _ASHA(ASHAScheduler):
    """ASHA on epochs whose rungs start with the killed driver's trials' results (`earlier`:
    each Tune trial's accuracy by epoch, from the study), so a resumed search halves as it would
    have; a trial that continues one takes over its place in the rungs."""

    def __init__(self, earlier: dict[str, dict[int, float]], **kwargs):
        super().__init__(time_attr="epoch", **kwargs)
        for milestone, recorded in self._brackets[0]._rungs:
            recorded.update({first: values[milestone] for first, values in earlier.items()
                             if milestone in values})

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        if first := trial.config.get(RESUMES):
            for _, recorded in self._brackets[0]._rungs:
                if first in recorded:
                    recorded[trial.trial_id] = recorded.pop(first)


def run_search(plans: SearchPlan | Sequence[SearchPlan], listeners: Sequence[TrialListener],
               name: str | None = None) -> tune.ResultGrid:
    """One Tune experiment: a plan, or several plans of one pair side by side, whose trial
    processes then start once for all of them: the cohort searches of several methods
    (SideBySide: each its own study, budget and rungs), or final runs of the same seeds (a grid
    over plan and seed, so no core idles while another plan has runs left). `name`: the
    experiment's folder (default: the plan's name). A resumed plan starts a new experiment in
    that folder from pcbench's own records (resume.py), never from Tune's pickled state."""
    started = datetime.now()  # Optuna's clock: naive local time
    plans = [plans] if isinstance(plans, SearchPlan) else list(plans)
    plan = plans[0]
    if len(plans) > 1 and not (all(_searched_in_cohorts(p) for p in plans)
                               or all(p.space is None and p.seeds == plan.seeds for p in plans)):
        raise ValueError("side by side run only cohort searches, or final runs of the same seeds")
    name = name or plan.name
    path = f"{plan.storage.rstrip('/')}/{name}"
    resumption = read_experiment(path, runs=plan.space is None) if plan.resume else Resumption()
    members = [p.members() for p in plans]
    templates = [[template.to_dict() for template, _ in m] for m in members]
    cohorts = _searched_in_cohorts(plan) or len(plans) > 1 or len(members[0]) > 1
    shared = dict(cpus=plan.cpus_per_trial, gpus=plan.gpus_per_trial, storage=plan.storage,
                  resumption=resumption)
    trainable = tune.with_resources(
        tune.with_parameters(tune_cohort, templates=templates, **shared) if cohorts
        else tune.with_parameters(tune_trial, template=templates[0][0], **shared),
        trial_resources(plan.template.train.workers, plan.cpus_per_trial, plan.gpus_per_trial))
    if plan.space is None:
        tune_config = _runs_config(plan)
    else:
        tune_config = _cohort_config(plans) if _searched_in_cohorts(plan) else _tune_config(plan)
    grid = {}  # runs (no space): each plan, each seed
    if plan.space is None and len(plans) > 1:
        grid[PLAN] = list(range(len(plans)))
    if plan.space is None and plan.seeds:
        grid["seed"] = plan.seeds
    _LISTENERS[name] = ([[stage for _, stage in m] for m in members], listeners)
    try:
        results = tune.Tuner(
            trainable, tune_config=tune_config,
            param_space={key: tune.grid_search(values) for key, values in grid.items()} or None,
            run_config=tune.RunConfig(
                name=name, storage_path=plan.storage, verbose=0,
                callbacks=[_Relay(name, templates, cohorts, resumption), JsonLoggerCallback()],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # A trial that dies (a lost node, a pre-empted worker) restarts once from
                # its last checkpoint.
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        ).fit()
        for each in plans:
            _fail_orphans(each, started)
        return results
    finally:
        _LISTENERS.pop(name, None)


def _searched_in_cohorts(plan: SearchPlan) -> bool:
    return plan.cohort > 1 and plan.space is not None


def _fail_orphans(plan: SearchPlan, started: datetime) -> None:
    """Once the search is over, no trial of it is running, so any left RUNNING in the study is
    failed (a resumed search adopts those it can run); and so is one whose driver was killed
    between Optuna's ask (which samples its parameters) and the searcher's mark: never run,
    it is no search's (unmarked, asked before this command `started`: a live command's is newer)."""
    if not plan.optuna_storage or plan.space is None:
        return
    storage = _optuna_storage(plan)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        unmarked = (SEARCH_ATTR not in trial.user_attrs
                    and trial.datetime_start is not None and trial.datetime_start < started)
        if trial.user_attrs.get(SEARCH_ATTR) == plan.name or (plan.resume and unmarked):
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def _reuse_actors(plan: SearchPlan) -> bool:
    # A one-worker trial's actor is reused by the next trial (the engine runs in it); a DDP
    # trial's actor runs a TorchTrainer whose controller and workers are its own, and Tune
    # cannot reset a function trainable's actor for another trial of that kind.
    return plan.template.train.workers == 1


def _runs_config(plan: SearchPlan) -> tune.TuneConfig:
    """A run, or final runs: one trial (or paired cohort) per seed, with several plans per plan
    and seed (the grid of run_search's param_space)."""
    return tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.concurrent,
                           reuse_actors=_reuse_actors(plan), trial_dirname_creator=trial_folder)


def _tune_config(plan: SearchPlan) -> tune.TuneConfig:
    storage = _optuna_storage(plan)
    earlier = _trials_in_study(storage, plan.study_name)
    searcher = _OptunaSearch(
        space=plan.space.distributions, metric=METRIC, mode=MODE, seed=_sampler_seed(plan, earlier),
        points_to_evaluate=None if earlier else [plan.space.first_point(plan.template)],
        storage=storage, study_name=plan.study_name if storage else None, search_name=plan.name,
        resumed=plan.resume)
    epochs = plan.template.train.epochs
    results = {t.user_attrs[TRIAL_ATTR]: t.intermediate_values for t in searcher.mine()
               if TRIAL_ATTR in t.user_attrs} if plan.resume else {}
    scheduler = _ASHA(results, max_t=epochs, grace_period=max(1, epochs // 3),  # the first rung
                      reduction_factor=2)
    return tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                           num_samples=plan.samples, max_concurrent_trials=plan.concurrent,
                           reuse_actors=_reuse_actors(plan), trial_dirname_creator=trial_folder)


def _cohort_config(plans: list[SearchPlan]) -> tune.TuneConfig:
    """Cohort trials (tune_cohort) asked for by generation, one searcher per plan (side by side
    when several); no asynchronous scheduler: each cohort halves its members itself at fixed
    rungs."""
    searches = [_cohort_search(plan) for plan in plans]
    plan = plans[0]
    # a bound: a resumed search's first cohorts are its killed driver's, which may be smaller
    return tune.TuneConfig(search_alg=searches[0] if len(searches) == 1 else SideBySide(searches),
                           num_samples=sum(p.samples for p in plans), max_concurrent_trials=plan.concurrent,
                           reuse_actors=_reuse_actors(plan), trial_dirname_creator=trial_folder)


def _cohort_search(plan: SearchPlan) -> CohortSearch:
    storage = _optuna_storage(plan)
    earlier = _trials_in_study(storage, plan.study_name)
    study = optuna.create_study(
        study_name=plan.study_name if storage else None, storage=storage, direction="maximize",
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=_sampler_seed(plan, earlier),
                                                                n_startup_trials=STARTUP_TRIALS))
    return CohortSearch(study, plan.space.distributions, plan.cohort, plan.samples,
                        None if earlier else plan.space.first_point(plan.template), plan.name, SEARCH_ATTR,
                        resumed=plan.resume, startup=STARTUP_TRIALS)


def _optuna_storage(plan: SearchPlan) -> optuna.storages.RDBStorage | None:
    """The plan's study database (None: the study lives in memory), opened under the lock that
    keeps two commands from initialising a new SQLite file at once."""
    if not plan.optuna_storage:
        return None
    with sqlite_lock(plan.optuna_storage):
        return optuna.storages.RDBStorage(plan.optuna_storage)


def _sampler_seed(plan: SearchPlan, earlier: int) -> int:
    """A study that already holds trials (a repeated or resumed search) gets a seed of its own,
    so it explores new configurations instead of re-drawing the earlier ones; its published
    first point, which it has tried, is then not tried again either (callers skip it)."""
    return (plan.seed + 1_000_003 * earlier) % 2**32  # numpy's RandomState takes 32 bits


def _trials_in_study(storage, study_name: str | None) -> int:
    if storage is None:
        return 0
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def train_one(config: TrialConfig, storage: str, name: str, cpus_per_trial: float = 1.0,
              gpus_per_trial: float = 0.0, on_epoch=None) -> tuple[dict[str, Any], str]:
    """One trial on the cluster (a teacher's training), run as a one-trial plan: its last
    metrics and the folder of its final checkpoint, copied to this machine. `storage`: a
    folder or a URI, as SearchPlan.storage; `on_epoch(metrics)` hears each epoch."""
    plan = SearchPlan(name=name, stage=Stage(RUN, gpus_per_trial=gpus_per_trial), template=config,
                      space=None, samples=1, concurrent=1, seed=config.seed, storage=storage,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    result = run_search(plan, [_EpochListener(on_epoch)] if on_epoch else [])[0]
    if result.error is not None:
        raise RuntimeError(f"training {config.student} failed: {result.error}")
    return result.metrics, result.checkpoint.to_directory()


@dataclasses.dataclass
class _EpochListener:
    on_epoch: Any

    def trial_started(self, trial_id, config, knobs, stage):
        pass

    def trial_epoch(self, trial_id, metrics):
        self.on_epoch(metrics)

    def trial_finished(self, trial_id, error):
        pass
