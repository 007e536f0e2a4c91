"""Cohorts on Ray Tune: one Tune trial trains K trials of a pair in lockstep (engine.train_cohort)
and reports them together; a searcher asks Optuna for whole generations of configurations at
once and tells it every member's result before the next generation is asked. Trials report,
stop (synchronous successive halving at fixed rungs) and inform TPE in one fixed order, so a
search gives the same trials whatever --concurrent is and however busy the machine."""

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import optuna
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.tune.search import Searcher
from ray.tune.utils.util import unflatten_dict

from pcbench.config import build_config
from pcbench.engine import DIVERGED, SuccessiveHalving, train_cohort
from pcbench.launch.resume import COHORT_ATTR, RESUMES, TRIAL_ATTR, Resumption, StudyState, without_mark
from pcbench.launch.trial import run_ddp, tune_checkpoint
from pcbench.selection import METRIC

# Trials asked of Optuna at once (at least one cohort): a protocol setting, never --concurrent,
# which only says how many of a generation's cohorts train at the same time.
GENERATION_TRIALS = 8
# Trials TPE draws at random before it models any result (Optuna's default, set explicitly)
STARTUP_TRIALS = 10
# The trials TPE counts towards its random start-up
_TOLD_FOR_SAMPLER = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = "running.json"  # in a cohort's checkpoint: the members still running
MEMBERS = "members"  # a cohort trial's config: {"members": [knobs, ...]}
COHORT = "cohort"  # a cohort trial's result: {"cohort": {index: that member's metrics}, ...}
PLAN = "plan"  # in an experiment of several searches, the index of the one a trial belongs to


def member_id(trial_id: str, index: int) -> str:
    return f"{trial_id}-m{index}"


class _MemberReporter:
    """One member's side of the cohort's Tune report: its metrics and checkpoint, kept until
    the cohort reports the epoch as a whole."""

    def __init__(self, cohort: "_CohortReporter", index: int):
        self.cohort, self.index = cohort, index

    def report(self, metrics, checkpoint_dir):
        self.cohort.pending[self.index] = metrics
        if checkpoint_dir:
            folder = os.path.join(self.cohort.staging, f"member-{self.index}")
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(checkpoint_dir, folder)

    def latest_checkpoint(self):
        if self.cohort.restored is None:
            return None
        folder = os.path.join(self.cohort.restored, f"member-{self.index}")
        return folder if os.path.isdir(folder) else None


class _CohortReporter:
    """The cohort's checkpoint holds the members' last checkpoints and, in RUNNING, which
    members still run: a restarted cohort does not train a member again that had stopped at a
    rung or diverged, and such a member's weights are not uploaded with every later epoch.
    Members that trained to the end keep theirs. `report` and `get_checkpoint` are Tune's in a
    one-worker cohort, Ray Train's on each DDP worker (rank 0 alone uploads the checkpoint)."""

    def __init__(self, staging: str, epochs: int, report=tune.report, get_checkpoint=tune_checkpoint,
                 rank: int = 0):
        self.staging, self.epochs, self.pending = staging, epochs, {}
        self.report, self.rank = report, rank
        self.running: set[int] | None = None  # None: a new cohort, every member runs
        checkpoint = get_checkpoint()
        self.restored = checkpoint.to_directory() if checkpoint else None
        if self.restored:  # the members' last checkpoints go on into the next reports
            shutil.copytree(self.restored, staging, dirs_exist_ok=True)
            with open(os.path.join(self.restored, RUNNING)) as f:
                self.running = set(json.load(f))

    def after_epoch(self, epoch: int, running: set[int]) -> None:
        scores = [m[METRIC] for m in self.pending.values() if not math.isnan(m.get(METRIC, math.nan))]
        result = {COHORT: {str(i): m for i, m in self.pending.items()}, "epoch": epoch,
                  METRIC: max(scores, default=math.nan)}
        self.pending = {}
        for name in os.listdir(self.staging) if epoch < self.epochs else ():
            if name.startswith("member-") and int(name.removeprefix("member-")) not in running:
                shutil.rmtree(os.path.join(self.staging, name))  # ended early
        with open(os.path.join(self.staging, RUNNING), "w") as f:
            json.dump(sorted(running), f)
        checkpoint = tune.Checkpoint.from_directory(self.staging) if self.rank == 0 else None
        self.report(result, checkpoint=checkpoint)


