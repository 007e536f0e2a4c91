"""The pcbench command line. Input is validated before Ray starts; a user error prints one
line naming the fix and exits with code 2."""

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pcbench.config import describe, parse_overrides
from pcbench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and search representation-transfer (distillation) methods.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train and list stored teachers.")
app.add_typer(teacher_app, name="teacher")
console = Console(stderr=True)


def user_errors(command):
    """A UserError becomes one line on stderr and exit code 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


# Options shared by run, search and demo.
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Data set (default: digits).")]
Teacher = Annotated[Optional[str], typer.Option("--teacher", help="Teacher model.")]
Student = Annotated[Optional[str], typer.Option("--student", help="Student model.")]
Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Dotted override, repeatable: method.tau=0.05, train.lr=0.1, pc.weight=2.")]
Results = Annotated[Path, typer.Option("--results", help="Results folder (Parquet, checkpoints).")]
Teachers = Annotated[Path, typer.Option("--teachers", help="Teacher store folder.")]
TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")]
Experiment = Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment name.")]
OptunaStorage = Annotated[Optional[str], typer.Option(
    "--optuna-storage", help="Optuna study database (default: optuna.db beside a SQLite MLflow store).")]
Address = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local instance).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Epochs per trial.")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="DDP workers per trial (>1: Ray Train).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the trials and of the Optuna sampler.")]
CpusPerTrial = Annotated[float, typer.Option("--cpus-per-trial", help="CPUs a trial holds.")]
GpusPerTrial = Annotated[float, typer.Option("--gpus-per-trial", help="GPUs a trial holds (fractions share one).")]


def _base(dataset, teacher, student, epochs, workers, seed) -> dict[str, Any]:
    base: dict[str, Any] = {"seed": seed}
    if dataset is not None:
        base["data"] = {"name": dataset}
    if teacher is not None:
        base["teacher"] = teacher
    if student is not None:
        base["student"] = student
    train = {k: v for k, v in (("epochs", epochs), ("workers", workers)) if v is not None}
    if train:
        base["train"] = train
    return base


class ProgressDisplay:
    """Rich progress: one bar per method search, the best validation accuracy so far."""

    def __init__(self, progress: Progress, samples: int):
        self.progress, self.samples = progress, samples
        self.tasks: dict[str, Any] = {}
        self.best: dict[str, float] = {}
        self.trial_method: dict[str, str] = {}

    def on_search(self, item) -> None:
        self.tasks[item.method] = self.progress.add_task(f"{item.method:>5}", total=self.samples)

    def trial_started(self, trial_id, config, knobs):
        self.trial_method[trial_id] = config.method.name

    def trial_epoch(self, trial_id, metrics):
        method = self.trial_method[trial_id]
        self.best[method] = max(self.best.get(method, 0.0), metrics["val_acc"])
        self.progress.update(self.tasks[method],
                             description=f"{method:>5}  best val {100 * self.best[method]:.1f}%")

    def trial_finished(self, trial_id, error):
        method = self.trial_method.pop(trial_id)
        self.progress.advance(self.tasks[method])
        if error:
            self.progress.console.print(f"[yellow]{method} trial {trial_id} failed:[/yellow] {error}")


def _execute(request) -> None:
    from pcbench import workflow
    from pcbench.tracking import default_tracking_uri

    request.tracking_uri = request.tracking_uri or default_tracking_uri()
    if request.search:
        request.optuna_storage = request.optuna_storage or workflow.default_optuna_storage(
            request.tracking_uri, request.results)
    prepared = workflow.validate(request)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        display = ProgressDisplay(progress, request.samples)
        outcome = workflow.execute(
            request, prepared, [display],
            on_teacher=lambda model, dataset: progress.console.print(
                f"training the {model} teacher on {dataset} (first use)"),
            on_search=display.on_search)
    console.print(f"search {outcome.search_id}: {outcome.trials} trials; MLflow at "
                  f"{request.tracking_uri}, Parquet in {request.results}/trials and /epochs")
    if outcome.failed:
        console.print(f"[red]{outcome.failed} of {outcome.trials} trials failed[/red] "
                      f"(errors above and in MLflow)")
        raise typer.Exit(1)


@app.command()
@user_errors
def methods() -> None:
    """List the registered methods, one per line."""
    from pcbench.methods import method_names
    typer.echo("\n".join(method_names()))


@app.command()
@user_errors
def run(
    method: Annotated[str, typer.Option("--method", help="Method to run.")] = "pc",
    dataset: Dataset = None, teacher: Teacher = None, student: Student = None, set_: Sets = None,
    epochs: Epochs = None, workers: Workers = None, seed: Seed = 0,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run in this process, without Ray.")] = False,
    results: Results = Path("pcbench-results"), teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, experiment: Experiment = None, address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0, gpus_per_trial: GpusPerTrial = 0.0,
) -> None:
    """Run one trial of one method with the given settings."""
    from pcbench.workflow import Request
    request = Request([method], _base(dataset, teacher, student, epochs, workers, seed),
                      parse_overrides(set_ or []), search=False, ray=not no_ray, seed=seed,
                      results=results,
                      teachers=teachers, tracking_uri=tracking_uri or "", experiment=experiment,
                      address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    _execute(request)


def _search(methods_, dataset, teacher, student, set_, space, samples, concurrent, epochs,
            workers, seed, results, teachers, tracking_uri, experiment, address, cpus, gpus,
            optuna_storage=None) -> None:
    from pcbench.workflow import Request
    if space is not None and len(set(methods_)) > 1:
        raise UserError("--space applies to one method; search one method per --space file")
    request = Request(list(methods_), _base(dataset, teacher, student, epochs, workers, seed),
                      parse_overrides(set_ or []), space_file=space, samples=samples,
                      concurrent=concurrent, seed=seed, results=results, teachers=teachers,
                      tracking_uri=tracking_uri or "", experiment=experiment, address=address,
                      cpus_per_trial=cpus, gpus_per_trial=gpus, optuna_storage=optuna_storage or "")
    _execute(request)


Methods = Annotated[Optional[list[str]], typer.Option("--method", help="Method to search, repeatable.")]
Space = Annotated[Optional[str], typer.Option("--space", help="Search space YAML (default: search_spaces/<method>.yaml).")]
Samples = Annotated[int, typer.Option("--samples", help="Trials per method.")]
Concurrent = Annotated[int, typer.Option("--concurrent", help="Trials at once.")]


@app.command()
@user_errors
def search(
    method: Methods = None, dataset: Dataset = None, teacher: Teacher = None,
    student: Student = None, set_: Sets = None, space: Space = None, samples: Samples = 8,
    concurrent: Concurrent = 2, epochs: Epochs = None, workers: Workers = None, seed: Seed = 0,
    results: Results = Path("pcbench-results"), teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, experiment: Experiment = None, address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0, gpus_per_trial: GpusPerTrial = 0.0,
    optuna_storage: OptunaStorage = None,
) -> None:
    """Search each method's knobs with Ray Tune + Optuna (TPE) and ASHA."""
    _search(method or [], dataset, teacher, student, set_, space, samples, concurrent, epochs,
            workers, seed, results, teachers, tracking_uri, experiment, address,
            cpus_per_trial, gpus_per_trial, optuna_storage)


