"""The steps behind `pcbench run | search | benchmark`: validate everything (no writes, no
Ray), make sure the teachers exist, open one MLflow parent run, search each method on Ray (or
run one trial in this process), in a benchmark re-run each method's winner with several seeds,
record every trial, write the Parquet parts."""

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from pcbench.checks import (
    check_address,
    check_optuna_storage,
    check_results,
    check_tracking_uri,
    check_writable,
)
from pcbench.config import TrialConfig, build_config
from pcbench.data import check_dataset, get_dataset
from pcbench.errors import Interrupted, Terminated, UserError
from pcbench.launch.resources import COORDINATOR_CPUS
from pcbench.methods import get_method
from pcbench.methods.base import Method
from pcbench.models import shapes_of
from pcbench.recipes import recipe, scale_milestones, with_recipe
from pcbench.recording import SearchRecorder, TrialListener, package_versions
from pcbench.results import ResultsStore
from pcbench.results.selection import best_trial
from pcbench.spaces import TAP_KNOBS, SearchSpace, prepare_search
from pcbench.storage import resolve
from pcbench.teachers import TeacherStore, attach


@dataclass
class Request:
    methods: list[str]
    base: dict[str, Any] = field(default_factory=dict)  # from --dataset, --epochs, ...
    overrides: dict[str, Any] = field(default_factory=dict)  # from --set
    recipe: str | None = None  # a named profile under `base` (recipes.py)
    space_file: str | None = None
    search: bool = True  # False: one trial of the configuration as given
    ray: bool = True  # False: in this process (one worker)
    samples: int = 1
    concurrent: int = 1
    seed: int = 0
    # A folder or a URI pyarrow opens (file://, s3://, gs://, ...): the Parquet store and
    # Ray's trial folders (<results>/ray), seen by every node.
    results: str | Path = "pcbench-results"
    teachers: Path = Path("pcbench-teachers")
    tracking_uri: str = ""
    optuna_storage: str = ""  # "": default_optuna_storage
    experiment: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # A benchmark: after each method's search, its selected configuration is re-run once per
    # seed on the full training set (final_epochs long; None: as the search trials).
    final_seeds: list[int] = field(default_factory=list)
    final_epochs: int | None = None
    # Continue the latest unfinished search (or benchmark) with the same settings ("latest"),
    # or the one with this search id; None: a new one.
    resume: str | None = None


@dataclass
class Prepared:
    method: str
    template: TrialConfig
    space: SearchSpace | None


def validate(request: Request, missing: list[str] | None = None) -> list[Prepared]:
    """Every check a user's input can fail, before anything is written or Ray starts. With a
    `missing` list (a dry run), what only a real run needs (data files, teachers, GPUs, the
    Ray cluster) is appended to it instead of raised, and nothing is downloaded."""
    if not request.methods:
        raise UserError("no method given; name one with --method (see `pcbench methods`)")
    if request.samples < 1:
        raise UserError(f"--samples {request.samples} runs nothing; give 1 or more")
    if request.concurrent < 1:
        raise UserError(f"--concurrent {request.concurrent} runs nothing; give 1 or more")
    if request.cpus_per_trial <= 0 or request.gpus_per_trial < 0:
        raise UserError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    check_results(request.results, "--results")
    check_writable(request.teachers, "--teachers")
    if request.tracking_uri:
        check_tracking_uri(request.tracking_uri)
    if request.optuna_storage:
        check_optuna_storage(request.optuna_storage)
    prepared = []
    for method in dict.fromkeys(request.methods):
        get_method(method)
        base = {**with_recipe(request.base, request.recipe, request.overrides), "method": method}
        if request.search:
            template, space = prepare_search(base, request.overrides, request.space_file)
            prepared.append(Prepared(method, template, space))
        else:
            prepared.append(Prepared(method, build_config(base, request.overrides), None))
    template = prepared[0].template
    if request.search and template.data.val_fraction == 0:
        raise UserError("a search selects on the validation split: data.val_fraction must be > 0 "
                        "(0 is for final runs, which `pcbench benchmark` makes itself)")
    for item in prepared:
        _check_pair(item)
    dry = missing is not None

    def needed(check: Callable[[], None]) -> None:
        try:
            check()
        except UserError as error:
            if not dry:
                raise
            missing.append(str(error))

    for item in prepared:
        needed(lambda: _check_resources(request, item.template))
    needed(lambda: check_dataset(template.data.name, template.data.root, download=not dry))
    needed(lambda: _check_teachers(request, prepared))
    if request.ray:
        needed(lambda: check_address(request.address or os.environ.get("RAY_ADDRESS")))
    return prepared


