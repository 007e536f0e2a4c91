"""The pcbench command line. Input is validated before Ray starts; a user error prints one
line naming the fix and exits with code 2."""

import functools
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import ClickException  # Typer's own (vendored) Click
from typer.core import TyperGroup

from pcbench.api import DEFAULT_RESULTS
from pcbench.errors import Interrupted, Terminated, UserError
from pcbench.progress import showing_progress


class _OneLineUsageErrors(TyperGroup):
    """A usage error (an unknown option, a value of the wrong type) is one line naming the fix
    and exit code 2, like every other input error, instead of Typer's framed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f"; see `{context.command_path} --help`" if context else ""
            console.print(f"[red]error:[/red] {error.format_message().rstrip('.')}{hint}", highlight=False,
                          soft_wrap=True)
            sys.exit(2)
        except typer.Abort:
            sys.exit(1)
        if not standalone_mode:
            return code
        sys.exit(code or 0)


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Benchmark and search representation-transfer (distillation) methods.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train and list stored teachers.")
app.add_typer(teacher_app, name="teacher")
console = Console(stderr=True)


def user_errors(command):
    """A UserError becomes one line on stderr and exit code 2. The first Ctrl-C or SIGTERM
    stops the whole command: the trials in flight end as KILLED, the local Ray instance is
    shut down, one line says how to resume, and the exit code is 130 (143 for SIGTERM)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            return command(*args, **kwargs)
        except UserError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Interrupted as stop:
            _stop_ray()
            console.print(f"stopped: {stop.search_id} is unfinished; its finished trials are recorded. "
                          f"Continue it with the same command and --resume (or --resume-id {stop.search_id})",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(stop.exit_code) from None
        except KeyboardInterrupt as stop:  # before any search had started
            _stop_ray()
            console.print("stopped before anything was recorded", highlight=False)
            raise typer.Exit(143 if isinstance(stop, Terminated) else 130) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    return wrapper


def _terminate(signum, frame):
    raise Terminated()


def _stop_ray() -> None:
    """Shut down a local Ray instance this command started (its trials with it)."""
    if "ray" in sys.modules:  # else nothing started it
        from pcbench.api import stop_ray
        stop_ray()


# Options shared by run, search and demo.
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Data set (default: digits).")]
Teacher = Annotated[Optional[str], typer.Option("--teacher", help="Teacher model.")]
Student = Annotated[Optional[str], typer.Option("--student", help="Student model.")]
TeacherDataset = Annotated[Optional[str], typer.Option(
    "--teacher-dataset", help="Data set the teacher was trained on (default: the student's); another "
    "task's for transfer: feature methods only, the classes differ.")]
InitFromTeacher = Annotated[bool, typer.Option(
    "--init-from-teacher", help="Start the student from the teacher's weights (same architecture), "
    "its classifier re-initialised.")]
Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Dotted override, repeatable: method.tau=0.05, train.lr=0.1, pc.weight=2.")]
# A str, not a Path: a Path would turn s3://bucket/x into s3:/bucket/x.
Results = Annotated[str, typer.Option("--results", help=(
    "Results folder or URI (Parquet, Ray's trial folders and checkpoints): a path, or file://, "
    "s3://, gs://, ... (any pyarrow filesystem); every node must reach it."))]
Teachers = Annotated[Path, typer.Option("--teachers", help="Teacher store folder.")]
TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")]
Experiment = Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment name.")]
OptunaStorage = Annotated[Optional[str], typer.Option(
    "--optuna-storage", help="Optuna study database (default: optuna.db beside a SQLite MLflow store, "
    "else in a local --results folder, else in the working directory).")]
Address = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local instance).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Epochs per trial.")]
DataDir = Annotated[Optional[str], typer.Option(
    "--data-dir", help="Where data sets are (default: ~/.cache/pcbench/data).")]
Recipe = Annotated[Optional[str], typer.Option(
    "--recipe", help="Named training recipe: cifar100-crd, imagenet, digits (see README).")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="DDP workers per trial (>1: Ray Train).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the trials and of the Optuna sampler.")]
