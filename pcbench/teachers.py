"""Teacher store: one trained teacher per (data set, architecture), as a RepDistiller-format
checkpoint plus a JSON record of its sha256, accuracy and recipe. Trials record the hash."""

import argparse
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from pydantic import BaseModel

from pcbench.atomic import sha256_of, write_atomic
from pcbench.config import TrialConfig, build_config
from pcbench.data import FOLDER_PREFIX
from pcbench.engine import MODEL_FILE, LocalReporter, train_trial
from pcbench.errors import UserError
from pcbench.methods import get_method
from pcbench.recipes import with_recipe

# Trains a teacher's trial and returns (its last metrics, the folder of its final checkpoint).
Runner = Callable[[TrialConfig], tuple[dict, str]]

# The recipe a teacher is trained with: the data set's published one, on all the training
# data (as RepDistiller's teachers are); digits, the embedded default, a few seconds on a CPU.
DIGITS_RECIPE = {"epochs": 30, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
TEACHER_RECIPES = {"cifar10": "cifar100-crd", "cifar100": "cifar100-crd", "imagenet": "imagenet"}
RECIPE_SEED = 0


def teacher_config(model: str, dataset: str, data_dir: str | None = None,
                   overrides: dict | None = None, plugins: list[str] = ()) -> TrialConfig:
    """The `ce` trial that trains a teacher (`plugins`: where its model or data set come from)."""
    base = {"data": {"name": dataset, "root": data_dir}, "student": model, "method": "ce",
            "seed": RECIPE_SEED, "plugins": list(plugins)}
    # image folders of your own (folder:NAME) train as ImageNet's folders do
    recipe = TEACHER_RECIPES.get("imagenet" if dataset.startswith(FOLDER_PREFIX) else dataset)
    if recipe is not None:
        base = with_recipe(base, recipe, overrides)
        base["data"]["val_fraction"] = 0.0
    else:
        base["train"] = dict(DIGITS_RECIPE)
    return build_config(base, overrides or {})


class TeacherRecord(BaseModel):
    model: str
    dataset: str
    path: str  # stored relative to the store; read back as the store's own file
    sha256: str
    val_acc: float | None  # None when the teacher trained on all the training data
    test_acc: float
    recipe: dict  # the trial's train settings, or where an imported checkpoint came from
    created: str


class TeacherStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def _paths(self, model: str, dataset: str) -> tuple[Path, Path]:
        base = self.root / dataset / model
        return base.with_suffix(".pt"), base.with_suffix(".json")

    def get(self, model: str, dataset: str) -> TeacherRecord | None:
        weights, record = self._paths(model, dataset)
        if not (weights.exists() and record.exists()):
            return None
        return self._read(record)

    def records(self) -> list[TeacherRecord]:
        return [self._read(p) for p in sorted(self.root.glob("*/*.json"))]

    def _read(self, path: Path) -> TeacherRecord:
        """A record as stored (its `path` relative to the store), with `path` made this store's
        own file: a copied or moved store hashes and loads its own weights."""
        record = _read_record(path)
        return record.model_copy(update={"path": str(path.with_suffix(".pt"))})

    def train(self, config: TrialConfig, runner: Runner | None = None, on_epoch=None) -> TeacherRecord:
        """Train `config` (see `teacher_config`) and store its student as the teacher. Without
        a runner it trains in this process."""
        model, dataset = config.student, config.data.name
        weights, _ = self._paths(model, dataset)
        weights.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=weights.parent) as scratch:
            if runner is None:
                reporter = LocalReporter(scratch, on_epoch=on_epoch)
                final, checkpoint = train_trial(config, reporter), reporter.checkpoint_dir
            else:
                final, checkpoint = runner(config)
            write_atomic(weights, lambda p: shutil.copyfile(Path(checkpoint) / MODEL_FILE, p))
        return self._record(model, dataset, final.get("val_acc"), final["test_acc"],
                            config.train.model_dump(mode="json"))

    def import_checkpoint(self, source: str | Path, model: str, dataset: str, evaluate) -> TeacherRecord:
        """Store a RepDistiller / mdistiller checkpoint ({'model': state_dict}; a bare state
        dict or DataParallel's 'module.' keys also load) after loading it strictly into `model`
        and measuring its test accuracy with `evaluate(model_name, state_dict) -> accuracy`."""
        try:  # RepDistiller's checkpoints may also hold its argparse options
            with torch.serialization.safe_globals([argparse.Namespace]):
                loaded = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever the file is, it is not a checkpoint
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot read {source} as a PyTorch checkpoint ({reason}); "
                            f"pass a file saved with torch.save") from None
        state = loaded.get("model", loaded.get("state_dict", loaded)) if isinstance(loaded, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{source} holds no state_dict (expected {{'model': state_dict}})")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        non_finite = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if non_finite:
            raise UserError(f"{source}: {non_finite[0]} holds NaN or infinite values; this checkpoint cannot "
                            f"teach (its training diverged); import another")
        accuracy = evaluate(model, state)
        weights, _ = self._paths(model, dataset)
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(weights, lambda p: torch.save({"model": state}, p))
        origin = {"imported_from": str(Path(source).resolve()), "source_sha256": sha256_of(source)}
        return self._record(model, dataset, None, accuracy, origin)

    def _record(self, model, dataset, val_acc, test_acc, recipe) -> TeacherRecord:
        weights, record_path = self._paths(model, dataset)
        record = TeacherRecord(
            model=model, dataset=dataset, path=weights.relative_to(self.root).as_posix(),
            sha256=sha256_of(weights), val_acc=val_acc, test_acc=test_acc, recipe=recipe,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_atomic(record_path, lambda p: p.write_text(record.model_dump_json(indent=2)))
        return record.model_copy(update={"path": str(weights)})

    def ensure(self, model: str, dataset: str, runner: Runner | None = None,
               data_dir: str | None = None, plugins: list[str] = ()) -> TeacherRecord:
        """The stored teacher, checked against its hash; trained first (by `runner`, as
        `train`; its data under `data_dir`, its model or data from `plugins`) if there is none."""
        record = self.get(model, dataset)
        if record is None:
            weights, _ = self._paths(model, dataset)
            weights.parent.mkdir(parents=True, exist_ok=True)
            # two commands started at once on a new store: the second waits, then finds it
            with FileLock(f"{weights}.lock"):
                record = self.get(model, dataset)
                if record is None:
                    return self.train(teacher_config(model, dataset, data_dir, plugins=plugins), runner)
        if sha256_of(record.path) != record.sha256:
            raise UserError(f"teacher {record.path} does not match its recorded sha256; "
                            f"retrain it with `pcbench teacher train --model {model} --dataset {dataset}`")
        return record


def needs_teacher(config: TrialConfig) -> bool:
    """Whether a trial cannot run without the stored teacher: its method distils from it, or
    its student starts from the teacher's weights."""
    return get_method(config.method.name).needs_teacher or config.train.init_from_teacher


def attach(config: TrialConfig, record: TeacherRecord) -> TrialConfig:
    return config.model_copy(update={"teacher_weights": record.path, "teacher_sha256": record.sha256,
                                     "teacher_test_acc": record.test_acc})


def _read_record(path: Path) -> TeacherRecord:
    try:
        return TeacherRecord.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        raise UserError(f"teacher record {path} is unreadable ({type(error).__name__}); delete it and "
                        f"its .pt, then train or import the teacher again") from None