def _check_pair(item: Prepared) -> None:
    """The method against the pair's tap shapes (traced, nothing trained), for the template and
    every layer choice its search may make."""
    t = item.template
    method = get_method(item.method)
    if method.check_pair.__func__ is Method.check_pair.__func__:
        return  # no shape constraints: nothing to trace
    shape = get_dataset(t.data.name).input_shape
    student = shapes_of(t.student, shape)
    teacher = shapes_of(t.teacher, shape) if method.needs_teacher else None
    configs = [t.method]
    for key in TAP_KNOBS if item.space else ():
        dist = item.space.distributions.get(key)
        knob = key.removeprefix("method.")
        for choice in getattr(dist, "choices", ()):
            if choice is not None:
                value = choice if knob == "tap" else choice.split(",")
                configs.append(t.method.model_copy(update={knob: value}))
    for config in configs:
        try:
            method.check_pair(config, student, teacher)
        except ValueError as error:
            raise UserError(f"{t.teacher} -> {t.student}: {error}") from None


def plan(request: Request, prepared: list[Prepared]) -> list[dict[str, Any]]:
    """What a validated request will run, per pair and method: its budget, the first point and
    every knob as resolved for the pair (a dry run prints this)."""
    entries = []
    for item in prepared:
        t = item.template
        entry = {"teacher": t.teacher, "student": t.student, "method": item.method,
                 "dataset": t.data.name,
                 "budget": {"trials": request.samples if request.search else 1, "epochs": t.train.epochs},
                 "first_point": item.space.first_point(t) if item.space else {},
                 "knobs": item.space.describe() if item.space else {}}
        if request.final_seeds:
            entry["final"] = {"seeds": list(request.final_seeds),
                              "epochs": request.final_epochs or t.train.epochs}
        entries.append(entry)
    return entries


def _check_teachers(request: Request, prepared: list[Prepared]) -> None:
    """Embedded data sets train a missing teacher on first use; others need it stored."""
    store = TeacherStore(request.teachers)
    for item in prepared:
        t = item.template
        if (get_method(item.method).needs_teacher and not get_dataset(t.data.name).embedded
                and store.get(t.teacher, t.data.name) is None):
            raise UserError(f"no {t.teacher} teacher for {t.data.name} in {request.teachers}; train it "
                            f"with `pcbench teacher train --model {t.teacher} --dataset {t.data.name}` "
                            f"or import one with `pcbench teacher import FILE --model {t.teacher} "
                            f"--dataset {t.data.name}`")


def _check_resources(request: Request, template: TrialConfig) -> None:
    workers = template.train.workers
    if not request.search and not request.ray and workers > 1:
        raise UserError(f"train.workers={workers} needs Ray Train; drop --no-ray or use one worker")
    if workers > 1 and request.cpus_per_trial <= COORDINATOR_CPUS:
        raise UserError(f"--cpus-per-trial {request.cpus_per_trial} leaves nothing for {workers} "
                        f"workers; give more than {COORDINATOR_CPUS}")
    if request.address or os.environ.get("RAY_ADDRESS"):
        return  # an autoscaling cluster may add the nodes a trial needs: no local check
    if request.ray and request.cpus_per_trial > (os.cpu_count() or 1):
        raise UserError(f"--cpus-per-trial {request.cpus_per_trial} exceeds this machine's "
                        f"{os.cpu_count()} CPUs; lower it or attach to a cluster with --address")
    import torch
    if (template.train.device == "cuda" or request.gpus_per_trial > 0) and not torch.cuda.is_available():
        raise UserError("this machine has no CUDA GPU; use train.device=auto or cpu and "
                        "--gpus-per-trial 0, or attach to a GPU cluster with --address")


