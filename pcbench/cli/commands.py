"""The commands: each parses its options (options.py) and calls one function of the API;
what it prints is in output.py."""

import functools
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import ClickException  # Typer's own (vendored) Click
from typer.core import TyperGroup

from pcbench.api import DEFAULT_RESULTS, DEFAULT_TEACHERS
from pcbench.cli import options as opt
from pcbench.cli.output import console, show, show_report
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


def user_errors(command):
    """A UserError becomes one line on stderr and exit code 2. The first Ctrl-C, SIGTERM or
    SIGHUP stops the whole command: the trials in flight end as KILLED, the local Ray instance
    is shut down, one line says how to resume, and the exit code is 130 (143 for SIGTERM, 129
    for SIGHUP)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        main = threading.current_thread() is threading.main_thread()
        previous = {signum: signal.signal(signum, _terminate) for signum in _stop_signals()} if main else {}
        _stopped_by.clear()
        ray_was_up = _ray_up()  # one this command did not start (a test's, a notebook's) stays up
        try:
            result = command(*args, **kwargs)
            if not ray_was_up:  # stopped now, not at exit: Ray's own exit hook takes a second longer
                _stop_ray()
            return result
        except UserError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Interrupted as stop:
            _stop_ray()
            console.print(f"stopped: {stop.search_id} is unfinished; its finished trials are recorded. "
                          f"Continue it with the same command and --resume (or --resume-id {stop.search_id})",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(_exit_code(stop.exit_code)) from None
        except KeyboardInterrupt as stop:  # before any search had started
            _stop_ray()
            console.print("stopped before anything was recorded", highlight=False)
            raise typer.Exit(_exit_code(143 if isinstance(stop, Terminated) else 130)) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return wrapper


# The signal that stopped the command: Ray turns a KeyboardInterrupt raised while it waits (our
# Terminated among them) into a plain one, so the exception's class cannot tell them apart.
_stopped_by: list[int] = []


def _stop_signals() -> list[int]:
    """SIGTERM (schedulers end jobs so), and SIGHUP (a closed terminal) unless ignored when the
    command started (nohup)."""
    return [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])


def _terminate(signum, frame):
    _stopped_by.append(signum)
    raise Terminated()


def _exit_code(default: int) -> int:
    """128 + the signal, as a shell reports a process it ended: 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + _stopped_by[0] if _stopped_by else default


def _stop_ray() -> None:
    """Shut down a local Ray instance this command started (its trials with it)."""
    if "ray" in sys.modules:  # else nothing started it
        from pcbench.api import stop_ray
        stop_ray()


def _ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _resume(resume: bool, resume_id: Optional[str]) -> Optional[str]:
    return resume_id or ("latest" if resume else None)


def _call(call, dry_run: bool = False):
    """An API call with the progress display (none for a dry run, which prints the plan)."""
    if dry_run:
        return call(None)
    with showing_progress(console) as display:
        return call(display)


@app.command()
@user_errors
def methods(
    plugin: opt.Plugins = None,
    names: Annotated[bool, typer.Option("--names", help="Names only, one per line (for scripts).")] = False,
) -> None:
    """List the registered methods and where each comes from (pcbench, or a plug-in); each with a
    teacher but the logit methods (kd, dkd, dist, nkd, wttm, mlkd) is also <method>+kd, and the logit
    methods and every <method>+kd also take +ls and +ctkd (kd+ls, dkd+ctkd, pc+kd+ls+ctkd)."""
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
    dataset: opt.Dataset = None, teacher: opt.Teacher = None, student: opt.Student = None,
    set_: opt.Sets = None,
    epochs: opt.Epochs = None, workers: opt.Workers = None, seed: opt.Seed = 0, data_dir: opt.DataDir = None,
    recipe: opt.Recipe = None, teacher_dataset: opt.TeacherDataset = None,
    init_from_teacher: opt.InitFromTeacher = False,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run in this process, without Ray.")] = False,
    results: opt.Results = DEFAULT_RESULTS, teachers: opt.Teachers = DEFAULT_TEACHERS,
    tracking_uri: opt.TrackingUri = None, experiment: opt.Experiment = None, address: opt.Address = None,
    cpus_per_trial: opt.CpusPerTrial = 1.0, gpus_per_trial: opt.GpusPerTrial = 0.0,
    plugin: opt.Plugins = None,
) -> None:
    """Run one trial of one method with the given settings."""
    from pcbench import api
    show(_call(lambda progress: api.run(
        method, plugins=plugin or (), dataset=dataset, teacher=teacher, student=student, set=set_ or [],
        epochs=epochs, workers=workers, seed=seed, data_dir=data_dir, recipe=recipe,
        teacher_dataset=teacher_dataset, init_from_teacher=init_from_teacher, ray=not no_ray,
        results=results, teachers=teachers, tracking_uri=tracking_uri, experiment=experiment,
        address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, progress=progress)))


