"""The method contract: a module built from its config and the models' tap shapes, returning
named, already-weighted loss terms. Plain PyTorch: no Ray, no MLflow.

Variants: a registered method's name followed by plug-ins, in this order,
`<method>[+kd][+ls][+ctkd]` (`pc+kd`, `kd+ls`, `dkd+ctkd`, `pc+kd+ls`, `kd+ls+ctkd`). Each is a
subclass of the name before it, whose config adds the plug-in's knobs, the same for every method:
- `+kd` (with_kd): Hinton's KD term, for a method with a teacher that is not itself KD on the
  logits (`takes_kd`). Knobs: KDTermConfig.
- `+ls` (with_ls) and `+ctkd` (with_ctkd), the logit plug-ins, for a method whose logit terms
  read z^S, z^T and their temperature through the hooks `distill_logits` and `temperature`
  (`logit_hooks`: kd, dkd, dist, nkd, wttm, mlkd, and every `+kd` variant's KD term). `+ls` z-scores
  both logits per sample before those terms (the label term keeps the raw logits), scales
  them by `ls_weight` and starts the temperature knob at LS's 2; `+ctkd` replaces their
  temperature by a learnt one (the temperature knob is then unused, and not searched). Knobs:
  LSTermConfig, CTKDTermConfig.
"""

import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from torch import nn

from pcbench.models import ModelInfo, TapModel
from pcbench.models.roles import common_stages, resolve_taps


def _split_commas(value):
    return [t.strip() for t in value.split(",")] if isinstance(value, str) else value


# Several taps; also accepted as "stage2,stage3" (how search spaces and --set write a list).
TapList = Annotated[list[str], BeforeValidator(_split_commas), Field(min_length=1)]


def _wants_number(annotation) -> bool:
    """A field of int or float (constrained or optional), not one that also takes a bool."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return bool not in args and any(_wants_number(a) for a in args)
    return annotation in (int, float)


def refuse_bool_numbers(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """pydantic takes true for 1 where a number is due; a config says so instead."""
    field = model.model_fields.get(info.field_name)
    if isinstance(value, bool) and field is not None and _wants_number(field.annotation):
        raise ValueError(f"a number is due, not {str(value).lower()}")
    return value


class MethodConfig(BaseModel):
    """Knobs shared by every method. Subclasses add theirs; unknown knobs are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_numbers(cls, value, info)

    name: str
    w_ce: NonNegativeFloat = 1.0


KD_SUFFIX = "+kd"


class KDTermConfig(BaseModel):
    """What a `<method>+kd` variant adds to its method, the same for every method: Hinton's KD
    term on the logits. Defaults: the CRD paper's `+KD` rows (RepDistiller's -a 1, T 4); a
    method with its own temperature (FCFD's mixed-path KL) starts the KD term at it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    w_kd: PositiveFloat = 1.0
    kd_temperature: PositiveFloat = 4.0

    @model_validator(mode="before")
    @classmethod
    def _temperature_from_the_method(cls, data: Any) -> Any:
        own = cls.model_fields.get("temperature")
        if isinstance(data, dict) and "kd_temperature" not in data and own is not None:
            return {**data, "kd_temperature": data.get("temperature", own.default)}
        return data


KD_TERM_KNOBS = tuple(KDTermConfig.model_fields)

LS_SUFFIX = "+ls"
CTKD_SUFFIX = "+ctkd"
VARIANT_SUFFIXES = (KD_SUFFIX, LS_SUFFIX, CTKD_SUFFIX)  # the order a variant's name writes them
# LS's base temperature (sunshangquan/logit-standardization-KD, tools/train.py --base-temp 2): the
# first point of an `+ls` variant's temperature knob, which then divides z-scored logits.
LS_TEMPERATURE = 2.0


class LSTermConfig(BaseModel):
    """What a `<method>+ls` variant adds, the same for every method: a factor on the terms that
    compare the z-scored logits. z-scores have unit spread, so the softened distributions are
    flatter and their gradients smaller than on raw logits; LS compensates with a larger weight:
    its KD runs weigh the KD term 9 instead of 0.9 (x10, CE 0.1), its DKD runs multiply alpha and
    beta by 9. The default 10 is the KD runs' factor (kd+ls starts at w_kd 0.9 x 10 = 9)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ls_weight: PositiveFloat = 10.0


