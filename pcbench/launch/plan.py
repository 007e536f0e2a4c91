"""What the driver asks a backend to run, and what a backend reports back. No Ray import: the
local backend (local.py) and the Ray backend (search.py) take the same plan and call the same
listeners."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pcbench.config import TrialConfig

if TYPE_CHECKING:  # the driver resolves a space; a backend only reads it
    from pcbench.spaces import SearchSpace

SEARCH, FINAL, RUN = "search", "final", "run"


@dataclass(frozen=True)
class Stage:
    """What a plan's trials are for; every trial event carries it, so whoever records a trial
    knows its stage without being told out of band."""

    phase: str  # SEARCH (a method's search), FINAL (a benchmark's seed re-runs) or RUN (one trial)
    selected_trial: str | None = None  # FINAL: the search trial whose configuration is re-run
    gpus_per_trial: float = 0.0  # what each trial holds: its GPU-hours are train time x this
    cohort: int = 1  # trials trained in lockstep in one process: they share its wall time
    planned_seeds: int = 0  # FINAL: how many seed runs the benchmark planned for this method


@dataclass
class SearchPlan:
    """One method's trials. With a space, a search of `samples` trials; with none, the template
    as it is: once, or once per seed in `seeds` (a benchmark's final runs)."""

    name: str  # unique within the storage folder
    stage: Stage
    template: TrialConfig  # teacher attached, overrides applied
    space: "SearchSpace | None"
    samples: int
    concurrent: int
    seed: int
    # Where trials keep their folders and checkpoints: <results>/ray, an absolute folder or a
    # URI (s3://, gs://, ...) that Ray opens with pyarrow on every node.
    storage: str
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # Optuna study in a database (optuna-dashboard, optuna.load_study); a repeated search with
    # the same study name appends to it. None: in memory.
    optuna_storage: str | None = None
    study_name: str | None = None
    seeds: list[int] | None = None
    # > 1: a search trains its trials in cohorts of this many (engine.train_cohort), asked of
    # Optuna a generation at a time and halved synchronously at fixed rungs: deterministic
    cohort: int = 1
    # A benchmark's paired final runs: other methods' selected configurations (and their
    # stages), trained with this one per seed in one cohort, so every method of the pair sees
    # the same data order and augmentation and the teacher's forward is computed once.
    paired: list[tuple[TrialConfig, Stage]] = field(default_factory=list)
    resume: bool = False  # continue the search of this name that a killed driver left

    def members(self) -> list[tuple[TrialConfig, Stage]]:
        """What each trial trains: this template, and with `paired`, the others beside it."""
        return [(self.template, self.stage), *self.paired]

    def runs(self) -> list[dict[str, Any]]:
        """The knobs of each trial of a plan with no space: none, or one seed per trial."""
        return [{"seed": seed} for seed in self.seeds] if self.seeds else [{}]


class TrialListener(Protocol):
    """Told of every trial as it runs, by whichever backend runs it."""

    def trial_started(self, trial_id: str, config: TrialConfig, knobs: dict[str, Any],
                      stage: Stage) -> None: ...

    def trial_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None: ...

    def trial_finished(self, trial_id: str, error: str | None) -> None: ...

    # Optional: `trial_restarted(trial_id, reason)`, told when a trial lost its process and goes
    # on from its last checkpoint (listeners that show progress say so; the others need not).