CpusPerTrial = Annotated[float, typer.Option("--cpus-per-trial", help="CPUs a trial holds.")]
GpusPerTrial = Annotated[float, typer.Option(
    "--gpus-per-trial", help="GPUs a trial holds (fractions share one).")]
Plugins = Annotated[Optional[list[str]], typer.Option(
    "--plugin", help="A file, package folder or module registering your own methods, models, data "
    "sets or recipes (docs/tutorial.md); repeatable.")]


DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Print the plan (budget, first point, every knob as resolved for the pair) "
    "and what is missing; start and write nothing.")]
Json = Annotated[bool, typer.Option("--json", help="With --dry-run: the plan as one JSON list on stdout.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the latest unfinished run of this same command: finished trials are "
    "kept, unfinished ones go on from their checkpoints, the Optuna study where it was.")]
ResumeId = Annotated[Optional[str], typer.Option(
    "--resume-id", help="As --resume, for the unfinished run with this search id.")]


def _resume(resume: bool, resume_id: Optional[str]) -> Optional[str]:
    return resume_id or ("latest" if resume else None)


def _show_plan(entries: list[dict[str, Any]], missing: list[str], as_json: bool) -> None:
    """A dry run's output: the plan on stdout (text or JSON), what is missing on stderr."""
    import json

    from pcbench.api import pair_label
    if as_json:
        typer.echo(json.dumps(entries, indent=1))
    else:
        for e in entries:
            budget = e["budget"]
            line = (f"{pair_label(e)}  {e['method']}: "
                    f"{budget['trials']} trials x {budget['epochs']} epochs")
            if "final" in e:
                line += f", then {len(e['final']['seeds'])} seeds x {e['final']['epochs']} epochs"
            typer.echo(line)
            if "cohort_note" in e:
                typer.echo(f"    searched {e['cohort_note']}")
            for key, spec in e["knobs"].items():
                if spec["type"] == "categorical":
                    domain = "{" + ", ".join(map(str, spec["choices"])) + "}"
                else:
                    domain = (f"{spec['type']} {spec['low']:.4g}..{spec['high']:.4g}"
                              + (" log" if spec["log"] else ""))
                typer.echo(f"    {key:<24} {domain:<52} first {e['first_point'][key]}")
    for line in dict.fromkeys(missing):
        console.print(f"[yellow]missing:[/yellow] {line}", highlight=False, soft_wrap=True)
    console.print("dry run: nothing started, nothing written", highlight=False)


def _call(call, dry_run: bool = False):
    """An API call with the progress display (none for a dry run, which prints the plan)."""
    if dry_run:
        return call(None)
    with showing_progress(console) as display:
        return call(display)


def _show(result, as_json: bool = False) -> None:
    """A dry run's plan, or the lines every command ends with; exit code 1 if trials failed."""
    from pcbench.api import Plan
    if isinstance(result, Plan):
        _show_plan(result.entries, result.missing, as_json)
        return
    if result.diverged:
        console.print(f"[yellow]{result.diverged} of {result.trials} trials diverged[/yellow] "
                      f"(non-finite loss; status 'diverged', never ranked)")
    what = f"benchmark {result.suite} ({result.search_id})" if result.suite else f"search {result.search_id}"
    console.print(f"{what}: {result.trials} trials; MLflow at {result.tracking_uri}, Parquet in "
                  f"{result.results}/trials and /epochs", highlight=False, soft_wrap=True)
    if result.report is not None:
        _show_report(result.report)
    if result.failed:
        console.print(f"[red]{result.failed} of {result.trials} trials failed[/red] "
                      f"(errors above and in MLflow)")
        raise typer.Exit(1)


@app.command()
@user_errors
def methods(
    plugin: Plugins = None,
    names: Annotated[bool, typer.Option("--names", help="Names only, one per line (for scripts).")] = False,
) -> None:
    """List the registered methods and where each comes from (pcbench, or a plug-in); each with a
    teacher but kd and dkd is also <method>+kd."""
    from pcbench import api
    listed = api.methods(plugin or ())
    width = max(len(name) for name, _ in listed)
    typer.echo("\n".join(name if names else f"{name:<{width}}  {origin}" for name, origin in listed))