def default_optuna_storage(tracking_uri: str, results: "str | Path") -> str:
    """Beside a SQLite MLflow store, else in a local results folder, else (--results is a
    remote URI, where SQLite cannot live) `optuna.db` in the working directory: the study is
    used by the driver only."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
    else:
        location = resolve(results, "--results")
        folder = location.local_path if location.is_local else Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def ray_storage(results: "str | Path") -> str:
    """Ray Tune's storage_path: <results>/ray, an absolute path or a URI (Ray opens it with
    pyarrow on every node)."""
    return resolve(results).join("ray").uri


def experiment_name(template: TrialConfig) -> str:
    return f"pcbench-{template.data.name}-{template.teacher}-to-{template.student}"


def new_search_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _with_teacher(prepared: list[Prepared], store: TeacherStore, on_teacher) -> list[Prepared]:
    out = []
    for item in prepared:
        template = item.template
        if get_method(item.method).needs_teacher:
            if store.get(template.teacher, template.data.name) is None:
                on_teacher(template.teacher, template.data.name)
            template = attach(template, store.ensure(template.teacher, template.data.name))
        out.append(Prepared(item.method, template, item.space))
    return out


@dataclass
class Outcome:
    search_id: str
    trials: int
    failed: int  # errors: the command exits non-zero
    diverged: int = 0  # a legitimate outcome of a search (its knobs blew the loss up)


Work = Sequence[tuple[Request, list[Prepared]]]


def execute(request: Request, prepared: list[Prepared], listeners: Sequence[TrialListener] = (),
            on_teacher: Callable[[str, str], None] = lambda model, dataset: None,
            on_search: Callable[[Prepared], None] = lambda item: None) -> Outcome:
    """Run one validated search (or single trial). Trials land in MLflow and the results store."""
    return execute_all([(request, prepared)], listeners, on_teacher, on_search)


def fingerprint(work: Work, suite: str | None) -> str:
    """What makes two commands the same search: a resumed one must match it exactly."""
    body = [suite, [[r.samples, r.seed, r.final_seeds, r.final_epochs, r.search, r.ray,
                     [[p.method, p.template.hash, p.space.describe() if p.space else None] for p in ps]]
                    for r, ps in work]]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def execute_all(work: Work, listeners: Sequence[TrialListener] = (),
                on_teacher: Callable[[str, str], None] = lambda model, dataset: None,
                on_search: Callable[[Prepared], None] = lambda item: None,
                suite: str | None = None) -> Outcome:
    """Run validated requests that share the stores and Ray settings of the first (one per
    pair in a benchmark) under one MLflow parent run. Ctrl-C or SIGTERM (KeyboardInterrupt)
    ends the trials in flight as KILLED and raises Interrupted; `--resume` picks up there."""
    from pcbench.tracking import Tracker  # MLflow is imported only when something is tracked

    request, prepared = work[0]
    experiment = request.experiment or (f"pcbench-benchmark-{suite}" if suite
                                        else experiment_name(prepared[0].template))
    kind = "benchmark" if suite else ("search" if request.search else "run")
    settings = fingerprint(work, suite)
    nothing_to_resume = UserError(
        f"no unfinished {kind}{'' if request.resume in (None, 'latest') else ' ' + request.resume} "
        f"with these settings in experiment '{experiment}'; run the same command as before with "
        f"--resume, or drop --resume to start a new one")
    tracking = request.tracking_uri
    if (request.resume and tracking.startswith("sqlite:///")
            and not Path(tracking.removeprefix("sqlite:///")).exists()):
        raise nothing_to_resume  # no store yet: nothing was ever run here
    # The store first: a bad URI fails before a teacher is trained or Ray started.
    for uri in (tracking, request.optuna_storage):
        if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(tracking, experiment, create=not request.resume)
    if tracker.experiment_id is None:
        raise nothing_to_resume
    resumed = None
    if request.resume:
        resumed = tracker.unfinished_parent(settings, None if request.resume == "latest" else request.resume)
        if resumed is None:
            raise nothing_to_resume
    if request.ray:
        from pcbench.launch.cluster import start_ray
        start_ray(request.address,
                  dashboard=any(p.template.train.workers > 1 for _, ps in work for p in ps))
    store = TeacherStore(request.teachers)
    work = [(r, _with_teacher(p, store, on_teacher)) for r, p in work]
    first = prepared[0].template
    if resumed:
        search_id, parent = resumed
        tracker.reopen_run(parent)
    else:
        search_id = new_search_id()
        parent = tracker.start_run(
            f"{kind}-{search_id}",
            {"methods": ",".join(dict.fromkeys(p.method for _, ps in work for p in ps)),
             "pairs": ",".join(dict.fromkeys(f"{p.template.teacher}->{p.template.student}"
                                             for _, ps in work for p in ps)),
             "samples": request.samples, "concurrent": request.concurrent, "seed": request.seed,
             "epochs": first.train.epochs, "workers": first.train.workers, "dataset": first.data.name,
             "final_seeds": ",".join(map(str, request.final_seeds)), "ray": request.ray,
             "results": str(request.results)},
            {"pcbench.search_id": search_id, "pcbench.kind": kind, "pcbench.suite": suite or "",
             "pcbench.optuna_storage": request.optuna_storage, "pcbench.fingerprint": settings,
             "pcbench.versions": json.dumps(package_versions(), sort_keys=True)})
    results = ResultsStore(request.results)
    recorder = SearchRecorder(tracker, parent, results, search_id, suite, resumed=resumed is not None)
    status = "FAILED"
    try:
        for item_request, items in work:
            for item in items:
                recorder.gpus_per_trial = _gpus_held(item_request, item.template)
                on_search(item)
                searched = _search(item_request, item, [recorder, *listeners], recorder, search_id,
                                   experiment)
                if item_request.final_seeds:
                    _final_runs(item_request, item, [recorder, *listeners], recorder, search_id, searched)
        status = "FINISHED"
    except KeyboardInterrupt as signal:
        status = "KILLED"
        recorder.end_in_flight("KILLED")
        tracker.end_running_children(parent, "KILLED")  # one caught between its start and ours
        raise Interrupted(search_id, 143 if isinstance(signal, Terminated) else 130) from None
    finally:
        tracker.end_run(parent, status)
    return Outcome(search_id, recorder.trials_seen, recorder.trials_failed, recorder.trials_diverged)


def _gpus_held(request: Request, template: TrialConfig) -> float:
    """What a trial's GPU-hours count: its Ray reservation, or the one GPU of a --no-ray run."""
    if request.ray:
        return request.gpus_per_trial
    import torch
    return 1.0 if template.train.device != "cpu" and torch.cuda.is_available() else 0.0


