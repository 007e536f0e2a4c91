"""Teacher store: one trained teacher per (data set, architecture), as a RepDistiller-format
checkpoint plus a JSON record of its sha256, accuracy and recipe. Trials record the hash."""

import hashlib
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from pcbench.atomic import write_atomic
from pcbench.config import TrialConfig
from pcbench.engine import MODEL_FILE, LocalReporter, train_trial
from pcbench.errors import UserError

# The fixed recipe a teacher is trained with on first use (digits: a few seconds on a CPU).
RECIPE = {"epochs": 30, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
RECIPE_SEED = 0


class TeacherRecord(BaseModel):
    model: str
    dataset: str
    path: str
    sha256: str
    val_acc: float
    test_acc: float
    recipe: dict
    created: str


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        return TeacherRecord.model_validate_json(record.read_text())

    def records(self) -> list[TeacherRecord]:
        return [TeacherRecord.model_validate_json(p.read_text())
                for p in sorted(self.root.glob("*/*.json"))]

    def train(self, model: str, dataset: str, on_epoch=None) -> TeacherRecord:
        """Train `model` on `dataset` with the fixed recipe (a `ce` trial) and store it."""
        config = TrialConfig.parse({"data": {"name": dataset}, "student": model, "method": "ce",
                                    "train": RECIPE, "seed": RECIPE_SEED})
        weights, record_path = self._paths(model, dataset)
        weights.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=weights.parent) as scratch:
            reporter = LocalReporter(scratch, on_epoch=on_epoch)
            final = train_trial(config, reporter)
            write_atomic(weights, lambda p: shutil.copyfile(Path(reporter.checkpoint_dir) / MODEL_FILE, p))
        record = TeacherRecord(
            model=model, dataset=dataset, path=str(weights), sha256=sha256_of(weights),
            val_acc=final["val_acc"], test_acc=final["test_acc"], recipe=RECIPE,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_atomic(record_path, lambda p: p.write_text(record.model_dump_json(indent=2)))
        return record

    def ensure(self, model: str, dataset: str, on_epoch=None) -> TeacherRecord:
        """The stored teacher, checked against its hash; trained first if there is none."""
        record = self.get(model, dataset)
        if record is None:
            return self.train(model, dataset, on_epoch)
        if sha256_of(record.path) != record.sha256:
            raise UserError(f"teacher {record.path} does not match its recorded sha256; "
                            f"retrain it with `pcbench teacher train --model {model} --dataset {dataset}`")
        return record


def attach(config: TrialConfig, record: TeacherRecord) -> TrialConfig:
    return config.model_copy(update={"teacher_weights": record.path, "teacher_sha256": record.sha256})