@app.command()
@user_errors
def models() -> None:
    """List the model zoo: family, parameters, stages (FCFD) and taps."""
    from pcbench import api
    table = Table("model", "family", "parameters", "stages", "taps")
    for info in api.models():
        table.add_row(info.name, info.family, f"{info.params:,}", str(info.stages), ", ".join(info.taps))
    Console().print(table)


@app.command()
@user_errors
def run(
    method: Annotated[str, typer.Option("--method", help="Method to run.")] = "pc",
    dataset: Dataset = None, teacher: Teacher = None, student: Student = None, set_: Sets = None,
    epochs: Epochs = None, workers: Workers = None, seed: Seed = 0, data_dir: DataDir = None,
    recipe: Recipe = None, teacher_dataset: TeacherDataset = None, init_from_teacher: InitFromTeacher = False,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run in this process, without Ray.")] = False,
    results: Results = DEFAULT_RESULTS, teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, experiment: Experiment = None, address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0, gpus_per_trial: GpusPerTrial = 0.0, plugin: Plugins = None,
) -> None:
    """Run one trial of one method with the given settings."""
    from pcbench import api
    _show(_call(lambda progress: api.run(
        method, plugins=plugin or (), dataset=dataset, teacher=teacher, student=student, set=set_ or [],
        epochs=epochs, workers=workers, seed=seed, data_dir=data_dir, recipe=recipe,
        teacher_dataset=teacher_dataset, init_from_teacher=init_from_teacher, ray=not no_ray,
        results=results, teachers=teachers, tracking_uri=tracking_uri, experiment=experiment,
        address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, progress=progress)))


Methods = Annotated[Optional[list[str]], typer.Option("--method", help="Method to search, repeatable.")]
Space = Annotated[Optional[str], typer.Option(
    "--space", help="Search space YAML (default: the bundled search_spaces/<method>.yaml).")]
Samples = Annotated[int, typer.Option("--samples", help="Trials per method.")]
Concurrent = Annotated[int, typer.Option("--concurrent", help="Trials (or cohorts) at once.")]
COHORT_HELP = ("Search trials trained together in one process, sharing the data stream and the "
               "teacher's forward; asked of Optuna a generation at a time and halved at fixed "
               "rungs, so the search is deterministic, and a benchmark's final runs are paired. "
               "Default 4 (1 for a space that searches a knob members share). 1: one trial per "
               "process (ASHA).")


@app.command()
@user_errors
def search(
    method: Methods = None, dataset: Dataset = None, teacher: Teacher = None,
    student: Student = None, set_: Sets = None, space: Space = None, samples: Samples = 8,
    concurrent: Concurrent = 2, epochs: Epochs = None, workers: Workers = None, seed: Seed = 0,
    results: Results = DEFAULT_RESULTS, teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, experiment: Experiment = None, address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0, gpus_per_trial: GpusPerTrial = 0.0,
    optuna_storage: OptunaStorage = None, data_dir: DataDir = None, recipe: Recipe = None,
    dry_run: DryRun = False, as_json: Json = False, resume: Resume = False, resume_id: ResumeId = None,
    cohort: Annotated[Optional[int], typer.Option("--cohort", help=COHORT_HELP)] = None,
    teacher_dataset: TeacherDataset = None, init_from_teacher: InitFromTeacher = False,
    plugin: Plugins = None,
) -> None:
    """Search each method's knobs with Ray Tune + Optuna (TPE), in cohorts (or with ASHA)."""
    from pcbench import api
    _show(_call(lambda progress: api.search(
        method or [], plugins=plugin or (), dataset=dataset, teacher=teacher, student=student,
        set=set_ or [], space=space, samples=samples, concurrent=concurrent, epochs=epochs,
        workers=workers, seed=seed, results=results, teachers=teachers, tracking_uri=tracking_uri,
        experiment=experiment, address=address, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, optuna_storage=optuna_storage, data_dir=data_dir, recipe=recipe,
        resume=_resume(resume, resume_id), cohort=cohort, teacher_dataset=teacher_dataset,
        init_from_teacher=init_from_teacher, dry_run=dry_run, progress=progress), dry_run), as_json)