def study_name(experiment: str, method: str) -> str:
    """One Optuna study per (experiment, method): repeated searches append to it."""
    return f"{experiment}-{method}"


def _rows(recorder: SearchRecorder, template: TrialConfig, phase: str) -> list[dict[str, Any]]:
    """The trial rows of one stage of one method and pair (a resumed driver's included)."""
    return [r for r in recorder.rows if r["phase"] == phase and r["method"] == template.method.name
            and (r["teacher"], r["student"]) == (template.teacher, template.student)]


def _search(request: Request, item: Prepared, listeners, recorder: SearchRecorder, search_id: str,
            experiment: str) -> list[dict[str, Any]]:
    """Run one method's search (or single trial); return its trial rows."""
    phase = "search" if request.search else "run"
    recorder.phase, recorder.selected_trial = phase, None
    done = len(_rows(recorder, item.template, phase)) if request.resume else 0
    if done >= request.samples:
        return _rows(recorder, item.template, phase)  # finished before the last driver died
    if not request.ray:
        _run_here(item.template, request.results, listeners)
    else:
        from pcbench.launch.search import SearchPlan, run_search
        pair = f"{item.template.teacher}-{item.template.student}"
        run_search(SearchPlan(
            name=f"{search_id}-{pair}-{item.method}", template=item.template, space=item.space,
            # resumed without a restorable Tune state: what is left of the budget
            samples=request.samples - done, concurrent=request.concurrent, seed=request.seed,
            storage=ray_storage(request.results), cpus_per_trial=request.cpus_per_trial,
            gpus_per_trial=request.gpus_per_trial, optuna_storage=request.optuna_storage or None,
            # a benchmark's study is its own (every method gets the same fresh budget, never
            # one warm-started by an earlier run of the suite), per pair and method
            study_name=study_name(f"{experiment}-{search_id}-{pair}" if recorder.suite else experiment,
                                  item.method), resume=request.resume is not None), listeners)
    return _rows(recorder, item.template, phase)


