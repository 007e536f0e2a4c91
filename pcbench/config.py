"""Typed trial configuration. One `TrialConfig` describes one trial; YAML files and dotted
`--set key=value` overrides build it, and every user error becomes a one-line `UserError`."""

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pcbench.data import dataset_names, get_dataset, is_dataset
from pcbench.errors import UserError
from pcbench.methods import KD_SUFFIX, MethodConfig, base_method, get_method, is_method
from pcbench.methods.base import KD_TERM_KNOBS, refuse_bool_numbers
from pcbench.models import PREACT, model_names, stage_taps, tap_names
from pcbench.models.roles import common_stages
from pcbench.plugins import load as load_plugins

MAX_SEED = 2**31 - 1  # what every seeded library here accepts (numpy's RandomState: < 2**32)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no lr=.inf, no tau=.nan

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_numbers(cls, value, info)


class DataConfig(_Section):
    name: str = "digits"
    root: str | None = None  # --data-dir; None: ~/.cache/pcbench/data (digits ignores it)
    # Share of the training data held out for selection, carved with split_seed; None: the
    # data set's default (5,000 images on CIFAR). 0: train on all of it (the final seed runs).
    val_fraction: float | None = Field(None, ge=0.0, lt=0.5)
    split_seed: int = 0  # fixed across trials: every trial is selected on the same split
    batch_size: PositiveInt = 64  # the global batch: DDP workers split it
    augment: bool = True
    loader_workers: NonNegativeInt = 8  # image folders only: DataLoader processes per worker

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if not is_dataset(name):
            raise ValueError(f"unknown data set '{name}'; choose one of {', '.join(dataset_names())}, "
                             f"or folder:NAME for image folders of your own")
        return name


class TrainConfig(_Section):
    recipe: str | None = None  # the named profile these settings came from (see recipes.py)
    epochs: PositiveInt = 20
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: list[PositiveInt] = []  # step: multiply the lr by gamma at these epochs
    gamma: PositiveFloat = 0.1
    workers: PositiveInt = 1  # > 1: a DDP trial on Ray Train
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Speed (GPU): bf16 autocast of the networks (losses stay float32), channels_last memory
    # format, torch.compile of the tapped networks ("reduce-overhead" adds CUDA graphs, which
    # is what small CIFAR batches need: their steps are bound by kernel launches; CUDA only).
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    # Every epoch, CKA and rank agreement between teacher and student (diagnostics.py); a
    # measurement only: it changes nothing the trial trains, so it is not part of its hash.
    diagnostics: bool = True
    # Evaluate the test split at the last epoch. Search trials never do (the driver turns it
    # off): only a benchmark's final runs and single runs report test accuracy.
    report_test: bool = True
    # Start the student from the teacher's weights (same architecture), its classifier
    # re-initialised: the transfer-learning baseline, and a start for any method.
    init_from_teacher: bool = False