def _benchmark(suite_path: Path, results, teachers, tracking_uri, address, *, dry_run=False,
               as_json=False, set_=None, **options) -> None:
    from pcbench import api
    _show(_call(lambda progress: api.benchmark(
        suite_path, results=results, teachers=teachers, tracking_uri=tracking_uri, address=address,
        set=set_ or [], dry_run=dry_run, progress=progress, **options), dry_run), as_json)


@app.command()
@user_errors
def benchmark(
    suite: Annotated[str, typer.Argument(
        help="Suite YAML, or the name of a bundled one (demo, cifar100, ...: `pcbench suites`).")],
    data_dir: DataDir = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Search trials per method "
                                                   "(default: the suite's budget).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs per search trial.")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Final runs per method.")] = None,
    final_epochs: Annotated[Optional[int], typer.Option(
        "--final-epochs", help="Epochs per final run.")] = None,
    method: Methods = None, set_: Sets = None,
    pair: Annotated[Optional[list[str]], typer.Option(
        "--pair", help="Only this pair of the suite, as TEACHER->STUDENT; repeatable.")] = None,
    cohort: Annotated[Optional[int], typer.Option("--cohort", help=COHORT_HELP)] = None,
    concurrent: Annotated[Optional[int], typer.Option("--concurrent", help="Trials at once.")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(
        "--cpus-per-trial", help="CPUs a trial holds.")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(
        "--gpus-per-trial", help="GPUs a trial holds (0.25: four trials share a GPU).")] = None,
    results: Results = DEFAULT_RESULTS, teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, address: Address = None, optuna_storage: OptunaStorage = None,
    dry_run: DryRun = False, as_json: Json = False, resume: Resume = False, resume_id: ResumeId = None,
    plugin: Plugins = None,
) -> None:
    """Every method x pair of a suite: the same search budget each, selection on the validation
    split, the winner re-run with several seeds on the full training set, then the report."""
    _benchmark(suite, results, teachers, tracking_uri, address, data_dir=data_dir, samples=samples,
               epochs=epochs, seeds=seeds, final_epochs=final_epochs, methods=method, set_=set_,
               concurrent=concurrent, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
               optuna_storage=optuna_storage, dry_run=dry_run, as_json=as_json,
               resume=_resume(resume, resume_id), pairs=pair, cohort=cohort, plugins=plugin or ())


@app.command()
@user_errors
def demo(
    samples: Annotated[Optional[int], typer.Option("--samples", help="Trials per method.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs per trial.")] = None,
    results: Results = DEFAULT_RESULTS, teachers: Teachers = Path("pcbench-teachers"),
    tracking_uri: TrackingUri = None, address: Address = None,
) -> None:
    """The whole loop on the bundled suite demo.yaml (see `pcbench suites`): ce, kd, pc, ot and
    fcfd on digits, equal budgets, 3 final seeds each, then the leaderboard."""
    _benchmark("demo", results, teachers, tracking_uri, address, samples=samples, epochs=epochs)


@app.command()
@user_errors
def suites() -> None:
    """List the suites shipped with pcbench. `pcbench benchmark NAME` runs one; copy its file to
    make a suite of your own."""
    from pcbench import api
    table = Table("suite", "data set", "methods", "pairs")
    listed = api.suites()
    for name, suite, _ in listed:
        table.add_row(name, suite.dataset, str(len(suite.methods)), str(len(suite.pairs)))
    Console().print(table)
    typer.echo(f"files: {listed[0][2].parent}/<suite>.yaml")


def _show_report(report) -> None:
    """The leaderboard as a table, and the files written."""
    import pandas as pd

    from pcbench.api import pair_label
    for part, reason in report.skipped:
        console.print(f"[yellow]warning:[/yellow] skipped {part} ({reason})", highlight=False, soft_wrap=True)
    table = Table("data set", "pair", "method", "test acc (final runs)", "seeds", "val acc", "trials")
    for row in report.board.itertuples():
        spread = f" ± {100 * row.test_acc_std:.2f}" if row.seeds > 1 else ""
        # a plain search's row has no test accuracy: searches never evaluate the test split
        test = "" if pd.isna(row.test_acc_mean) else f"{100 * row.test_acc_mean:.2f}{spread}"
        seeds = f"{row.seeds_ok}/{row.seeds_planned}" if row.protocol == "final" else ""
        table.add_row(row.dataset, pair_label(row._asdict()), row.method, test, seeds,
                      "" if pd.isna(row.val_acc) else f"{100 * row.val_acc:.2f}", str(row.trials))
    Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in report.paths))