def tune_cohort(knobs: dict[str, Any], *, templates: list[list[dict[str, Any]]], cpus: float,
                gpus: float, storage: str, resumption: Resumption) -> None:
    """The Tune trainable of a cohort; `templates`: each plan's members (one list for an
    experiment of one plan), the trial's plan named by knobs[PLAN]. A search's cohort: one
    template, each member's knobs ({"members": [...]}), halved at the rungs. Paired final runs:
    one member per template, all with this trial's seed, every one trained to the end. With
    train.workers > 1 the cohort is one DDP job: every member data-parallel over the same workers."""
    templates = templates[knobs.get(PLAN, 0)]
    earlier, continues = resumption.checkpoint(knobs), resumption.continued(knobs)
    knobs = {k: v for k, v in without_mark(knobs).items() if k != PLAN}
    workers = build_config(templates[0], {}).train.workers
    if workers == 1:
        torch.set_num_threads(max(1, int(cpus)))
        _train(knobs, templates, get_checkpoint=lambda: tune_checkpoint(earlier))
    else:
        run_ddp(_cohort_worker, {"knobs": knobs, "templates": templates}, workers, cpus, gpus, storage,
                continues)


def _cohort_worker(loop_config: dict[str, Any]) -> None:
    torch.set_num_threads(loop_config["threads"])
    _train(loop_config["knobs"], loop_config["templates"], device=ray.train.torch.get_device(),
           report=ray.train.report, get_checkpoint=ray.train.get_checkpoint,
           rank=ray.train.get_context().get_world_rank())


def _train(knobs: dict[str, Any], templates: list[dict[str, Any]], device=None, **reporting) -> None:
    if MEMBERS in knobs:
        configs = [build_config(templates[0], member) for member in knobs[MEMBERS]]
    else:
        configs = [build_config(template, knobs) for template in templates]
    epochs = configs[0].train.epochs
    with tempfile.TemporaryDirectory(prefix="pcbench-cohort-") as staging:
        cohort = _CohortReporter(staging, epochs, **reporting)
        train_cohort(configs, [_MemberReporter(cohort, i) for i in range(len(configs))], device,
                     halving=SuccessiveHalving(epochs) if MEMBERS in knobs else None,
                     after_epoch=cohort.after_epoch,
                     ended=set() if cohort.running is None else set(range(len(configs))) - cohort.running)


@dataclass
class _Queued:
    """A cohort not yet handed to Tune: its Optuna trials, and for a killed driver's cohort the
    Tune trial it continues, with its members' last results (epoch -> accuracy)."""

    members: list[optuna.Trial]
    continues: str | None = None
    values: dict[int, dict[int, float]] = field(default_factory=dict)