LS_TERM_KNOBS = tuple(LSTermConfig.model_fields)


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about the training data, and the trial's budget, before training."""

    num_classes: int
    train_size: int
    epochs: int  # the trial's epochs, an initialisation stage's included


@dataclass
class Step:
    """One training step as a method sees it. Teacher tensors carry no gradient."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # positions of the batch's samples in the training set
    epoch: int
    student_feats: dict[str, torch.Tensor]
    teacher_feats: dict[str, torch.Tensor] | None
    student: TapModel
    teacher: TapModel | None
    # The strong view of the same images (a method with `views` 2, such as MLKD): this Step's
    # fields for it, with the student's and the teacher's taps of it.
    strong: "Step | None" = None


# A warm-up as the papers run it, in epochs of their recipe (mdistiller's and FCFD's 20 of 240
# on CIFAR), is here a share of the trial's epochs, so a 60-epoch search ramps over 5.
WarmupShare = Annotated[float, Field(gt=0.0, le=1.0)]


def ramp(epoch: int, share: float, epochs: int) -> float:
    """min(1, epoch / warm-up), the epoch counted from 1 (mdistiller's, FCFD's), over a warm-up
    of `share` of the trial's `epochs`."""
    return min(1.0, (epoch + 1) / max(1.0, share * epochs))


class CTKDTermConfig(BaseModel):
    """What a `<method>+ctkd` variant adds, the same for every method: CTKD's global learnt
    temperature T = ctkd_t_min + (ctkd_t_max - ctkd_t_min) * sigmoid(p) (zhengli97/CTKD: t_start 1,
    t_end 20, so T in (1, 21)), trained adversarially: a gradient-reversal layer before the
    sigmoid multiplies p's gradient by -lambda, lambda rising as a half cosine from 0 to
    `ctkd_lambda` over the first `ctkd_share` of the trial's epochs (CTKD's 10 of 240, its
    CosineDecay from 0 to -1), so p ascends the distillation loss while the student descends it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ctkd_t_min: PositiveFloat = 1.0
    ctkd_t_max: PositiveFloat = 21.0
    ctkd_share: WarmupShare = 10 / 240
    ctkd_lambda: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _a_range(self) -> "CTKDTermConfig":
        if self.ctkd_t_max <= self.ctkd_t_min:
            raise ValueError(f"ctkd_t_max ({self.ctkd_t_max}) must be above ctkd_t_min ({self.ctkd_t_min}): "
                             f"the learnt temperature lies between them")
        return self


CTKD_TERM_KNOBS = tuple(CTKDTermConfig.model_fields)


def reversal_strength(epoch: int, share: float, epochs: int, top: float) -> float:
    """CTKD's lambda, as a magnitude: (1 - cos(pi * ramp)) / 2 * top, with ramp's epoch count, so
    (1 - cos(pi * e / 10)) / 2 at epoch e counted from 1 over CTKD's 10 of 240 epochs."""
    return top * (1 - math.cos(math.pi * ramp(epoch, share, epochs))) / 2


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; backward multiplies the gradient by -strength."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


class CurriculumTemperature(nn.Module):
    """CTKD's Global_T: one learnt parameter p (starting at 1, as CTKD's), a temperature in
    (t_min, t_max) whose gradient is reversed with the given strength."""

    def __init__(self, t_min: float, t_max: float):
        super().__init__()
        self.t_min, self.t_max = t_min, t_max
        self.logit = nn.Parameter(torch.ones(()))

    def forward(self, strength: float) -> torch.Tensor:
        p = _ReverseGradient.apply(self.logit, strength)
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(p)


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Each row's z-score, as LS's `normalize`: (z - mean) / (unbiased std + 1e-7)."""
    return (logits - logits.mean(1, keepdim=True)) / (logits.std(1, keepdim=True) + 1e-7)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            t: float | torch.Tensor) -> torch.Tensor:
    """KL_T(z^T || z^S) = T^2 * KL(softmax(z^T/T) || softmax(z^S/T)), batch mean."""
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def pool_to_smaller(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature maps at a common size, as RepDistiller compares maps of different
    resolutions: the larger average-pooled (adaptively) to the smaller; the smaller unchanged."""
    size = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    return F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)


