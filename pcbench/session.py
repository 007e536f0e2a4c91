"""What a command asks for, checked before anything is written or Ray starts. A Session is
built once per command: the stores (results, teachers, MLflow, Optuna) resolved and checked,
and where trials run and what each holds. A Request is one pair's methods, budget and
protocol; validate() turns it into each method's template and space, or fails with one line."""

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pcbench.checks import (
    check_address,
    check_environment,
    check_optuna_storage,
    check_results,
    check_tracking_uri,
    check_writable,
    default_tracking_uri,
)
from pcbench.config import TrialConfig, build_config
from pcbench.data import check_dataset, get_dataset
from pcbench.errors import UserError
from pcbench.launch.resources import COORDINATOR_CPUS
from pcbench.methods import get_method
from pcbench.methods.base import Method
from pcbench.models import shapes_of
from pcbench.plugins import load as load_plugins
from pcbench.recipes import with_recipe
from pcbench.spaces import TAP_KNOBS, SearchSpace, prepare_search
from pcbench.storage import Location, sqlite_path, sqlite_uri
from pcbench.teachers import TeacherStore, needs_teacher

# Search trials trained together by default: the searches are then deterministic (the same
# seed gives the same trials at any concurrency) and a benchmark's final runs are paired. 4:
# the demo's and a KD search's fastest on a 2-core machine (README, Cohorts).
DEFAULT_COHORT = 4


SEARCH_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # workflow.new_search_id
MAX_NAME = 200
EXPERIMENT_NAME = re.compile(rf"[\w.+@/:-]{{1,{MAX_NAME}}}")


@dataclass
class Session:
    results: Location  # the Parquet store; Ray's trial folders under <results>/ray
    teachers: TeacherStore
    tracking_uri: str
    optuna_storage: str  # "": no study (a command that searches nothing)
    experiment: str | None = None  # None: named after the pair, or the suite
    ray: bool = True  # False: the local backend (one worker, in this process)
    address: str | None = None  # None: RAY_ADDRESS, else a local instance
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrent: int = 1
    # A search's trials train in cohorts of this many (launch/cohort.py); None: DEFAULT_COHORT
    # wherever a method's space allows it, else one trial per process (said in the plan).
    cohort: int | None = None
    # Continue the latest unfinished command with the same settings ("latest"), or the one
    # with this search id; None: a new one.
    resume: str | None = None

    @classmethod
    def open(cls, *, results: "str | Path", teachers: Path, tracking_uri: str | None = None,
             optuna_storage: str | None = None, search: bool = True, **settings: Any) -> "Session":
        """Checks every store and setting and fills the defaults: MLflow's tracking URI, the
        Optuna study beside it. Nothing is created."""
        session = cls(check_results(results, "--results"), TeacherStore(teachers),
                      tracking_uri or default_tracking_uri(), "", **settings)
        if session.concurrent < 1:
            raise UserError(f"--concurrent {session.concurrent} runs nothing; give 1 or more")
        if session.cohort is not None and session.cohort < 1:
            raise UserError(f"--cohort {session.cohort}: give 1 (one trial per process) or more")
        if not (0 < session.cpus_per_trial < math.inf and 0 <= session.gpus_per_trial < math.inf):
            raise UserError("--cpus-per-trial must be a number > 0 and --gpus-per-trial one >= 0")
        if session.resume not in (None, "latest") and not SEARCH_ID.fullmatch(session.resume):
            raise UserError(f"--resume-id {session.resume!r} is not a search id; they look like "
                            f"20261207-084055-f8bc98 (the `stopped:` line and each run's "
                            f"pcbench.search_id tag name it)")
        if session.experiment is not None and not EXPERIMENT_NAME.fullmatch(session.experiment):
            raise UserError(f"--experiment: give a name of 1 to {MAX_NAME} letters, digits and "
                            f"._-+@/: (no spaces or quotes)")
        check_writable(teachers, "--teachers")
        check_tracking_uri(session.tracking_uri)
        if search:
            session.optuna_storage = optuna_storage or default_optuna_storage(
                session.tracking_uri, session.results)
            check_optuna_storage(session.optuna_storage, session.tracking_uri)
        return session

    @property
    def cohort_size(self) -> int:
        return DEFAULT_COHORT if self.cohort is None else self.cohort

    @property
    def ray_storage(self) -> str:
        """Ray Tune's storage_path: <results>/ray, an absolute path or a URI (Ray opens it with
        pyarrow on every node)."""
        return self.results.join("ray").uri

    @property
    def cluster_address(self) -> str | None:
        return self.address or os.environ.get("RAY_ADDRESS") or None  # an empty one: none


def default_optuna_storage(tracking_uri: str, results: Location) -> str:
    """Beside a SQLite MLflow store, else in a local results folder, else (the results are
    remote, where SQLite cannot live) `optuna.db` in the working directory: the study is used
    by the driver only."""
    if tracking_file := sqlite_path(tracking_uri):
        folder = tracking_file.resolve().parent
    else:
        folder = results.local_path if results.is_local else Path.cwd()
    return sqlite_uri(folder / "optuna.db")


@dataclass
class Request:
    """One pair's methods and what to do with them."""

    methods: list[str]
    base: dict[str, Any] = field(default_factory=dict)  # from --dataset, --epochs, ...
    overrides: dict[str, Any] = field(default_factory=dict)  # from --set
    recipe: str | None = None  # a named profile under `base` (recipes.py)
    space_file: str | None = None
    search: bool = True  # False: one trial of the configuration as given
    samples: int = 1
    seed: int = 0
    # A benchmark: after each method's search, its selected configuration is re-run once per
    # seed on the full training set (final_epochs long; None: as the search trials).
    final_seeds: list[int] = field(default_factory=list)
    final_epochs: int | None = None