def final_config(selected: TrialConfig, epochs: int | None) -> TrialConfig:
    """The selected configuration trained on all the training data (no validation split),
    `epochs` long, with the recipe's milestones for that length."""
    tree = selected.to_dict()
    tree["data"]["val_fraction"] = 0.0
    if epochs is not None and epochs != selected.train.epochs:
        train, recipe_name = tree["train"], selected.train.recipe
        # from the recipe's own milestones where there is one: scaling the search's scaled
        # (rounded) milestones back would drift from 150/180/210
        source = (recipe(recipe_name)["train"] if recipe_name
                  else {"milestones": selected.train.milestones, "epochs": selected.train.epochs})
        train["milestones"] = scale_milestones(source.get("milestones", []), source["epochs"], epochs)
        train["epochs"] = epochs
    return TrialConfig.parse(tree)


def _final_runs(request: Request, item: Prepared, listeners, recorder: SearchRecorder,
                search_id: str, searched: list[dict[str, Any]]) -> None:
    from pcbench.launch.search import SearchPlan, run_search

    t = item.template
    best = best_trial(pd.DataFrame(searched)) if searched else None
    if best is None:
        return  # no trial completed: the leaderboard has no row for this method
    template = final_config(TrialConfig.parse(json.loads(best["config"])), request.final_epochs)
    recorder.phase, recorder.selected_trial = "final", best["trial_id"]
    if request.resume and len(_rows(recorder, t, "final")) >= len(request.final_seeds):
        return  # finished before the last driver died
    run_search(SearchPlan(
        name=f"{search_id}-{t.teacher}-{t.student}-{item.method}-final", template=template, space=None,
        samples=1, concurrent=request.concurrent, seed=request.seed,
        storage=ray_storage(request.results), cpus_per_trial=request.cpus_per_trial,
        gpus_per_trial=request.gpus_per_trial, seeds=request.final_seeds,
        resume=request.resume is not None), listeners)


def _run_here(config: TrialConfig, results: "str | Path", listeners: Sequence[TrialListener]) -> None:
    """One trial in this process: the same engine, no Ray. Its checkpoints go to
    <results>/runs/<trial> in a local results folder; with a remote results URI, to a local
    temporary folder removed when the trial ends (its rows still go to the URI)."""
    trial_id = uuid.uuid4().hex[:8]
    location = resolve(results)
    if location.is_local:
        _train_here(config, str(location.local_path / "runs" / trial_id), trial_id, listeners)
    else:
        with tempfile.TemporaryDirectory(prefix=f"pcbench-run-{trial_id}-") as folder:
            _train_here(config, folder, trial_id, listeners)


def _train_here(config: TrialConfig, folder: str, trial_id: str,
                listeners: Sequence[TrialListener]) -> None:
    from pcbench.engine import LocalReporter, train_trial

    for listener in listeners:
        listener.trial_started(trial_id, config, {})

    def on_epoch(metrics: dict[str, Any]) -> None:
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