@app.command()
@user_errors
def report(
    results: Results = DEFAULT_RESULTS,
    out: Annotated[Optional[Path], typer.Option("--out", help=(
        "Local report folder (default: <results>/report; ./pcbench-report when --results is a "
        "remote URI such as s3://...)."))] = None,
) -> None:
    """Write leaderboard.parquet, .md, .html and .tex from the results store."""
    from pcbench import api
    _show_report(api.report(results, out))


@teacher_app.command("train")
@user_errors
def teacher_train(
    model: Annotated[str, typer.Option("--model", help="Teacher architecture.")] = "cnn_large",
    dataset: Annotated[str, typer.Option("--dataset", help="Data set.")] = "digits",
    data_dir: DataDir = None, set_: Sets = None, teachers: Teachers = Path("pcbench-teachers"),
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Train in this process.")] = False,
    results: Results = DEFAULT_RESULTS, address: Address = None,
    cpus_per_trial: CpusPerTrial = 1.0, gpus_per_trial: GpusPerTrial = 0.0, plugin: Plugins = None,
) -> None:
    """Train a teacher with its data set's standard recipe (on Ray) and store it, replacing a
    stored one."""
    from pcbench import api
    record = api.train_teacher(
        model, dataset, data_dir=data_dir, set=set_ or [], teachers=teachers, ray=not no_ray,
        results=results, address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
        plugins=plugin or (), on_start=lambda config: console.print(
            f"training {model} on {dataset}: {config.train.epochs} epochs, "
            f"recipe {config.train.recipe or 'default'}", highlight=False),
        on_epoch=lambda m: console.print(f"epoch {m['epoch']:>3}  train loss {m['train_loss']:.4f}",
                                         highlight=False))
    console.print(f"{record.model} on {record.dataset}: test acc {100 * record.test_acc:.2f}%, "
                  f"sha256 {record.sha256[:12]}, {record.path}")


@teacher_app.command("import")
@user_errors
def teacher_import(
    checkpoint: Annotated[Path, typer.Argument(
        help="RepDistiller / mdistiller checkpoint ({'model': state_dict}).")],
    model: Annotated[str, typer.Option("--model", help="Its architecture (see `pcbench models`).")],
    dataset: Annotated[str, typer.Option("--dataset", help="The data set it was trained on.")],
    data_dir: DataDir = None, teachers: Teachers = Path("pcbench-teachers"), plugin: Plugins = None,
) -> None:
    """Import a trained teacher: loaded strictly into the architecture, its test accuracy
    measured, then stored with its sha256."""
    from pcbench import api
    record = api.import_teacher(checkpoint, model, dataset, data_dir=data_dir, teachers=teachers,
                                plugins=plugin or ())
    console.print(f"imported {record.model} for {record.dataset}: test acc {100 * record.test_acc:.2f}%, "
                  f"sha256 {record.sha256[:12]}, {record.path}")


@teacher_app.command("list")
@user_errors
def teacher_list(teachers: Teachers = Path("pcbench-teachers")) -> None:
    """List the stored teachers."""
    from pcbench import api
    table = Table("model", "data set", "test acc", "recipe", "sha256", "created", "path")
    for r in api.stored_teachers(teachers):
        origin = r.recipe.get("imported_from") or r.recipe.get("recipe") or "default"
        table.add_row(r.model, r.dataset, f"{100 * r.test_acc:.2f}", origin, r.sha256[:12], r.created, r.path)
    Console().print(table)


@app.command()
@user_errors
def ui(
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the tracking store; print each pcbench experiment's runs page."""
    from pcbench import api
    api.ui(tracking_uri, host, port,
           on_start=lambda uri, address: console.print(f"MLflow UI for {uri} at {address}", highlight=False),
           on_experiment=lambda name, url: console.print(f"  {name}: {url}", highlight=False, soft_wrap=True))