class Method(nn.Module):
    """Base: cross-entropy (+ KD when configured) plus the method's own `transfer` terms."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    needs_teacher: ClassVar[bool] = True
    # True when some trainable extra modules sit out some steps (DDP must then look for them).
    sometimes_unused: ClassVar[bool] = False
    # True when teacher and student must have as many stages (stage i is paired with stage i).
    same_stages: ClassVar[bool] = False
    # True when the loss compares teacher and student logits (refused when the teacher's
    # classes are another task's).
    reads_teacher_logits: ClassVar[bool] = False
    # True when every term that compares the two models' logits reads them through the hooks
    # `distill_logits` and `temperature` (all of the method's own terms do: kd, dkd, dist, nkd,
    # wttm; in a `+kd` variant, the KD term), so the logit plug-ins `+ls` and `+ctkd` can act
    # on them. FCFD compares logits inside its own mixed paths: it takes them only as fcfd+kd.
    logit_hooks: ClassVar[bool] = False
    # The knob the `temperature` hook reads (`kd_temperature` for a `+kd` variant's KD term).
    temperature_knob: ClassVar[str] = "temperature"
    # Whether `<name>+kd` exists: not for a method that is itself KD on the logits (kd, dkd)
    # or has no teacher (ce).
    takes_kd: ClassVar[bool] = True
    adds_kd: ClassVar[bool] = False  # True for the `+kd` variants (with_kd)
    adds_ls: ClassVar[bool] = False  # True for the `+ls` variants (with_ls)
    adds_ctkd: ClassVar[bool] = False  # True for the `+ctkd` variants (with_ctkd)
    # Knobs that change what a cohort's members share (the teacher's forward): a search over
    # them runs one trial per process, and configurations that differ in them are no cohort.
    cohort_shared_knobs: ClassVar[tuple[str, ...]] = ()
    # SGD with Nesterov momentum, where the method's reference code trains so (FCFD's).
    nesterov: ClassVar[bool] = False
    # A plug-in's search space, the `knobs:` mapping of a space file ({"method.weight": {type:
    # float, low: .., high: .., log: true}}); None: search_spaces/<name>.yaml, or for a plug-in
    # <name>.yaml beside its module.
    space: ClassVar[dict[str, Any] | None] = None
    # The smallest per-rank training batch the loss is defined on (batch-relational losses).
    min_batch: ClassVar[int] = 1
    # Views of each batch the loss reads: 2 for a method that also learns from a strongly
    # augmented view of the same images (MLKD; Step.strong). Its forwards count twice in a
    # cohort's cost.
    views: ClassVar[int] = 1
    # The terms that compare the student with the labels, not with the teacher (`+ls` leaves
    # them as they are).
    label_terms: ClassVar[tuple[str, ...]] = ("ce",)
    # Epochs of an initialisation stage before distillation (InitStageMethod): the engine
    # starts the optimizer afresh when it ends.
    init_epochs: int = 0
    min_epochs: ClassVar[int] = 1  # the fewest epochs a trial of this method may have

    def __init__(self, config: MethodConfig, student: ModelInfo, teacher: ModelInfo | None,
                 data: DataInfo):
        super().__init__()
        # roles resolved here too, so a method built outside a TrialConfig reads concrete taps
        stages = common_stages(student.stages, *([teacher.stages] if teacher else []))
        self.config = type(self).resolved(config, stages)

    @classmethod
    def taps(cls, config: MethodConfig, stages: Sequence[str]) -> set[str]:
        """Tap names this method reads on both models (logits are always read): by convention
        its `tap` or `taps` knob, layer roles (`last_stage`, ...) resolved against `stages`."""
        return set(resolve_taps(cls._tap_knobs(config), stages))

    @classmethod
    def resolved(cls, config: MethodConfig, stages: Sequence[str]) -> MethodConfig:
        """The config with the roles of its `tap`/`taps` knob replaced by concrete tap names of
        the pair (`stages`: the stages both models have). Raises ValueError when a role names
        no layer of the pair, or `tap` names more than one."""
        update = {}
        for knob in ("tap", "taps"):
            value = getattr(config, knob, None)
            if value is None:
                continue
            names = resolve_taps(value, stages)
            if not names or (knob == "tap" and len(names) != 1):
                raise ValueError(f"{knob} {value!r} names {len(names)} layers of this pair "
                                 f"(stages: {', '.join(stages)}); "
                                 + ("name one layer" if knob == "tap" else "name at least one"))
            update[knob] = names[0] if knob == "tap" else names
        return config.model_copy(update=update)

    @classmethod
    def check_pair(cls, config: MethodConfig, student: ModelInfo, teacher: ModelInfo | None) -> None:
        """Refuse, with a ValueError naming the fix, a configuration these two models' tap
        shapes cannot train (checked before anything runs)."""

    @staticmethod
    def _tap_knobs(config: MethodConfig) -> list[str]:
        tap, taps = getattr(config, "tap", None), getattr(config, "taps", None)
        return ([tap] if tap else []) + list(taps or ())

    def reads_teacher(self, epoch: int) -> bool:
        """Whether this epoch's steps need the teacher's taps (the engine skips its forward
        when no member of a cohort does)."""
        return self.needs_teacher

    def prepare(self, teacher: TapModel, data) -> None:
        """Called once before the first step, with the frozen teacher (on the trial's device)
        and the trial's data (a DataSource): for what a method computes from the whole training
        split before it trains, as WKD-L's class cost. Default: nothing."""

    @classmethod
    def teacher_in_train_mode(cls, config: MethodConfig) -> bool:
        """Whether the teacher runs with BatchNorm on batch statistics (default: eval mode)."""
        return False

    def distill_logits(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(z^S, z^T) as the terms that compare them read them (the label term reads the raw
        z^S itself). `+ls` replaces them with their per-sample z-scores."""
        return step.student_feats["logits"], step.teacher_feats["logits"]

    def temperature(self, step: Step) -> float | torch.Tensor:
        """The temperature of the terms that compare logits: the `temperature_knob` knob's
        value. `+ctkd` replaces it with its learnt temperature (a tensor), so a method reads it
        here, never from its config."""
        return getattr(self.config, self.temperature_knob)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms = {"ce": cfg.w_ce * F.cross_entropy(step.student_feats["logits"], step.y)}
        if self.adds_kd:
            terms["kd"] = cfg.w_kd * kd_loss(*self.distill_logits(step), self.temperature(step))
        terms.update(self.transfer(step))
        return terms

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        return {}


def with_kd(method: type[Method]) -> type[Method]:
    """`<method>+kd`: the method plus the KD term, with the method's knobs and the KD term's
    (KDTermConfig), identical for every method that takes it."""
    name = method.name + KD_SUFFIX
    config = create_model(f"{method.Config.__name__}PlusKD", __base__=(method.Config, KDTermConfig),
                          name=(Literal[name], name))
    return type(f"{method.__name__}PlusKD", (method,),
                {"name": name, "Config": config, "reads_teacher_logits": True, "adds_kd": True,
                 "takes_kd": False, "logit_hooks": True, "temperature_knob": "kd_temperature",
                 "__module__": method.__module__})


class _LogitStandardisation(Method):
    """The `+ls` behaviour, placed before the method in a variant's bases."""

    def distill_logits(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(standardise(z) for z in super().distill_logits(step))

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        terms = super().forward(step)
        # the terms that read distill_logits: a +kd variant's KD term; a logit method's own terms
        compared = {"kd"} if self.adds_kd else set(terms) - set(self.label_terms)
        return {k: self.config.ls_weight * v if k in compared else v for k, v in terms.items()}


def with_ls(method: type[Method]) -> type[Method]:
    """`<method>+ls`, logit standardisation (Sun et al., CVPR 2024): the terms that compare logits
    read both models' logits z-scored per sample (`standardise`), are multiplied by `ls_weight`,
    and the method's temperature knob (`temperature_knob`) starts at LS's base temperature 2.
    The label term keeps the raw logits. For a method with `logit_hooks`."""
    name = method.name + LS_SUFFIX
    knob = method.temperature_knob
    config = create_model(f"{method.Config.__name__}PlusLS", __base__=(method.Config, LSTermConfig),
                          name=(Literal[name], name), **{knob: (PositiveFloat, LS_TEMPERATURE)},
                          __validators__={"_ls_temperature": _ls_temperature_first(knob)})
    return type(f"{method.__name__}PlusLS", (_LogitStandardisation, method),
                {"name": name, "Config": config, "adds_ls": True, "__module__": method.__module__})


def _ls_temperature_first(knob: str):
    """The `+ls` temperature's default wins over KDTermConfig's (fcfd+kd+ls: the KD term on
    z-scores starts at LS's 2, not at FCFD's own temperature)."""

    @model_validator(mode="before")
    @classmethod
    def _ls_temperature(cls, data: Any) -> Any:
        if isinstance(data, dict) and knob not in data:
            return {**data, knob: LS_TEMPERATURE}
        return data
    return _ls_temperature


class _CurriculumTemperature(Method):
    """The `+ctkd` behaviour, placed before the method in a variant's bases."""

    def __init__(self, config, student, teacher, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.ctkd_epochs = data.epochs
        # a trainable extra module: the optimizer steps it with the student (weight decay too,
        # as CTKD's optimizer does)
        self.curriculum = CurriculumTemperature(self.config.ctkd_t_min, self.config.ctkd_t_max)

    def temperature(self, step: Step) -> torch.Tensor:
        cfg = self.config
        strength = reversal_strength(step.epoch, cfg.ctkd_share, self.ctkd_epochs, cfg.ctkd_lambda)
        return self.curriculum(strength)


def with_ctkd(method: type[Method]) -> type[Method]:
    """`<method>+ctkd`, curriculum temperature (Li et al., AAAI 2023): the `temperature` hook
    returns CTKD's learnt temperature (CurriculumTemperature; CTKDTermConfig), so the method's
    temperature knob is not read and not searched. For a method with `logit_hooks`."""
    name = method.name + CTKD_SUFFIX
    config = create_model(f"{method.Config.__name__}PlusCTKD", __base__=(method.Config, CTKDTermConfig),
                          name=(Literal[name], name))
    return type(f"{method.__name__}PlusCTKD", (_CurriculumTemperature, method),
                {"name": name, "Config": config, "adds_ctkd": True, "__module__": method.__module__})


class InitStageConfig(MethodConfig):
    """Knobs of a method that trains an initialisation stage before distilling: the share of
    the trial's epochs it takes. RepDistiller runs 30 such epochs before its 240, so 30/270 of
    a budget that counts both."""

    init_share: float = Field(1 / 9, gt=0.0, lt=1.0)


class InitStageMethod(Method):
    """A method that first trains an initialisation stage, as RepDistiller's `init` for AB, FT
    and FSP: for the first `init_share` of the trial's epochs (at least one, and never all)
    the loss is `initialise`'s terms alone, with no label term; then the base loss plus
    `transfer`. The stage runs inside the trial, so its cost is in the trial's budget, and
    the engine starts the optimizer afresh (no momentum) when it ends, as RepDistiller builds
    a new optimizer for distillation. Parameters an initialisation term does not reach (the
    student's classifier) keep no gradient and are not stepped."""

    Config = InitStageConfig
    sometimes_unused = True  # the classifier sits out the first stage; some modules the second
    min_epochs = 2  # one of each stage
    distils_after_init: ClassVar[bool] = True  # False: `transfer` reads no teacher (AB, FSP)

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.init_epochs = min(data.epochs - 1, max(1, round(self.config.init_share * data.epochs)))

    def reads_teacher(self, epoch: int) -> bool:
        return epoch < self.init_epochs or self.distils_after_init or self.adds_kd

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return self.initialise(step) if step.epoch < self.init_epochs else super().forward(step)

    def initialise(self, step: Step) -> dict[str, torch.Tensor]:
        raise NotImplementedError