class DemoSuite(BaseModel):
    """suites/demo.yaml: what `pcbench demo` searches, with an equal budget per method."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    teacher: str
    student: str
    methods: list[str]
    samples: int
    epochs: int
    concurrent: int
    seed: int


@app.command()
@user_errors
def demo(
    samples: Annotated[Optional[int], typer.Option("--samples", help="Trials per method.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs per trial.")] = None,
    results: Results = Path("pcbench-results"), teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, address: Address = None,
) -> None:
    """The whole loop on the embedded default (suites/demo.yaml): search ce, kd, pc, ot and
    fcfd on digits with an equal budget, then write the leaderboard."""
    from pcbench import REPO_ROOT
    from pcbench.config import load_yaml
    path = REPO_ROOT / "suites" / "demo.yaml"
    try:
        suite = DemoSuite.model_validate(load_yaml(str(path)))
    except ValidationError as error:
        raise UserError(f"{path}: {describe(error)}; fix the suite file") from None
    _search(suite.methods, suite.dataset, suite.teacher, suite.student, None, None,
            suite.samples if samples is None else samples, suite.concurrent,
            suite.epochs if epochs is None else epochs, None, suite.seed,
            results, teachers, tracking_uri, None, address, 1.0, 0.0)
    _report(results, None)


def _report(results: Path, out: Optional[Path]) -> None:
    from pcbench.results import ResultsStore, leaderboard, write_report
    from pcbench.workflow import check_writable
    if not (results / "trials").is_dir():
        raise UserError(f"no trials under {results}; run `pcbench search` first or pass --results")
    check_writable(out or results / "report", "--out")
    board = leaderboard(ResultsStore(results).read("trials"))
    paths = write_report(board, out or results / "report")
    table = Table("data set", "pair", "method", "test acc", "val acc", "trials")
    for row in board.itertuples():
        table.add_row(row.dataset, f"{row.teacher} -> {row.student}", row.method,
                      f"{100 * row.test_acc:.2f}", f"{100 * row.val_acc:.2f}", str(row.trials))
    Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
@user_errors
def report(
    results: Results = Path("pcbench-results"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: <results>/report).")] = None,
) -> None:
    """Write leaderboard.parquet, .md and .html from the results store."""
    _report(results, out)


@teacher_app.command("train")
@user_errors
def teacher_train(
    model: Annotated[str, typer.Option("--model", help="Teacher architecture.")] = "cnn_large",
    dataset: Annotated[str, typer.Option("--dataset", help="Data set.")] = "digits",
    teachers: Teachers = Path("pcbench-teachers"),
) -> None:
    """Train a teacher with the fixed recipe and store it (replacing a stored one)."""
    from pcbench.config import build_config
    from pcbench.teachers import TeacherStore
    from pcbench.workflow import check_writable
    build_config({"data": {"name": dataset}, "student": model, "method": "ce"}, {})  # validates
    check_writable(teachers, "--teachers")
    record = TeacherStore(teachers).train(
        model, dataset, on_epoch=lambda m: console.print(
            f"epoch {m['epoch']:>3}  val acc {100 * m['val_acc']:.2f}%", highlight=False))
    console.print(f"{record.model} on {record.dataset}: test acc {100 * record.test_acc:.2f}%, "
                  f"sha256 {record.sha256[:12]}, {record.path}")


@teacher_app.command("list")
@user_errors
def teacher_list(teachers: Teachers = Path("pcbench-teachers")) -> None:
    """List the stored teachers."""
    from pcbench.teachers import TeacherStore
    table = Table("model", "data set", "test acc", "val acc", "sha256", "created", "path")
    for r in TeacherStore(teachers).records():
        table.add_row(r.model, r.dataset, f"{100 * r.test_acc:.2f}", f"{100 * r.val_acc:.2f}",
                      r.sha256[:12], r.created, r.path)
    Console().print(table)


@app.command()
@user_errors
def ui(
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the tracking store."""
    from pcbench.tracking import default_tracking_uri
    uri = tracking_uri or default_tracking_uri()
    console.print(f"MLflow UI for {uri} at http://{host}:{port}")
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port)])
