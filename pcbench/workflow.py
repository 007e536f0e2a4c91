"""The orchestration behind `pcbench run | search | benchmark`, for requests that passed
session.validate: make sure the teachers exist, open one MLflow parent run, and run each
method's stages on a backend (Ray, or this process): its search (or single run) and, in a
benchmark, its selected configuration re-run once per seed. The recorder writes every trial
to MLflow and the Parquet store as it ends."""

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import pandas as pd

from pcbench.config import TrialConfig
from pcbench.errors import Interrupted, Terminated, UserError
from pcbench.launch import backend, teacher_runner
from pcbench.launch.plan import FINAL, RUN, SEARCH, SearchPlan, Stage, TrialListener
from pcbench.packing import final_cohorts
from pcbench.recipes import recipe, scale_milestones
from pcbench.recording import SearchRecorder, package_versions
from pcbench.results import ResultsStore
from pcbench.results.selection import best_trial
from pcbench.session import Prepared, Request, Session
from pcbench.storage import sqlite_path
from pcbench.teachers import attach, needs_teacher

Work = Sequence[tuple[Request, list[Prepared]]]


@dataclass
class Outcome:
    search_id: str
    trials: int
    failed: int  # errors: the command exits non-zero
    diverged: int = 0  # a legitimate outcome of a search (its knobs blew the loss up)


def experiment_name(template: TrialConfig) -> str:
    """One per pair (and so one Optuna study per pair and method): a teacher of another task,
    or a student started from the teacher, is another pair."""
    name = f"pcbench-{template.data.name}-{template.teacher}-to-{template.student}"
    if template.transfer:
        name += f"-teacher-{template.teacher_data}"
    return name + ("-from-teacher" if template.train.init_from_teacher else "")


def pair_slug(template: TrialConfig) -> str:
    """A pair in names (Tune experiments, Optuna studies): its data sets and how the student
    starts too, since a suite may hold one teacher -> student pair on two tasks."""
    return experiment_name(template).removeprefix("pcbench-")


def same_pair(row: dict[str, Any], template: TrialConfig) -> bool:
    """Whether a trial row belongs to the template's pair (data sets and student start included)."""
    # None or NaN in a part from before these columns
    teacher_data, init = row.get("teacher_dataset"), row.get("student_init")
    teacher_data = teacher_data if isinstance(teacher_data, str) else row["dataset"]
    return ((row["dataset"], row["teacher"], teacher_data, row["student"],
             init if isinstance(init, str) else "scratch")
            == (template.data.name, template.teacher, template.teacher_data, template.student,
                template.student_init))


def study_name(experiment: str, method: str) -> str:
    """One Optuna study per (experiment, method): repeated searches append to it."""
    return f"{experiment}-{method}"


def new_search_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def fingerprint(session: Session, work: Work, suite: str | None) -> str:
    """What makes two commands the same: a resumed one must match it exactly."""
    body = [suite, session.ray,
            [[r.samples, r.seed, r.final_seeds, r.final_epochs, r.search,
              [[p.method, p.template.hash, p.space.describe() if p.space else None, p.cohort] for p in ps]]
             for r, ps in work]]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def execute(session: Session, work: Work, listeners: Sequence[TrialListener] = (),
            on_teacher: Callable[[str, str], None] = lambda model, dataset: None,
            on_search: Callable[[Prepared, int], None] = lambda item, trials: None,
            suite: str | None = None) -> Outcome:
    """Run validated requests (one per pair in a benchmark) under one MLflow parent run.
    Ctrl-C or SIGTERM (KeyboardInterrupt) ends the trials in flight as KILLED and raises
    Interrupted; `--resume` picks up there."""
    request, prepared = work[0]
    experiment = session.experiment or (f"pcbench-benchmark-{suite}" if suite
                                        else experiment_name(prepared[0].template))
    kind = "benchmark" if suite else ("search" if request.search else "run")
    settings = fingerprint(session, work, suite)
    tracker, resumed = _open_tracking_and_ray(session, work, experiment, kind, settings)
    work = [(r, _with_teacher(session, p, on_teacher)) for r, p in work]
    if resumed:
        search_id, parent = resumed
        tracker.reopen_run(parent)
    else:
        search_id = new_search_id()
        parent = tracker.start_run(f"{kind}-{search_id}", _parent_params(session, work),
                                   {"pcbench.search_id": search_id, "pcbench.kind": kind,
                                    "pcbench.suite": suite or "",
                                    "pcbench.optuna_storage": session.optuna_storage,
                                    "pcbench.fingerprint": settings,
                                    "pcbench.versions": json.dumps(package_versions(), sort_keys=True)})
    recorder = SearchRecorder(tracker, parent, ResultsStore(session.results), search_id, suite,
                              resumed=resumed is not None)
    stages = _Stages(session, recorder, [recorder, *listeners], search_id, experiment)
    status = "FAILED"
    try:
        for item_request, items in work:
            for item in items:
                on_search(item, item_request.samples + len(item_request.final_seeds))
            searched = stages.searches(item_request, items)
            if item_request.final_seeds:
                stages.finals(item_request, items, searched)
        status = "FINISHED"
    except KeyboardInterrupt as signal:
        status = "KILLED"
        recorder.end_in_flight("KILLED")
        tracker.end_running_children(parent, "KILLED")  # one caught between its start and ours
        raise Interrupted(search_id, 143 if isinstance(signal, Terminated) else 130) from None
    finally:
        tracker.end_run(parent, status)
    return Outcome(search_id, recorder.trials_seen, recorder.trials_failed, recorder.trials_diverged)