class TrialConfig(_Section):
    data: DataConfig = DataConfig()
    teacher: str = "cnn_large"
    student: str = "cnn_small"
    # The data set the teacher was trained on, when not the student's (transfer from another
    # task): it sees the student's images, and its classes are not the student's.
    teacher_dataset: str | None = None
    method: SerializeAsAny[MethodConfig]
    train: TrainConfig = TrainConfig()
    seed: int = Field(0, ge=0, le=MAX_SEED)  # numpy's and Optuna's samplers take 32-bit seeds
    # The plug-ins that define this trial's method, model, data set or recipe (files as
    # absolute paths, or module names): imported before the rest is read, in every process.
    plugins: list[str] = []
    # Resolved by the driver from the teacher store; not part of what the trial *is*.
    teacher_weights: str | None = None
    teacher_sha256: str | None = None
    teacher_test_acc: float | None = None  # as its store record says (0..1)

    @field_validator("teacher", "student")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in model_names():
            raise ValueError(f"unknown model '{name}'; choose one of {', '.join(model_names())}")
        return name

    @field_validator("teacher_dataset")
    @classmethod
    def _known_teacher_dataset(cls, name: str | None) -> str | None:
        if name is not None and not is_dataset(name):
            raise ValueError(f"unknown data set '{name}'; choose one of {', '.join(dataset_names())}, "
                             f"or folder:NAME for image folders of your own")
        return name

    @property
    def teacher_data(self) -> str:
        """The data set the teacher was trained on."""
        return self.teacher_dataset or self.data.name

    @property
    def student_init(self) -> str:
        """How the student starts: "scratch", or "teacher" (its weights but the classifier)."""
        return "teacher" if self.train.init_from_teacher else "scratch"

    @property
    def transfer(self) -> bool:
        """Whether the teacher comes from another task (its classes are not the student's)."""
        return self.teacher_data != self.data.name

    @model_validator(mode="after")
    def _transfer_possible(self) -> "TrialConfig":
        if self.teacher_dataset == self.data.name:
            self.teacher_dataset = None  # one spelling of "the student's", one hash
        method = get_method(self.method.name)
        if self.train.init_from_teacher and self.teacher != self.student:
            raise ValueError(f"train.init_from_teacher copies the teacher's weights into the student, "
                             f"but {self.teacher} and {self.student} differ; use one architecture")
        if getattr(method, "starts_from_teacher", False) and not self.train.init_from_teacher:
            raise ValueError(f"{self.method.name} regularises the student towards its starting point, the "
                             f"teacher's weights, so the student must start from them; set "
                             f"train.init_from_teacher=true with the teacher's architecture")
        if not self.transfer:
            return self
        if get_dataset(self.teacher_data).num_classes is None:
            raise ValueError(f"a teacher of {self.teacher_data} cannot teach another task: that data set "
                             f"counts its classes from its own folders, which the student's data are not; "
                             f"register it as a data set of your own (a plug-in) to name its classes")
        teacher_shape = get_dataset(self.teacher_data).input_shape
        student_shape = get_dataset(self.data.name).input_shape
        if teacher_shape != student_shape:
            raise ValueError(f"the teacher's data set {self.teacher_data} has images of "
                             f"{'x'.join(map(str, teacher_shape))} and the student's {self.data.name} of "
                             f"{'x'.join(map(str, student_shape))}; pick data sets of one image shape")
        if method.reads_teacher_logits:
            raise ValueError(f"{self.method.name} compares the teacher's logits with the student's, but a "
                             f"teacher of {self.teacher_data} has other classes than {self.data.name}; use "
                             f"a feature method (without +kd), or the student's own data set for the teacher")
        return self

    @model_validator(mode="after")
    def _taps_resolved(self) -> "TrialConfig":
        """Layer roles become the pair's concrete tap names, and every tap must exist."""
        method = get_method(self.method.name)
        roles = ("student", "teacher") if method.needs_teacher else ("student",)
        stages = {role: stage_taps(getattr(self, role)) for role in roles}
        if method.same_stages and len(stages["student"]) != len(stages["teacher"]):
            raise ValueError(f"{method.name} pairs stage with stage: teacher {self.teacher} has "
                             f"{len(stages['teacher'])} stages and student {self.student} "
                             f"{len(stages['student'])}; choose a pair with equal stage counts")
        if self.train.epochs < method.min_epochs:
            raise ValueError(f"{method.name} trains an initialisation stage before distilling, so it "
                             f"needs at least {method.min_epochs} epochs, not {self.train.epochs}; "
                             f"raise train.epochs")
        per_rank = self.data.batch_size // self.train.workers
        if per_rank < method.min_batch:
            raise ValueError(f"{method.name} needs at least {method.min_batch} samples per worker's "
                             f"batch, and data.batch_size={self.data.batch_size} over "
                             f"train.workers={self.train.workers} gives {per_rank}; raise "
                             f"data.batch_size or use fewer workers")
        self.method = method.resolved(self.method, common_stages(*stages.values()))
        for role in roles:
            model = getattr(self, role)
            valid = tap_names(model)
            for tap in sorted(method.taps(self.method, stages[role])):
                if tap == "logits" and self.transfer:
                    raise ValueError(f"{method.name} reads the logits, but a teacher of {self.teacher_data} "
                                     f"has other classes than {self.data.name}; choose a feature layer")
                if tap.removesuffix(PREACT) not in valid:
                    raise ValueError(f"tap '{tap}' does not exist in {role} {model}; "
                                     f"valid taps: {', '.join(valid)} or a layer role "
                                     f"(last_stage, stage[-2], all_stages, middle_stage)")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "TrialConfig":
        """Validate a plain dict (as read from YAML or received by a Ray worker)."""
        data = dict(data)
        load_plugins(data.get("plugins") or [])
        method = data.get("method", "ce")
        if isinstance(method, MethodConfig):
            method = method.model_dump()
        if not isinstance(method, (str, dict)):
            raise UserError(f"method: expected a method name, got {method!r}; "
                            f"write --method NAME or --set method.KNOB=VALUE")
        method = {"name": method} if isinstance(method, str) else dict(method)
        config_class = get_method(str(method.get("name"))).Config
        try:
            data["method"] = config_class.model_validate(method)
        except ValidationError as error:
            raise UserError(describe(error, "method", config_class)) from None
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise UserError(describe(error)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    @property
    def hash(self) -> str:
        """Identifies the configuration: the same for every seed and teacher copy."""
        # Where the files are and how they are read do not change what the trial is.
        body = self.model_dump(mode="json", exclude={"seed": True, "teacher_weights": True, "plugins": True,
                                                     "teacher_sha256": True, "teacher_test_acc": True,
                                                     "data": {"root", "loader_workers"},
                                                     "train": {"diagnostics", "report_test"}})
        # settings added later count only when used, so earlier configurations keep their hash
        if body["teacher_dataset"] is None:
            del body["teacher_dataset"]
        if not body["train"]["init_from_teacher"]:
            del body["train"]["init_from_teacher"]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def describe(error: ValidationError, prefix: str = "", config_class: type | None = None) -> str:
    """The first validation problem as one line that names the fix."""
    first = error.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
    if first["type"] == "extra_forbidden" and config_class is not None:
        knobs = ", ".join(k for k in config_class.model_fields if k != "name")
        name = config_class.model_fields["name"].default
        hint = (f" (the KD term is the variant's: --method {name}{KD_SUFFIX})"
                if first["loc"][-1] in KD_TERM_KNOBS and is_method(name + KD_SUFFIX) else "")
        return f"{loc}: not a knob of method '{name}'{hint}; its knobs are: {knobs}"
    if first["type"] == "extra_forbidden":
        return f"{loc}: unknown setting; check the spelling of the key"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    return f"{loc}: {message} (got {first['input']!r}); set a valid value with --set {loc}=..."


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if isinstance(child, str) and part == "method":  # "method: pc" written as a bare name
            child = {"name": child}
        if child is not None and not isinstance(child, dict):
            section = ".".join(parents[:depth + 1])
            raise UserError(f"--set {key}: {section} is a single value, not a section; "
                            f"write --set {section}=VALUE")
        node[part] = child = dict(child or {})
        node = child
    node[leaf] = value


def build_config(base: dict[str, Any], overrides: dict[str, Any]) -> TrialConfig:
    """Apply dotted overrides to a base dict and validate. A key may be scoped to one method
    (`pc.tau=0.05`): it applies only when the trial's method is that one or its `+kd` variant
    (`pc+kd.w_kd=0.5`: the variant only), and is ignored otherwise. No override renames the
    method: that is what --method (or a suite's `methods:`) says."""
    tree = json.loads(json.dumps(base))
    load_plugins(tree.get("plugins") or [])  # before a scoped key can name a plug-in's method
    method = tree.get("method", "ce")
    method_name = method if isinstance(method, str) else method.get("name")
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if key == "method" or (rest == "name" and (head == "method" or is_method(head))):
            raise UserError(f"--set {key}: the method is chosen by --method (or a suite's methods:), "
                            f"not by --set; drop it and name the method there")
        if rest and head != "method" and is_method(head):
            if head not in (method_name, base_method(str(method_name))):
                continue
            key = f"method.{rest}"
        set_dotted(tree, key, value)
    return TrialConfig.parse(tree)


MAX_YAML_BYTES = 1 << 20  # a suite or space file is a few kilobytes
MAX_YAML_ALIASES = 100  # YAML aliases can expand exponentially ("billion laughs")


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise UserError(f"{path} is over {MAX_YAML_BYTES >> 20} MiB; a suite or space file is "
                            f"a few kilobytes of YAML")
        text = raw.decode("utf-8")
        if sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)) > MAX_YAML_ALIASES:
            raise UserError(f"{path} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); write "
                            f"the values out")
        data = yaml.safe_load(text) or {}
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8); pass a YAML file") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping at the top level")
    return data

