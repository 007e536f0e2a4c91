"""ofd: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), as
mdistiller runs it on CIFAR-100. At every stage the student's pre-activation, through a
connector (1x1 conv + BatchNorm to the teacher's channels), is compared with the teacher's
pre-activation (average-pooled to the student's size) by the partial L2 against the teacher's
margin ReLU: for each channel the margin m is the mean of the negative part of a Gaussian with
the teacher's BatchNorm scale and shift. No loss where the student is at or below a teacher
value that is itself at or below zero (the teacher's negative values count as m). Stage i of
n weighs 2^(i - n + 1), the last 1; each stage's loss is summed over C x H x W and averaged
over the batch. mdistiller's CIFAR weight: 1e-3."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step, TapList
from pcbench.models import PREACT, ModelInfo, preact_batchnorm_stages, preact_batchnorms, preact_stages
from pcbench.models.base import TapModel
from pcbench.models.roles import common_stages


class OFDConfig(MethodConfig):
    name: Literal["ofd"] = "ofd"
    weight: NonNegativeFloat = 1e-3
    taps: TapList = ["all_stages"]  # mdistiller: preact_feats[1:], every stage, the stem not
    teacher_train_mode: bool = False  # both reference codes' teacher BatchNorm on batch stats


def apply_batchnorm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """`bn` on `x` as its network applies it (batch statistics in train mode, running ones in
    eval mode), leaving its running statistics where they are: the network's own forward has
    already counted this batch."""
    batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(x, None if batch_stats else bn.running_mean, None if batch_stats else bn.running_var,
                        bn.weight, bn.bias, batch_stats, 0.0, bn.eps)


class PreActivations:
    """A network's stage pre-activations as RepDistiller's and mdistiller's `preact_feats`: the
    `<stage>/preact` tap, passed through the BatchNorm that follows it on a pre-activation stage
    that none ends (WRN: the next block's first BatchNorm, the head's for the last stage).
    The BatchNorms are found by tracing the network once, on first use."""

    def __init__(self):
        self.batchnorms: dict[str, tuple[str, bool]] | None = None

    def __call__(self, feats: dict[str, torch.Tensor], model: TapModel,
                 stages: list[str]) -> list[torch.Tensor]:
        if self.batchnorms is None:
            self.batchnorms = preact_batchnorms(model)
        out = []
        for stage in stages:
            f = feats[stage + PREACT]
            path, applied = self.batchnorms.get(stage, ("", False))
            out.append(apply_batchnorm(model.get_submodule(path), f) if applied else f)
        return out


def check_preacts(method: str, taps: list[str], *models: ModelInfo,
                  fix: str = "choose another pair or method") -> None:
    """Refuse a pair one of whose `models` cannot give the pre-activation of a tap (both models
    compute the same taps, so both must)."""
    for info in models:
        if missing := [t for t in taps if t not in preact_stages(info.name)]:
            raise ValueError(f"{method} reads pre-activations, which {info.name} cannot give at "
                             f"{', '.join(missing)} (no ReLU, or an in-place one, closes them); {fix}")


def margins_from_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(beta, |gamma|^2): beta - |gamma| phi(beta/|gamma|) /
    Phi(-beta/|gamma|); -3 |gamma| where Phi(-beta/|gamma|) <= 0.001 (the reference's cut-off,
    where the formula loses precision)."""
    s = bn.weight.detach().double().abs().clamp_min(1e-12)
    m = bn.bias.detach().double()
    below = torch.special.ndtr(-m / s)  # P(x < 0)
    density = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    expected = m - s * density / below.clamp_min(1e-300)
    return torch.where(below > 1e-3, expected, -3 * s).float()


def partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's d_p(max(t, m), s) summed over C x H x W, averaged over the batch: the squared
    distance to the margin-ReLU'd teacher, skipped where both it and the student are <= 0 and
    the student is below it."""
    target = torch.maximum(t, margin)
    counted = (s > target) | (target > 0)
    return ((s - target).pow(2) * counted).sum() / s.shape[0]


def connector(c_student: int, c_teacher: int) -> nn.Sequential:
    """The reference's student transform: 1x1 conv (He-normal over fan-out) and BatchNorm."""
    conv = nn.Conv2d(c_student, c_teacher, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_teacher))
    return nn.Sequential(conv, nn.BatchNorm2d(c_teacher))


@register
class OFD(Method):
    name = "ofd"
    Config = OFDConfig
    cohort_shared_knobs = ("teacher_train_mode",)

    def __init__(self, config: OFDConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.tap_list = list(self.config.taps)
        n = len(self.tap_list)
        self.stage_weights = [2.0 ** (i - n + 1) for i in range(n)]
        self.connectors = nn.ModuleList(connector(student.tap_shapes[t][0], teacher.tap_shapes[t][0])
                                        for t in self.tap_list)
        self.student_preacts, self.teacher_preacts = PreActivations(), PreActivations()
        self.margins: list[torch.Tensor] | None = None  # from the frozen teacher, on first use

    @classmethod
    def taps(cls, config, stages):
        return {t + PREACT for t in super().taps(config, stages)}

    @classmethod
    def teacher_in_train_mode(cls, config: OFDConfig) -> bool:
        return config.teacher_train_mode

    @classmethod
    def check_pair(cls, config, student, teacher):
        taps = cls.resolved(config, common_stages(student.stages, teacher.stages)).taps
        check_preacts("ofd", taps, student, teacher)
        if missing := [t for t in taps if t not in preact_batchnorm_stages(teacher.name)]:
            raise ValueError(f"ofd takes its margins from the BatchNorm before each teacher stage's "
                             f"ReLU, which {teacher.name} lacks at {', '.join(missing)}; choose "
                             f"another teacher or method")

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        fs = self.student_preacts(step.student_feats, step.student, self.tap_list)
        with torch.no_grad():
            ft = self.teacher_preacts(step.teacher_feats, step.teacher, self.tap_list)
            if self.margins is None:
                bns = self.teacher_preacts.batchnorms
                self.margins = [margins_from_batchnorm(step.teacher.get_submodule(bns[t][0]))[:, None, None]
                                for t in self.tap_list]
        loss = sum(w * partial_l2(c(s), F.adaptive_avg_pool2d(t, s.shape[-2:]), m)
                   for w, c, s, t, m in zip(self.stage_weights, self.connectors, fs, ft, self.margins))
        return {"ofd": self.config.weight * loss}