def _open_tracking_and_ray(session: Session, work: Work, experiment: str, kind: str, settings: str):
    """The MLflow store, then Ray (when the session uses it). A local SQLite store is opened
    while Ray starts (a new one's tables take 2 to 3 s); whatever a store can answer about the
    user's input (a server's login, something to resume) still comes before Ray starts."""
    open_store = functools.partial(_open_tracking, session, experiment, kind, settings)
    if not session.ray:
        return open_store()
    from pcbench.launch.cluster import start_ray
    from pcbench.tracking import Tracker  # noqa: F401 - MLflow imported on this thread, never beside ray.init's

    start = functools.partial(
        start_ray, session.address,
        dashboard=any(p.template.train.workers > 1 for _, ps in work for p in ps),
        plugins=sorted({spec for _, ps in work for p in ps for spec in p.template.plugins}))
    if session.resume or not sqlite_path(session.tracking_uri):
        opened = open_store()  # the store first: a bad URI fails before Ray starts
        start()
        return opened
    # checks.py already refused a SQLite file that is not MLflow's; what is left is SQL (a new
    # store's tables), which overlaps Ray's start (seconds spent waiting on its processes)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pcbench-tracking") as pool:
        opening = pool.submit(open_store)
        start()  # in this thread: ray.init from another one leaves the driver unable to talk to it
        return opening.result()


def _open_tracking(session: Session, experiment: str, kind: str, settings: str):
    """The MLflow experiment (created unless resuming) and, with --resume, the unfinished
    parent run (search id, run id) with these settings; one line if there is none."""
    from pcbench.tracking import Tracker  # MLflow is imported only when something is tracked

    nothing_to_resume = UserError(
        f"no unfinished {kind}{'' if session.resume in (None, 'latest') else ' ' + session.resume} "
        f"with these settings in experiment '{experiment}'; run the same command as before with "
        f"--resume, or drop --resume to start a new one")
    tracking_file = sqlite_path(session.tracking_uri)
    if session.resume and tracking_file and not tracking_file.exists():
        raise nothing_to_resume  # no store yet: nothing was ever run here
    for uri in (session.tracking_uri, session.optuna_storage):
        if path := sqlite_path(uri):  # SQLite creates the file, not its folder
            path.parent.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(session.tracking_uri, experiment, create=not session.resume)
    if tracker.experiment_id is None:
        raise nothing_to_resume
    if not session.resume:
        return tracker, None
    resumed = tracker.unfinished_parent(settings, None if session.resume == "latest" else session.resume)
    if resumed is None:
        raise nothing_to_resume
    return tracker, resumed


def _parent_params(session: Session, work: Work) -> dict[str, Any]:
    request, prepared = work[0]
    first = prepared[0].template
    return {"methods": ",".join(dict.fromkeys(p.method for _, ps in work for p in ps)),
            "pairs": ",".join(dict.fromkeys(f"{p.template.teacher}->{p.template.student}"
                                            for _, ps in work for p in ps)),
            "samples": request.samples, "concurrent": session.concurrent,
            "cohort": ",".join(dict.fromkeys(str(p.cohort) for _, ps in work for p in ps)),
            "seed": request.seed,
            "epochs": first.train.epochs, "workers": first.train.workers, "dataset": first.data.name,
            "final_seeds": ",".join(map(str, request.final_seeds)), "ray": session.ray,
            "results": session.results.uri}