@dataclass
class Prepared:
    method: str
    template: TrialConfig
    space: SearchSpace | None
    cohort: int = 1  # the search's trials at a time in one process
    cohort_note: str | None = None  # why it searches one trial per process by default


def validate(session: Session, request: Request, missing: list[str] | None = None) -> list[Prepared]:
    """Every check a request can fail. With a `missing` list (a dry run), what only a real run
    needs (data files, teachers, GPUs, the Ray cluster) is appended to it instead of raised,
    and nothing is downloaded."""
    load_plugins(request.base.get("plugins") or [])  # their methods, models, data and recipes
    if not request.methods:
        raise UserError("no method given; name one with --method (see `pcbench methods`)")
    if request.samples < 1:
        raise UserError(f"--samples {request.samples} runs nothing; give 1 or more")
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
        if request.search:
            _choose_cohort(session, item)
    dry = missing is not None

    def needed(check: Callable[[], None]) -> None:
        try:
            check()
        except UserError as error:
            if not dry:
                raise
            missing.append(str(error))

    for item in prepared:
        needed(lambda: _check_resources(session, request, item.template))
    needed(lambda: check_dataset(template.data.name, template.data.root, download=not dry))
    needed(lambda: _check_teachers(session.teachers, prepared))
    if session.ray:
        needed(lambda: check_address(session.cluster_address))
    needed(lambda: check_environment(local_ray=session.ray and session.cluster_address is None))
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


def _choose_cohort(session: Session, item: Prepared) -> None:
    """A cohort's members share one data stream and one teacher forward: a space that searches
    a knob they share is searched one trial per process. Refused where --cohort asked for more;
    by default, said in the plan."""
    from pcbench.engine import COHORT_SHARED
    own = get_method(item.method).cohort_shared_knobs
    shared = [key for key in item.space.distributions if key.removeprefix("method.") in own
              or any(key == s or key.startswith(s + ".") for s in COHORT_SHARED)]
    item.cohort = session.cohort_size
    if not shared or item.cohort == 1:
        return
    if session.cohort is not None:
        raise UserError(f"--cohort {session.cohort}: the members of a cohort share {', '.join(shared)}; "
                        f"search it with --cohort 1, or drop it from the space")
    item.cohort = 1
    item.cohort_note = (f"one trial per process (ASHA), not cohorts of {DEFAULT_COHORT}: its space "
                        f"searches {', '.join(shared)}, which a cohort's members share")


def _check_teachers(store: TeacherStore, prepared: list[Prepared]) -> None:
    """Embedded data sets train a missing teacher on first use; others need it stored."""
    for item in prepared:
        t = item.template
        if (needs_teacher(t) and not get_dataset(t.teacher_data).embedded
                and store.get(t.teacher, t.teacher_data) is None):
            raise UserError(f"no {t.teacher} teacher for {t.teacher_data} in {store.root}; train it "
                            f"with `pcbench teacher train --model {t.teacher} --dataset {t.teacher_data}` "
                            f"or import one with `pcbench teacher import FILE --model {t.teacher} "
                            f"--dataset {t.teacher_data}`")


def _check_resources(session: Session, request: Request, template: TrialConfig) -> None:
    workers = template.train.workers
    if not request.search and not session.ray and workers > 1:
        raise UserError(f"train.workers={workers} needs Ray Train; drop --no-ray or use one worker")
    if workers > 1 and session.cpus_per_trial <= COORDINATOR_CPUS:
        raise UserError(f"--cpus-per-trial {session.cpus_per_trial} leaves nothing for {workers} "
                        f"workers; give more than {COORDINATOR_CPUS}")
    if session.cluster_address:
        return  # an autoscaling cluster may add the nodes a trial needs: no local check
    if session.ray and session.cpus_per_trial > (os.cpu_count() or 1):
        raise UserError(f"--cpus-per-trial {session.cpus_per_trial} exceeds this machine's "
                        f"{os.cpu_count()} CPUs; lower it or attach to a cluster with --address")
    import torch
    if (template.train.device == "cuda" or session.gpus_per_trial > 0) and not torch.cuda.is_available():
        raise UserError("this machine has no CUDA GPU; use train.device=auto or cpu and "
                        "--gpus-per-trial 0, or attach to a GPU cluster with --address")


def plan(request: Request, prepared: list[Prepared]) -> list[dict[str, Any]]:
    """What a validated request will run, per pair and method: its budget, the first point and
    every knob as resolved for the pair (a dry run prints this)."""
    entries = []
    for item in prepared:
        t = item.template
        entry = {"teacher": t.teacher, "student": t.student, "method": item.method,
                 "dataset": t.data.name, "teacher_dataset": t.teacher_data,
                 "student_init": t.student_init,
                 "budget": {"trials": request.samples if request.search else 1, "epochs": t.train.epochs},
                 "first_point": item.space.first_point(t) if item.space else {},
                 "knobs": item.space.describe() if item.space else {},
                 "fixed": fixed_knobs(t, item.space)}
        if item.space:
            entry["cohort"] = item.cohort
            if item.cohort_note:
                entry["cohort_note"] = item.cohort_note
        if request.final_seeds:
            entry["final"] = {"seeds": list(request.final_seeds),
                              "epochs": request.final_epochs or t.train.epochs}
        entries.append(entry)
    return entries


def fixed_knobs(template: TrialConfig, space: SearchSpace | None) -> dict[str, Any]:
    """The method's knobs that its search leaves at their setting (all of them for one run):
    with the searched ones, everything the method's loss is made of."""
    searched = space.distributions if space else {}
    return {key: value for key, value in template.flat().items()
            if key.startswith("method.") and key != "method.name" and key not in searched}