@app.command()
@user_errors
def search(
    method: opt.Methods = None, dataset: opt.Dataset = None, teacher: opt.Teacher = None,
    student: opt.Student = None, set_: opt.Sets = None, space: opt.Space = None, samples: opt.Samples = 8,
    concurrent: opt.Concurrent = 2, epochs: opt.Epochs = None, workers: opt.Workers = None,
    seed: opt.Seed = 0,
    results: opt.Results = DEFAULT_RESULTS, teachers: opt.Teachers = DEFAULT_TEACHERS,
    tracking_uri: opt.TrackingUri = None, experiment: opt.Experiment = None, address: opt.Address = None,
    cpus_per_trial: opt.CpusPerTrial = 1.0, gpus_per_trial: opt.GpusPerTrial = 0.0,
    optuna_storage: opt.OptunaStorage = None, data_dir: opt.DataDir = None, recipe: opt.Recipe = None,
    dry_run: opt.DryRun = False, as_json: opt.Json = False, resume: opt.Resume = False,
    resume_id: opt.ResumeId = None,
    cohort: opt.Cohort = None,
    teacher_dataset: opt.TeacherDataset = None, init_from_teacher: opt.InitFromTeacher = False,
    plugin: opt.Plugins = None,
) -> None:
    """Search each method's knobs with Ray Tune + Optuna (TPE), in cohorts (or with ASHA)."""
    from pcbench import api
    show(_call(lambda progress: api.search(
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
    show(_call(lambda progress: api.benchmark(
        suite_path, results=results, teachers=teachers, tracking_uri=tracking_uri, address=address,
        set=set_ or [], dry_run=dry_run, progress=progress, **options), dry_run), as_json)


@app.command()
@user_errors
def benchmark(
    suite: Annotated[str, typer.Argument(
        help="Suite YAML, or the name of a bundled one (demo, cifar100, ...: `pcbench suites`).")],
    data_dir: opt.DataDir = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Search trials per method "
                                                   "(default: the suite's budget).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs per search trial.")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Final runs per method.")] = None,
    final_epochs: Annotated[Optional[int], typer.Option(
        "--final-epochs", help="Epochs per final run.")] = None,
    method: opt.Methods = None, set_: opt.Sets = None,
    pair: Annotated[Optional[list[str]], typer.Option(
        "--pair", help="Only this pair of the suite, as TEACHER->STUDENT; repeatable.")] = None,
    cohort: opt.Cohort = None,
    concurrent: Annotated[Optional[int], typer.Option("--concurrent", help="Trials at once.")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(
        "--cpus-per-trial", help="CPUs a trial holds.")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(
        "--gpus-per-trial", help="GPUs a trial holds (0.25: four trials share a GPU).")] = None,
    results: opt.Results = DEFAULT_RESULTS, teachers: opt.Teachers = DEFAULT_TEACHERS,
    tracking_uri: opt.TrackingUri = None, address: opt.Address = None,
    optuna_storage: opt.OptunaStorage = None,
    dry_run: opt.DryRun = False, as_json: opt.Json = False, resume: opt.Resume = False,
    resume_id: opt.ResumeId = None,
    plugin: opt.Plugins = None,
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
    results: opt.Results = DEFAULT_RESULTS, teachers: opt.Teachers = DEFAULT_TEACHERS,
    tracking_uri: opt.TrackingUri = None, address: opt.Address = None,
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


@app.command()
@user_errors
def report(
    results: opt.Results = DEFAULT_RESULTS,
    out: Annotated[Optional[Path], typer.Option("--out", help=(
        "Local report folder (default: <results>/report; ./pcbench-report when --results is a "
        "remote URI such as s3://...)."))] = None,
) -> None:
    """Write leaderboard.parquet, .md, .html and .tex from the results store."""
    from pcbench import api
    show_report(api.report(results, out))


@teacher_app.command("train")
@user_errors
def teacher_train(
    model: Annotated[str, typer.Option("--model", help="Teacher architecture.")] = "cnn_large",
    dataset: Annotated[str, typer.Option("--dataset", help="Data set.")] = "digits",
    data_dir: opt.DataDir = None, set_: opt.Sets = None, teachers: opt.Teachers = DEFAULT_TEACHERS,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Train in this process.")] = False,
    results: opt.Results = DEFAULT_RESULTS, address: opt.Address = None,
    cpus_per_trial: opt.CpusPerTrial = 1.0, gpus_per_trial: opt.GpusPerTrial = 0.0,
    plugin: opt.Plugins = None,
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
    data_dir: opt.DataDir = None, teachers: opt.Teachers = DEFAULT_TEACHERS, plugin: opt.Plugins = None,
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
def teacher_list(teachers: opt.Teachers = DEFAULT_TEACHERS) -> None:
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
    tracking_uri: opt.TrackingUri = None,
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (loopback unless "
                                                     "--auth or --insecure).")] = "127.0.0.1",
    auth: Annotated[bool, typer.Option(
        "--auth", help="A login (MLflow's basic auth): the admin's from MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD; needs mlflow[auth].")] = False,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow a host other than loopback without --auth: no login, so anyone who "
        "reaches it can read and change every run.")] = False,
) -> None:
    """Start the MLflow UI on the tracking store; print each pcbench experiment's runs page."""
    from pcbench import api
    api.ui(tracking_uri, host, port, insecure=insecure, auth=auth,
           on_start=lambda uri, address: console.print(f"MLflow UI for {uri} at {address}", highlight=False),
           on_experiment=lambda name, url: console.print(f"  {name}: {url}", highlight=False, soft_wrap=True),
           on_warning=lambda line: console.print(f"[yellow]warning:[/yellow] {line}", highlight=False,
                                                 soft_wrap=True))