def _with_teacher(session: Session, prepared: list[Prepared], on_teacher) -> list[Prepared]:
    """Each method's template with its teacher attached: trained first where a method needs it
    and the store has none. A method that does not need one (CE) gets it too where there is
    one: for the diagnostics (its representation measured against the teacher's), and so that
    it can share a cohort with the others."""
    records = {}
    # On a cluster the teacher trains where trials train; with a local instance, in this process
    # on the same machine: digits' teacher trains in 18 s here, 24 s or more as a Ray trial.
    on_cluster = session.ray and session.cluster_address is not None
    runner = teacher_runner(on_cluster, session.ray_storage, session.cpus_per_trial, session.gpus_per_trial)
    for item in prepared:
        template = item.template
        key = (template.teacher, template.teacher_data)
        if needs_teacher(template) and key not in records:
            if session.teachers.get(*key) is None:
                on_teacher(*key)
            records[key] = session.teachers.ensure(*key, runner, template.data.root, template.plugins)
    out = []
    for item in prepared:
        template, key = item.template, (item.template.teacher, item.template.teacher_data)
        if record := records.get(key) or session.teachers.get(*key):
            template = attach(template, record)
        out.append(dataclasses.replace(item, template=template))
    return out


class _Stages:
    """Each method's stages as plans for the session's backend. A resumed command skips a
    stage whose trials all landed before the last driver died."""

    def __init__(self, session: Session, recorder: SearchRecorder, listeners: Sequence[TrialListener],
                 search_id: str, experiment: str):
        self.session, self.recorder, self.listeners = session, recorder, listeners
        self.search_id, self.experiment = search_id, experiment
        self.run = backend(session.ray)

    def searches(self, request: Request, items: list[Prepared]) -> list[list[dict[str, Any]]]:
        """Each method's search (or single run) of one pair; each method's trial rows. Searches
        in cohorts run side by side in one Tune experiment (each its own study, budget and
        rungs), so the trial processes start once for all of them; the others one by one."""
        phase = SEARCH if request.search else RUN
        plans = [self._search_plan(request, item, phase) for item in items]
        plans = [plan for plan in plans if plan is not None]
        in_cohorts = [p for p in plans if p.cohort > 1 and p.space is not None]  # ASHA's: one each
        self._run_together(in_cohorts)
        for plan in plans:
            if plan not in in_cohorts:
                self.run(plan, self.listeners)
        return [self._rows(item.template, phase) for item in items]

    def _run_together(self, plans: list[SearchPlan], suffix: str = "") -> None:
        """Plans of one pair in one Tune experiment, so their trial processes start once; named
        after their methods, so a resumed command whose unfinished plans differ starts a new
        experiment for the rest rather than restore one that ran other plans. Without Ray, or
        with one plan, each on its own."""
        if not (self.session.ray and len(plans) > 1):
            for plan in plans:
                self.run(plan, self.listeners)
            return
        methods = "-".join(t.method.name for plan in plans for t, _ in plan.members())
        name = f"{self.search_id}-{pair_slug(plans[0].template)}-{methods}{suffix}"
        self.run(plans, self.listeners, name=name)

    def _search_plan(self, request: Request, item: Prepared, phase: str) -> SearchPlan | None:
        """A method's search or run, of the trials a resumed command still needs (None: all)."""
        done = len(self._rows(item.template, phase)) if self.session.resume else 0
        if done >= request.samples:
            return None
        t, pair = item.template, pair_slug(item.template)
        if phase == SEARCH:  # selection sees the validation split only: no test metric exists
            t = t.model_copy(update={"train": t.train.model_copy(update={"report_test": False})})
        # a benchmark's study is its own (every method gets the same fresh budget, never one
        # warm-started by an earlier run of the suite), per pair and method
        study = f"{self.experiment}-{self.search_id}-{pair}" if self.recorder.suite else self.experiment
        return self._plan(f"{self.search_id}-{pair}-{item.method}", Stage(phase, None, self._gpus(t)), t,
                          item.space, samples=request.samples - done,  # resumed with no Tune state: the rest
                          seed=request.seed, study_name=study_name(study, item.method), cohort=item.cohort)

    def finals(self, request: Request, items: list[Prepared], searched: list[list[dict[str, Any]]]) -> None:
        """A benchmark's final runs of one pair: each method's selected configuration, once per
        seed, on all the training data. In cohorts (--cohort > 1) a seed's runs train in cohorts
        of several methods (paired: the seed's data stream, the teacher's forward shared);
        otherwise each alone."""
        selected, costs = [], []
        for item, rows in zip(items, searched):
            best = best_trial(pd.DataFrame(rows)) if rows else None
            if best is None:
                continue  # no trial completed: the leaderboard has no row for this method
            template = final_config(TrialConfig.parse(json.loads(best["config"])), request.final_epochs)
            selected.append((template, Stage(FINAL, best["trial_id"], self._gpus(template),
                                             planned_seeds=len(request.final_seeds))))
            costs.append(_epoch_cost(rows))
        by_seeds: dict[tuple[int, ...], list[SearchPlan]] = {}
        for group in self._paired(selected, costs):
            # a resumed command runs the seeds not every member landed before the last driver died
            seeds = [seed for seed in request.final_seeds if not all(
                any(row["seed"] == seed for row in self._rows(t, FINAL)) for t, _ in group)]
            if not seeds:
                continue
            (first, stage), others = group[0], group[1:]
            label = "-".join(t.method.name for t, _ in group)
            by_seeds.setdefault(tuple(seeds), []).append(
                self._plan(f"{self.search_id}-{pair_slug(first)}-{label}-final", stage, first,
                           None, samples=1, seed=request.seed, seeds=seeds, paired=others))
        for plans in by_seeds.values():
            self._run_together(plans, suffix="-final")  # one experiment: no core idles between groups

    def _paired(self, selected: list[tuple[TrialConfig, Stage]],
                costs: list[float | None]) -> list[list[tuple[TrialConfig, Stage]]]:
        """The final plans: where cohorts are on and the members can share a data stream, the
        methods in cohorts of at most the cohort size (a seed's runs of every cohort see the same
        data order and augmentation: the seed fixes them), balanced by what their searches cost
        so that the cohorts end closer together (packing.py); else one each."""
        from pcbench.engine import cohort_mismatch  # torch: only once something trains

        size = self.session.cohort_size
        if size > 1 and len(selected) > 1 and cohort_mismatch([t for t, _ in selected]) is None:
            known = [c for c in costs if c is not None]
            typical = sum(known) / len(known) if known else 1.0  # a method with no timed trial
            groups = final_cohorts([typical if c is None else c for c in costs], size)
            return [[selected[i] for i in group] for group in groups]
        return [[member] for member in selected]

    def _plan(self, name: str, stage: Stage, template: TrialConfig, space, **rest) -> SearchPlan:
        s = self.session
        return SearchPlan(name=name, stage=stage, template=template, space=space,
                          concurrent=s.concurrent, storage=s.ray_storage, cpus_per_trial=s.cpus_per_trial,
                          gpus_per_trial=s.gpus_per_trial,
                          optuna_storage=(s.optuna_storage or None) if space else None,
                          resume=s.resume is not None, **rest)

    def _gpus(self, template: TrialConfig) -> float:
        """What a trial's GPU-hours count: its Ray reservation, or the one GPU of a local run."""
        if self.session.ray:
            return self.session.gpus_per_trial
        import torch
        return 1.0 if template.train.device != "cpu" and torch.cuda.is_available() else 0.0

    def _rows(self, template: TrialConfig, phase: str) -> list[dict[str, Any]]:
        """The trial rows of one stage of one method and pair (a resumed driver's included)."""
        return [r for r in self.recorder.rows
                if r["phase"] == phase and r["method"] == template.method.name and same_pair(r, template)]


