"""The options several commands share, declared once (Typer reads them from the annotations)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

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
Cohort = Annotated[Optional[int], typer.Option("--cohort", help=COHORT_HELP)]
