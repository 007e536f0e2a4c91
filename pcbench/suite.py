"""Benchmark suites (suites/*.yaml, shipped inside the package): which methods on which
teacher -> student pairs of one data set, the search budget every method gets, and how many
seeds re-run each winner."""

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pcbench import bundled
from pcbench.config import describe, load_yaml
from pcbench.errors import UserError

SUITES_DIR = bundled("suites")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Strict):
    """A teacher -> student pair, and what it does differently from the suite's other pairs."""

    teacher: str
    student: str
    # The student's data set and the teacher's (None: the suite's). A pair on the teacher's own
    # task in a transfer suite names its dataset: the teacher's then defaults to it as well.
    dataset: str | None = None
    teacher_dataset: str | None = None
    # This pair's methods (None: the suite's). The board compares methods within a pair, so a
    # setting with baselines of its own (fine-tuning's l2sp and delta) lists them here.
    methods: list[str] | None = Field(None, min_length=1)
    # Dotted overrides for this pair only, usually scoped to a method (`fcfd.weight: 0.02`):
    # the authors' setting for the pair, which becomes the first point of that method's search.
    set: dict[str, Any] = {}
    # How --pair names it (default TEACHER->STUDENT, as TEACHER(ITS DATA SET)->STUDENT@DATA SET
    # where the pair names them)
    name: str | None = None

    @property
    def label(self) -> str:
        teacher = f"{self.teacher}({self.teacher_dataset})" if self.teacher_dataset else self.teacher
        return self.name or f"{teacher}->{self.student}" + (f"@{self.dataset}" if self.dataset else "")


class Budget(_Strict):
    """The same for every method: trials searched, and epochs each search trial trains."""

    trials: PositiveInt
    epochs: PositiveInt | None = None  # None: the recipe's


class Suite(_Strict):
    name: str
    dataset: str
    # The data set the teachers were trained on, where it is another task (transfer); None: `dataset`
    teacher_dataset: str | None = None
    # a named profile (recipes.py, or a plug-in's: checked once the suite's plug-ins are loaded)
    recipe: str | None = None  # a named profile (recipes.py); the trial defaults otherwise
    pairs: list[Pair] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)  # every pair's, but a pair that lists its own
    budget: Budget
    seeds: PositiveInt = 3  # final runs of each method's selected configuration
    final_epochs: PositiveInt | None = None  # None: as the search trials
    concurrent: PositiveInt = 2
    cohort: PositiveInt | None = None  # search trials trained together (--cohort); None: the default
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    seed: int = 0  # of the search (Optuna's sampler) and the first final run
    set: dict[str, Any] = {}  # dotted overrides for every pair, as --set
    # files (relative to the suite's folder), package folders or modules of your own methods,
    # models, data sets or recipes, as --plugin
    plugins: list[str] = []

    @model_validator(mode="after")
    def _each_once(self) -> "Suite":
        """A pair or method listed twice would get twice the budget, and its "seeds" would be
        copies of one another."""
        pairs = [p.label for p in self.pairs]
        lists = [("pair", pairs, "; give one of them a `name:` if they differ"), ("method", self.methods, "")]
        lists += [(f"method of pair {p.label}", p.methods, "") for p in self.pairs if p.methods]
        for what, names, fix in lists:
            if twice := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"{what} {', '.join(twice)} listed twice; list each once{fix}")
        return self

    def all_methods(self) -> list[str]:
        """The suite's methods, then those only some pairs list."""
        return list(dict.fromkeys([*self.methods, *(m for p in self.pairs for m in p.methods or ())]))

    def plugin_specs(self, path: str | Path) -> list[str]:
        """The suite's plug-ins as trials record them (files resolved from the suite's folder)."""
        from pcbench.plugins import resolve
        return [resolve(spec, Path(path).resolve().parent) for spec in self.plugins]

    def final_seeds(self, count: int | None = None) -> list[int]:
        """Seeds of the final runs: never the search's own, so no final run repeats the very
        initialisation that won the selection."""
        return [self.seed + 1 + i for i in range(self.seeds if count is None else count)]


def load_suite(path: str | Path) -> Suite:
    try:
        return Suite.model_validate(load_yaml(str(path)))
    except ValidationError as error:
        raise UserError(f"{path}: {describe(error)}; fix the suite file") from None


def bundled_suites() -> dict[str, Path]:
    """The suites shipped with pcbench, by file name (demo, cifar100, ...), in name order."""
    return dict(sorted((path.stem, path) for path in SUITES_DIR.glob("*.yaml")))