def _epoch_cost(rows: list[dict[str, Any]]) -> float | None:
    """A method's training seconds per epoch in its search (None: no trial timed)."""
    per_epoch = [r["train_seconds"] / r["epochs_run"] for r in rows
                 if (r.get("train_seconds") or 0) > 0 and (r.get("epochs_run") or 0) > 0]
    # fsum: the same in any row order (a resumed command reads them in another), so the same cohorts
    return math.fsum(per_epoch) / len(per_epoch) if per_epoch else None


def final_config(selected: TrialConfig, epochs: int | None) -> TrialConfig:
    """The selected configuration trained on all the training data (no validation split),
    `epochs` long, with the recipe's milestones for that length."""
    tree = selected.to_dict()
    tree["data"]["val_fraction"] = 0.0
    tree["train"]["report_test"] = True
    if epochs is not None and epochs != selected.train.epochs:
        train, recipe_name = tree["train"], selected.train.recipe
        # from the recipe's own milestones where there is one: scaling the search's scaled
        # (rounded) milestones back would drift from 150/180/210
        source = (recipe(recipe_name)["train"] if recipe_name
                  else {"milestones": selected.train.milestones, "epochs": selected.train.epochs})
        train["milestones"] = scale_milestones(source.get("milestones", []), source["epochs"], epochs)
        train["epochs"] = epochs
    return TrialConfig.parse(tree)
