"""fitnet: FitNets hints (Romero et al., 2015). A conv regressor maps the student's hint stage
to the teacher's; MSE between them. RepDistiller's CIFAR weight: 100, hint stage 2."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step
from pcbench.models import ModelInfo


class FitNetConfig(MethodConfig):
    name: Literal["fitnet"] = "fitnet"
    weight: NonNegativeFloat = 100.0
    tap: str = "middle_stage"  # FitNets' hint: the middle stage (stage2 of 3 or 4, as RepDistiller)


def conv_regressor(student: tuple[int, ...], teacher: tuple[int, ...], relu: bool = True) -> nn.Sequential:
    """RepDistiller's ConvReg: strided, transposed or shrinking conv by the spatial sizes,
    then BatchNorm and (unless `relu` is False) ReLU."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
    if s_h == 2 * t_h:
        conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
    elif 2 * s_h == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
    elif s_h >= t_h:
        conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ValueError(f"no FitNet regressor from spatial size {s_h} to {t_h}")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU(inplace=True)] if relu else []))


@register
class FitNet(Method):
    name = "fitnet"
    Config = FitNetConfig

    def __init__(self, config: FitNetConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        tap = self.config.tap
        s_shape, t_shape = student.tap_shapes[tap], teacher.tap_shapes[tap]
        self.regressor = (conv_regressor(s_shape, t_shape) if len(s_shape) == 3
                          else nn.Linear(s_shape[0], t_shape[0]))

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        hint = self.regressor(step.student_feats[self.config.tap])
        return {"fitnet": self.config.weight * F.mse_loss(hint, step.teacher_feats[self.config.tap])}
