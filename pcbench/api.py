"""The Python API: one function per command, with the command's options; the command line
parses its flags and calls these. Everything a command checks, defaults and merges happens
here or below, so a notebook and the shell cannot disagree.

    import pcbench
    result = pcbench.search("kd", samples=8, epochs=20)               # a Ray Tune search
    trials = pcbench.read_trials()                                    # pandas, one row a trial
    pcbench.search("mine", plugins=["./mymethod.py"], samples=2, epochs=2)
    pcbench.benchmark("suites/demo.yaml")                             # searches, then seed runs
    board = pcbench.report().board                                    # the leaderboard

Bad input raises `pcbench.errors.UserError` (one line naming the fix) before Ray starts.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from pcbench.errors import UserError
from pcbench.overrides import parse_overrides

if TYPE_CHECKING:  # pandas loads with the first table, not with the command line
    import pandas as pd

DEFAULT_RESULTS = "pcbench-results"
DEFAULT_TEACHERS = "pcbench-teachers"
# `report` with a remote results URI and no `out` writes the report here, locally.
REMOTE_REPORT = Path("pcbench-report")


class Progress(Protocol):
    """What a caller may watch a command with (the CLI's bars); every trial event too
    (launch.plan.TrialListener)."""

    def say(self, line: str) -> None: ...

    def on_search(self, item, trials: int) -> None: ...


@dataclass
class Plan:
    """What a dry run would do: each method's entry per pair, and what only a real run needs
    but is missing (data, teachers, GPUs, the cluster)."""

    entries: list[dict[str, Any]]
    missing: list[str]


@dataclass
class Result:
    """What a search, run or benchmark produced."""

    search_id: str
    trials: int
    failed: int  # errors (the command exits non-zero)
    diverged: int
    results: str  # the Parquet store
    tracking_uri: str
    suite: str | None = None
    report: "Report | None" = None  # a benchmark's leaderboard, written when it ends

    def read_trials(self) -> "pd.DataFrame":
        """This command's trial rows."""
        trials = read_trials(self.results)
        return trials[trials["search_id"] == self.search_id].reset_index(drop=True)


@dataclass
class Report:
    board: "pd.DataFrame"
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (part, why) left out


def search(method: str | Iterable[str], *, plugins: Iterable[str] = (), dataset: str | None = None,
           teacher: str | None = None, student: str | None = None, set: dict | list[str] | None = None,
           space: str | None = None, samples: int = 8, concurrent: int = 2, epochs: int | None = None,
           workers: int | None = None, seed: int = 0, results: str = DEFAULT_RESULTS,
           teachers: str | Path = DEFAULT_TEACHERS, tracking_uri: str | None = None,
           experiment: str | None = None, address: str | None = None, cpus_per_trial: float = 1.0,
           gpus_per_trial: float = 0.0, optuna_storage: str | None = None, data_dir: str | None = None,
           recipe: str | None = None, resume: str | None = None, cohort: int | None = None,
           teacher_dataset: str | None = None, init_from_teacher: bool = False, dry_run: bool = False,
           progress: Progress | None = None) -> "Result | Plan":
    """Search each method's knobs (`pcbench search`): Ray Tune with Optuna, the same budget and
    training knobs for every method, in cohorts of 4 by default. `resume`: "latest" or a
    search id. `set`: dotted overrides, as a dict or as "key=value" strings."""
    from pcbench.session import Request

    methods = _listed(method)
    if space is not None and len(_names(methods)) > 1:
        raise UserError("--space applies to one method; search one method per --space file")
    session = _open_session(results, teachers, tracking_uri, optuna_storage, experiment=experiment,
                            address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                            concurrent=concurrent, cohort=cohort, resume=resume)
    request = Request(methods, _base(dataset, teacher, student, epochs, workers, seed, data_dir,
                                     teacher_dataset, init_from_teacher, plugins),
                      _overrides(set), recipe=recipe, space_file=space, samples=samples, seed=seed)
    return _execute(session, [request], dry_run, progress)


def run(method: str, *, plugins: Iterable[str] = (), dataset: str | None = None, teacher: str | None = None,
        student: str | None = None, set: dict | list[str] | None = None, epochs: int | None = None,
        workers: int | None = None, seed: int = 0, data_dir: str | None = None, recipe: str | None = None,
        teacher_dataset: str | None = None, init_from_teacher: bool = False, ray: bool = True,
        results: str = DEFAULT_RESULTS, teachers: str | Path = DEFAULT_TEACHERS,
        tracking_uri: str | None = None, experiment: str | None = None, address: str | None = None,
        cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
        progress: Progress | None = None) -> Result:
    """One trial of the configuration as given (`pcbench run`); `ray=False`: in this process."""
    from pcbench.session import Request

    session = _open_session(results, teachers, tracking_uri, search=False, experiment=experiment,
                            ray=ray, address=address, cpus_per_trial=cpus_per_trial,
                            gpus_per_trial=gpus_per_trial)
    request = Request([method], _base(dataset, teacher, student, epochs, workers, seed, data_dir,
                                      teacher_dataset, init_from_teacher, plugins),
                      _overrides(set), recipe=recipe, search=False, seed=seed)
    return _execute(session, [request], False, progress)


def benchmark(suite: str | Path, *, plugins: Iterable[str] = (), data_dir: str | None = None,
              samples: int | None = None, epochs: int | None = None, seeds: int | None = None,
              final_epochs: int | None = None, methods: Iterable[str] | None = None,
              pairs: Iterable[str] | None = None, set: dict | list[str] | None = None,
              concurrent: int | None = None, cohort: int | None = None, cpus_per_trial: float | None = None,
              gpus_per_trial: float | None = None, results: str = DEFAULT_RESULTS,
              teachers: str | Path = DEFAULT_TEACHERS, tracking_uri: str | None = None,
              address: str | None = None, optuna_storage: str | None = None, resume: str | None = None,
              dry_run: bool = False, progress: Progress | None = None) -> "Result | Plan":
    """Every method x pair of a suite (`pcbench benchmark`): the same search budget each,
    selection on validation, each winner re-run with seeds on all the training data, then the
    report. Arguments other than the suite override its values for a smaller run."""
    from pcbench.plugins import load as load_plugins
    from pcbench.plugins import resolve as resolve_plugin
    from pcbench.recipes import recipe as recipe_fragment
    from pcbench.suite import load_suite

    suite_path = _suite_file(suite)
    spec = load_suite(suite_path)
    for flag, value in (("--samples", samples), ("--epochs", epochs), ("--seeds", seeds),
                        ("--final-epochs", final_epochs), ("--concurrent", concurrent),
                        ("--cohort", cohort)):
        if value is not None and value < 1:  # given, so never "use the suite's"
            raise UserError(f"{flag} {value} runs nothing; give 1 or more (or leave it out for "
                            f"the suite's value)")
    if cpus_per_trial is not None and cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial {cpus_per_trial}: give more than 0")
    methods = _listed(methods)
    if unknown := sorted(_names(methods) - _names(spec.all_methods())):
        raise UserError(f"--method {', '.join(unknown)} is not in {suite_path}; "
                        f"choose among {', '.join(spec.all_methods())}")
    session = _open_session(
        results, teachers, tracking_uri, optuna_storage, address=address, resume=resume,
        concurrent=spec.concurrent if concurrent is None else concurrent,
        cohort=spec.cohort if cohort is None else cohort,
        cpus_per_trial=spec.cpus_per_trial if cpus_per_trial is None else cpus_per_trial,
        gpus_per_trial=spec.gpus_per_trial if gpus_per_trial is None else gpus_per_trial)
    plugin_specs = spec.plugin_specs(suite_path) + [resolve_plugin(p) for p in _listed(plugins)]
    load_plugins(plugin_specs)  # before the suite's names are checked: they may be a plug-in's
    if spec.recipe is not None:
        recipe_fragment(spec.recipe)
    requests = [_pair_request(spec, pair, plugin_specs, data_dir, epochs, methods, set, samples, seeds,
                              final_epochs) for pair in _chosen_pairs(spec, suite_path, pairs)]
    if not (requests := [r for r in requests if r.methods]):
        raise UserError(f"--method {', '.join(methods)} is on none of the pairs chosen; "
                        f"pick a method those pairs list, or another --pair")
    outcome = _execute(session, requests, dry_run, progress, spec.name)
    if isinstance(outcome, Result):
        outcome.report = report(results)
    return outcome


def _suite_file(suite: str | Path) -> Path:
    """A suite file, or the bundled suite of that name."""
    from pcbench.suite import bundled_suites

    path = Path(suite)
    if not path.is_file() and str(suite) in bundled_suites():
        path = bundled_suites()[str(suite)]
    if not path.is_file():
        raise UserError(f"no suite file {suite}; pass a suite file, or the name of a bundled one "
                        f"(`pcbench suites` lists them)")
    return path


def _pair_request(spec, pair, plugin_specs, data_dir, epochs, methods, overrides, samples, seeds,
                  final_epochs):
    """One pair of a suite as a Request: the suite's settings, then the pair's, then the caller's."""
    from pcbench.session import Request

    base = {"seed": spec.seed, "data": {"name": pair.dataset or spec.dataset}, "teacher": pair.teacher,
            "student": pair.student, "plugins": plugin_specs,
            # a pair on another data set than the suite's: its teacher's, unless it names one
            "teacher_dataset": pair.teacher_dataset or (
                spec.teacher_dataset if pair.dataset in (None, spec.dataset) else None)}
    if data_dir is not None:
        base["data"]["root"] = data_dir
    budget_epochs = epochs if epochs is not None else spec.budget.epochs
    if budget_epochs is not None:
        base["train"] = {"epochs": budget_epochs}
    chosen = pair.methods or spec.methods
    return Request([m for m in chosen if not methods or _names([m]) & _names(methods)], base,
                   {**spec.set, **pair.set, **_overrides(overrides)},
                   recipe=spec.recipe, samples=spec.budget.trials if samples is None else samples,
                   seed=spec.seed, final_seeds=spec.final_seeds(seeds),
                   final_epochs=spec.final_epochs if final_epochs is None else final_epochs)


def report(results: str = DEFAULT_RESULTS, out: str | Path | None = None) -> Report:
    """leaderboard.parquet, .md, .html and .tex from the results store (`pcbench report`);
    default `out`: <results>/report. Unreadable part files are left out and listed."""
    from pcbench.checks import check_writable
    from pcbench.results import ResultsStore, leaderboard, write_report
    from pcbench.storage import resolve

    store = ResultsStore(resolve(results, "--results"))
    if not store.parts("trials"):
        raise UserError(f"no trials under {results}; run `pcbench search` first or pass --results")
    if out is None:
        out = store.location.local_path / "report" if store.location.is_local else REMOTE_REPORT
    check_writable(Path(out), "--out")
    if store.location.is_local:
        tables = [store.location.local_path / table for table in ("trials", "epochs")]
        if any(Path(out).resolve().is_relative_to(t.resolve()) for t in tables):
            raise UserError(f"--out {out} is inside the store's tables, where the next report would "
                            f"read the leaderboard as trials; write it elsewhere (default: "
                            f"{store.location.local_path / 'report'})")
    skipped: list[tuple[str, str]] = []
    trials = store.read("trials", skipped)
    if len(skipped) == len(store.parts("trials")):
        part, reason = skipped[0]
        others = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        raise UserError(f"no readable trials part under {results}: {part} ({reason}){others}; "
                        f"pass the --results of a pcbench run")
    board = leaderboard(trials)
    return Report(board, write_report(board, out, trials=trials), skipped)


def read_trials(results: str = DEFAULT_RESULTS) -> "pd.DataFrame":
    """Every trial of the results store, one row each (the `trials` table; README, Results)."""
    from pcbench.results import ResultsStore
    from pcbench.storage import resolve

    return ResultsStore(resolve(results, "--results")).read("trials")


def read_leaderboard(results: str = DEFAULT_RESULTS) -> "pd.DataFrame":
    """The leaderboard of the results store, as `report` would write it (nothing written)."""
    from pcbench.results import leaderboard

    return leaderboard(read_trials(results))


def _listed(values: "str | Iterable[str] | None") -> list[str]:
    """One name, or several: a single string is never taken as its characters."""
    return [values] if isinstance(values, (str, Path)) else list(values or [])


def _names(names: Iterable[str]) -> set[str]:
    """As a set (the `set` argument shadows the builtin here)."""
    return {str(name) for name in names}


def _overrides(values: dict | list[str] | None) -> dict[str, Any]:
    return dict(values) if isinstance(values, dict) else parse_overrides(list(values or []))


def _base(dataset, teacher, student, epochs, workers, seed, data_dir=None, teacher_dataset=None,
          init_from_teacher=False, plugins=()) -> dict[str, Any]:
    """A trial's settings from a command's options (None: the default)."""
    from pcbench.plugins import resolve

    base: dict[str, Any] = {"seed": seed}
    if plugins:
        base["plugins"] = [resolve(str(p)) for p in _listed(plugins)]
    if teacher_dataset is not None:
        base["teacher_dataset"] = teacher_dataset
    data = {k: v for k, v in (("name", dataset), ("root", data_dir)) if v is not None}
    if data:
        base["data"] = data
    if teacher is not None:
        base["teacher"] = teacher
    if student is not None:
        base["student"] = student
    train = {k: v for k, v in (("epochs", epochs), ("workers", workers)) if v is not None}
    if init_from_teacher:
        train["init_from_teacher"] = True
    if train:
        base["train"] = train
    return base


def _chosen_pairs(spec, suite_path: Path, pairs: Iterable[str] | None):
    """The suite's pairs, or those named (TEACHER->STUDENT, or as Pair.label says)."""
    pairs = _listed(pairs)
    if not pairs:
        return spec.pairs
    named = {p.label: p for p in spec.pairs}
    if unknown := sorted(_names(pairs) - set(named)):
        raise UserError(f"--pair {', '.join(unknown)} is not in {suite_path}; choose among "
                        f"{', '.join(named)}")
    return [named[p] for p in named if p in _names(pairs)]


def _open_session(results, teachers, tracking_uri, optuna_storage=None, *, search=True, **settings):
    from pcbench.session import Session

    return Session.open(results=results, teachers=Path(teachers), tracking_uri=tracking_uri,
                        optuna_storage=optuna_storage, search=search, **settings)


def _execute(session, requests: list, dry_run: bool, progress: Progress | None,
             suite: str | None = None) -> "Result | Plan":
    """Validate every request (every pair before Ray starts); then the plan, or the run."""
    from pcbench import workflow
    from pcbench.session import plan, validate

    missing: list[str] = []
    work = [(request, validate(session, request, missing if dry_run else None)) for request in requests]
    _one_setting_once(work)
    if dry_run:
        return Plan([e for request, prepared in work for e in plan(request, prepared)], missing)
    listeners = [progress] if progress is not None else []
    outcome = workflow.execute(
        session, work, listeners,
        on_teacher=lambda model, dataset: progress and progress.say(
            f"training the {model} teacher on {dataset} (first use)"),
        on_search=lambda item, trials: progress and progress.on_search(item, trials), suite=suite)
    return Result(outcome.search_id, outcome.trials, outcome.failed, outcome.diverged,
                  session.results.uri, session.tracking_uri, suite)


def _one_setting_once(work) -> None:
    """Two pairs of a suite that come to one setting (data sets, teacher, student, how it
    starts) would share their Tune experiments, Optuna studies, finished rows and board group."""
    from pcbench.workflow import experiment_name

    seen: dict[str, str] = {}
    for _, prepared in work:
        if not prepared:
            continue
        t = prepared[0].template
        setting, label = experiment_name(t), f"{t.teacher}->{t.student} on {t.data.name}"
        if setting in seen:
            raise UserError(f"two pairs are one setting ({label}, teacher of {t.teacher_data}, student "
                            f"from {t.student_init}): they would share their searches and board rows; "
                            f"list it once, its methods together")
        seen[setting] = label


def methods(plugins: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, origin) of every registered method, the plug-ins' included: origin is "pcbench"
    or "plugin <module>". Variants are not listed: every method with a teacher that is not KD on
    the logits itself (kd, dkd, dist, nkd, wttm, mlkd are) is also <name>+kd, and every logit method
    (kd, dkd, dist, nkd, wttm, mlkd) and every +kd variant also takes the logit plug-ins +ls (logit
    standardisation) and +ctkd (curriculum temperature), in that order: kd+ls, pc+kd+ls+ctkd."""
    from pcbench.methods import method_names, method_origin
    from pcbench.plugins import load, resolve

    load([resolve(str(p)) for p in _listed(plugins)])
    return [(name, method_origin(name)) for name in method_names()]


def models() -> list:
    """The model zoo (pcbench.models.ZooInfo): family, parameters, stages, taps."""
    from pcbench.models import zoo_info

    return zoo_info()


def suites() -> list[tuple[str, Any, Path]]:
    """(name, suite, file) of each bundled suite."""
    from pcbench.suite import bundled_suites, load_suite

    return [(name, load_suite(path), path) for name, path in bundled_suites().items()]


def train_teacher(model: str = "cnn_large", dataset: str = "digits", *, data_dir: str | None = None,
                  set: dict | list[str] | None = None, teachers: str | Path = DEFAULT_TEACHERS,
                  ray: bool = True, results: str = DEFAULT_RESULTS, address: str | None = None,
                  cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, plugins: Iterable[str] = (),
                  on_start=lambda config: None, on_epoch=lambda metrics: None):
    """Train a teacher with its data set's recipe (a Ray trial, or in this process) and store
    it, replacing a stored one (`pcbench teacher train`); its store record."""
    from pcbench.checks import check_results, check_writable
    from pcbench.data import check_dataset
    from pcbench.launch import teacher_runner
    from pcbench.plugins import resolve as resolve_plugin
    from pcbench.storage import resolve
    from pcbench.teachers import TeacherStore, teacher_config

    specs = [resolve_plugin(str(p)) for p in _listed(plugins)]
    config = teacher_config(model, dataset, data_dir, _overrides(set), plugins=specs)
    check_dataset(dataset, data_dir)
    check_writable(Path(teachers), "--teachers")
    if ray:
        from pcbench.launch.cluster import start_ray
        check_results(results, "--results")
        start_ray(address, plugins=specs)
    runner = teacher_runner(ray, resolve(results).join("ray").uri, cpus_per_trial, gpus_per_trial,
                            on_epoch)
    on_start(config)
    return TeacherStore(Path(teachers)).train(config, runner, on_epoch=on_epoch)


def import_teacher(checkpoint: str | Path, model: str, dataset: str, *, data_dir: str | None = None,
                   teachers: str | Path = DEFAULT_TEACHERS, plugins: Iterable[str] = ()):
    """Store a RepDistiller / mdistiller checkpoint as the teacher (`pcbench teacher import`):
    loaded strictly into `model`, its test accuracy measured; its store record."""
    from pcbench.checks import check_writable
    from pcbench.data import check_dataset, get_dataset
    from pcbench.engine import accuracy_on_test
    from pcbench.models import model_names
    from pcbench.plugins import load, resolve
    from pcbench.teachers import TeacherStore

    load([resolve(str(p)) for p in _listed(plugins)])  # its model or data set may be a plug-in's
    if not Path(checkpoint).is_file():
        raise UserError(f"no checkpoint file {checkpoint}; pass the path of a .pth/.pt file")
    if model not in model_names():
        raise UserError(f"unknown model '{model}'; choose one of {', '.join(model_names())}")
    get_dataset(dataset)
    check_dataset(dataset, data_dir)
    check_writable(Path(teachers), "--teachers")
    return TeacherStore(Path(teachers)).import_checkpoint(
        checkpoint, model, dataset, lambda name, state: accuracy_on_test(name, state, dataset, data_dir))


def stored_teachers(teachers: str | Path = DEFAULT_TEACHERS) -> list:
    """The teacher store's records (`pcbench teacher list`)."""
    from pcbench.teachers import TeacherStore

    return TeacherStore(Path(teachers)).records()


def ui(tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000, *,
       insecure: bool = False, auth: bool = False, on_start=lambda uri, address: None,
       on_experiment=lambda name, url: None, on_warning=lambda line: None) -> None:
    """Replace this process with MLflow's UI on the tracking store (`pcbench ui`), after telling
    `on_start` where it will be and `on_experiment` each pcbench experiment's runs page. It
    listens on the loopback interface unless `auth` (MLflow's basic auth, its admin's login
    taken from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) or `insecure` (no login:
    anyone who reaches it can read and change every run). One web worker; only the names it is
    served under are accepted as Host (no DNS rebinding)."""
    import os
    import socket
    import sys

    from pcbench.checks import check_port, check_tracking_uri, default_tracking_uri, is_loopback

    check_port(port, host)
    local = is_loopback(host)
    if not local and not (insecure or auth):
        raise UserError(f"--host {host} opens the tracking store to anyone who can reach this machine; "
                        f"pass --auth (a login, from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), "
                        f"keep 127.0.0.1 behind an SSH tunnel (ssh -L {port}:127.0.0.1:{port} this-machine), "
                        f"or pass --insecure to accept that")
    uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    environment, app = dict(os.environ), []
    if auth:
        environment.update(_basic_auth(uri))
        app = ["--app-name", "basic-auth"]
    from mlflow.tracking import MlflowClient

    from pcbench.tracking import runs_page

    names = {host, "localhost", "127.0.0.1"} if local else {
        host, socket.gethostname(), socket.getfqdn(), *socket.gethostbyname_ex(socket.gethostname())[2]}
    if host in ("0.0.0.0", "::"):  # every interface: the loopback one, which on_start names, too
        names |= {"localhost", "127.0.0.1"}
    names -= {"0.0.0.0", "::"}
    allowed = sorted({f"{name}:{port}" for name in names} | names)
    if not local and not auth:
        on_warning(f"the UI on {host}:{port} has no login: anyone who reaches it can read and change "
                   f"every run (--insecure)")
    elif not local:
        on_warning(f"logins to {host}:{port} cross the network unencrypted (HTTP basic auth): put TLS in "
                   f"front of it (a reverse proxy) or reach it through an SSH tunnel")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    on_start(uri, base)
    experiments = MlflowClient(uri).search_experiments(order_by=["last_update_time DESC"], max_results=20)
    for experiment in experiments:
        if experiment.tags.get("mlflow.experimentKind") == "custom_model_development":
            on_experiment(experiment.name, runs_page(base, experiment.experiment_id))
    os.execve(sys.executable, [sys.executable, "-W", "ignore", "-m", "mlflow", "ui",
                               "--backend-store-uri", uri, "--host", host, "--port", str(port),
                               "--workers", "1", "--allowed-hosts", ",".join(allowed), *app], environment)


def _basic_auth(uri: str) -> dict[str, str]:
    """The environment of MLflow's basic-auth app for `pcbench ui --auth`: its users in the
    tracking store's own database, the admin's login from the environment (MLflow creates that
    admin on the first start; later starts keep the users it has), a Flask secret key from the
    environment or new for this start (sessions then end with it). The login travels in the
    server's environment only; its configuration file (one per store, rewritten at each start,
    in a folder of this user's alone) holds the store's URI and no password of MLflow's."""
    import hashlib
    import importlib.util
    import os
    import secrets
    import stat
    import tempfile

    from pcbench.atomic import write_atomic

    if importlib.util.find_spec("flask_wtf") is None:
        raise UserError("--auth needs MLflow's basic-auth app: pip install 'mlflow[auth]'")
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not username or not password or len(password) < 12:
        raise UserError("--auth takes the admin's login from the environment: set MLFLOW_TRACKING_USERNAME "
                        "and MLFLOW_TRACKING_PASSWORD (12 characters or more), as the clients will")
    if uri.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql", "mssql"):
        raise UserError(f"--auth keeps its users in the tracking store's database, and {uri} is not one; "
                        f"pass --tracking-uri sqlite:///PATH or a database server's URI")
    folder = os.path.join(tempfile.gettempdir(), f"pcbench-ui-auth-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise UserError(f"{folder} is not a folder of this user's alone; remove it and start again")
    # a database password in the URI may hold "%", which configparser reads as interpolation
    config = (f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {uri.replace('%', '%%')}\n"
              "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")

    def write_private(staged) -> None:  # readable by this user alone from its first byte
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(config)

    ini = write_atomic(os.path.join(folder, hashlib.sha256(uri.encode()).hexdigest()[:16] + ".ini"),
                       write_private)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
            or secrets.token_hex(24)}


def stop_ray() -> None:
    """Shut down the Ray instance this process started or attached to, if any."""
    from pcbench.launch.cluster import stop_ray as stop

    stop()


def pair_label(row) -> str:
    """`teacher -> student` as tables name a pair (the teacher's task, the student's start)."""
    from pcbench.results.leaderboard import pair_label as label

    return label(row)