class CohortSearch(StudyState, Searcher):
    """Optuna (seeded TPE) asked for a generation at a time: GENERATION_TRIALS configurations
    (at least one cohort of `size`; TPE's random start-up as one generation), all asked before
    any is run, all told before the next generation is asked. A member stopped at a rung is
    told its last accuracy (as Ray tells ASHA's stopped trials); a diverged or failed member is
    told FAIL. Each member's accuracy per epoch is reported to its Optuna trial as it goes. A
    resumed search (`resumed`) first runs the killed driver's untold trials, in their cohorts,
    from the study alone."""

    def __init__(self, study: optuna.Study, distributions: dict, size: int, budget: int,
                 first_point: dict[str, Any] | None, search_name: str, attr: str, resumed: bool = False,
                 startup: int = 0):
        super().__init__(metric=METRIC, mode="max")
        self.study, self.distributions, self.startup = study, distributions, startup
        self.size, self.budget = size, budget
        self.search_name, self.attr = search_name, attr
        if first_point:
            study.enqueue_trial(first_point)
        self.asked = 0  # members asked for so far (a resumed search's untold ones included)
        self.queue: list[_Queued] = []  # cohorts of the current generation not yet run
        self.running: dict[str, _Queued] = {}
        self.latest: dict[str, dict[int, dict]] = {}
        if resumed:
            self._take_over()

    def _take_over(self) -> None:
        """The untold trials of this search (RUNNING in the study), grouped into the cohorts
        they were asked in, in the order they were asked; a whole cohort untold goes on from
        its checkpoint."""
        mine = [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get(self.attr) == self.search_name]
        cohorts: dict[str, list[optuna.trial.FrozenTrial]] = {}
        for frozen in sorted(mine, key=lambda t: t.number):
            cohorts.setdefault(frozen.user_attrs.get(COHORT_ATTR, str(frozen.number)), []).append(frozen)
        self.asked = 0
        for frozen in cohorts.values():
            untold = [t for t in frozen if t.state == optuna.trial.TrialState.RUNNING]
            if not untold:
                continue
            # a cohort told in part when the driver died: its untold members train afresh, as
            # their indices in the checkpoint are no longer theirs
            whole = len(untold) == len(frozen)
            members = [optuna.trial.Trial(self.study, t._trial_id) for t in untold]
            if whole:
                self.queue.append(_Queued(members, untold[0].user_attrs.get(TRIAL_ATTR),
                                          {i: t.intermediate_values for i, t in enumerate(untold)}))
            else:
                self.queue.append(_Queued(members))
            self.asked += len(untold)

    def suggest(self, trial_id: str):
        if not self.queue:
            if self.running:
                return None  # the generation is not told yet
            if self.asked >= self.budget:
                return Searcher.FINISHED
            self._ask_generation()
        cohort = self.queue.pop(0)
        self.running[trial_id] = cohort
        # a killed driver's members that stopped at a rung are told their last accuracy
        self.latest[trial_id] = {i: {METRIC: v[max(v)], "epoch": max(v)}
                                 for i, v in cohort.values.items() if v}
        if cohort.continues is None:
            for trial in cohort.members:
                trial.set_user_attr(TRIAL_ATTR, trial_id)
        config = {MEMBERS: [unflatten_dict(t.params) for t in cohort.members]}
        return {**config, RESUMES: cohort.continues} if cohort.continues else config

    def _ask_generation(self) -> None:
        """The next generation's cohorts; while the sampler still draws at random (fewer than
        `startup` trials told), the generations it would draw so are asked as one: the same
        trials, and no wait at a generation's end, where a slot would idle and its trial
        process be stopped (Tune keeps one idle process when no trial waits for it)."""
        cohorts = max(1, GENERATION_TRIALS // self.size)
        told = len(self.study.get_trials(deepcopy=False, states=_TOLD_FOR_SAMPLER))
        generations = max(1, math.ceil((self.startup - told) / (cohorts * self.size)))
        for _ in range(cohorts * generations):
            count = min(self.size, self.budget - self.asked)
            if count <= 0:
                return
            members = [self.study.ask(self.distributions) for _ in range(count)]
            for trial in members:
                trial.set_user_attr(self.attr, self.search_name)
                trial.set_user_attr(COHORT_ATTR, str(members[0].number))
            self.asked += count
            self.queue.append(_Queued(members))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Tune hands searchers the result flattened ("cohort/0/val_acc")
        cohort = self.running[trial_id]
        for index, metrics in unflatten_dict(result).get(COHORT, {}).items():
            index, epoch = int(index), int(metrics["epoch"])
            self.latest[trial_id][index] = metrics
            reported = cohort.values.setdefault(index, {})
            if epoch not in reported:  # a resumed cohort repeats the epochs after its checkpoint
                value = metrics.get(METRIC)
                reported[epoch] = math.nan if value is None else float(value)
                cohort.members[index].report(reported[epoch], epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result:
            self.on_trial_result(trial_id, result)
        latest = self.latest.pop(trial_id, {})
        for index, trial in enumerate(self.running.pop(trial_id).members):
            metrics = latest.get(index, {})
            value = metrics.get(METRIC)
            if error or metrics.get(DIVERGED) or value is None or math.isnan(value):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, value)


class SideBySide(StudyState, Searcher):
    """Several methods' cohort searches of one pair in one Tune experiment, so the trial
    processes start once for all of them. Each keeps its own study, budget, generations and
    rungs, and so the trials it would run alone; a free slot goes to the first search with a
    cohort to run, so one waiting for its generation to be told leaves its slot to the next."""

    def __init__(self, searches: list[CohortSearch]):
        super().__init__(metric=METRIC, mode="max")
        self.searches = searches
        self.owner: dict[str, int] = {}  # Tune trial id -> the search it belongs to

    def suggest(self, trial_id: str):
        finished = 0
        for index, search in enumerate(self.searches):
            config = search.suggest(trial_id)
            if config == Searcher.FINISHED:
                finished += 1
            elif config is not None:
                self.owner[trial_id] = index
                return {**config, PLAN: index}
        return Searcher.FINISHED if finished == len(self.searches) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if (index := self.owner.get(trial_id)) is not None:
            self.searches[index].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (index := self.owner.pop(trial_id, None)) is not None:
            self.searches[index].on_trial_complete(trial_id, result, error)
