"""ab: activation boundaries (Heo et al., AAAI 2019), as RepDistiller (code from the authors):
an initialisation stage alone transfers. At each stage the student's pre-activation map,
through a connector (none where the shapes agree; else RepDistiller's ConvReg without the
ReLU), is pushed past a margin m to the side of zero the teacher's pre-activation is on:
sum over all elements of (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0], stage i of
n weighted 2^(i - n + 1) (the last stage 1), divided by the batch size and scaled by 3/1000.
Distillation afterwards is the label term (plus KD in the `+kd` variant), as RepDistiller's
`loss_kd = 0` for ab."""

from typing import Literal

import torch
from pydantic import PositiveFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import InitStageConfig, InitStageMethod, Step, TapList
from pcbench.methods.fitnet import conv_regressor
from pcbench.models import PREACT, ModelInfo, preact_stages
from pcbench.models.roles import common_stages


class ABConfig(InitStageConfig):
    name: Literal["ab"] = "ab"
    margin: PositiveFloat = 1.0
    taps: TapList = ["all_stages"]  # RepDistiller: feat[1:-1] with preact=True, every stage


def boundary_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """RepDistiller's criterion_alternative_l2: the squared distance past the margin on the
    wrong side of the teacher's activation boundary, summed."""
    off_but_above = (s + margin).pow(2) * ((s > -margin) & (t <= 0))
    on_but_below = (s - margin).pow(2) * ((s <= margin) & (t > 0))
    return (off_but_above + on_but_below).sum()


@register
class ActivationBoundaries(InitStageMethod):
    name = "ab"
    distils_after_init = False  # then the label term alone: no teacher forward
    Config = ABConfig

    def __init__(self, config, student: ModelInfo, teacher: ModelInfo, data):
        super().__init__(config, student, teacher, data)
        self.tap_list = self.config.taps
        n = len(self.tap_list)
        self.weights = {t: 2.0 ** (i - n + 1) for i, t in enumerate(self.tap_list)}
        self.connectors = nn.ModuleDict({
            t: nn.Identity() if student.tap_shapes[t] == teacher.tap_shapes[t]
            else conv_regressor(student.tap_shapes[t], teacher.tap_shapes[t], relu=False)
            for t in self.tap_list})

    @classmethod
    def taps(cls, config, stages):
        return {t + PREACT for t in super().taps(config, stages)}

    @classmethod
    def check_pair(cls, config, student, teacher):
        taps = cls.resolved(config, common_stages(student.stages, teacher.stages)).taps
        for info in (student, teacher):
            if missing := [t for t in taps if t not in preact_stages(info.name)]:
                raise ValueError(f"ab reads pre-activations, which {info.name} cannot give at "
                                 f"{', '.join(missing)} (no ReLU, or an in-place one, closes them); "
                                 f"choose another pair or method")

    def initialise(self, step: Step) -> dict[str, torch.Tensor]:
        batch = step.x.shape[0]
        loss = sum(self.weights[t] * boundary_loss(self.connectors[t](step.student_feats[t + PREACT]),
                                                   step.teacher_feats[t + PREACT], self.config.margin)
                   for t in self.tap_list)
        return {"ab": loss / batch * 3 / 1000}
