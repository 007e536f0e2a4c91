"""vid: variational information distillation (Ahn et al., CVPR 2019), as RepDistiller (code
from the authors): at each stage a regressor of three bias-free 1x1 convolutions predicts the
teacher's map from the student's as the mean of a Gaussian whose per-channel variance,
softplus(log_scale) + eps, is learnt (initially 5); the loss is that Gaussian's negative log
likelihood of the teacher's map, 0.5 ((mu - t)^2 / var + log var), averaged over the map and
summed over the stages. The larger map is average-pooled to the smaller. RepDistiller's CIFAR
weight: 1."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, TapList, pool_to_smaller

EPS = 1e-5


class VIDConfig(MethodConfig):
    name: Literal["vid"] = "vid"
    weight: NonNegativeFloat = 1.0
    init_var: PositiveFloat = 5.0
    taps: TapList = ["all_stages"]  # RepDistiller: feat[1:-1], every stage


class VariationalRegressor(nn.Module):
    def __init__(self, s_channels: int, t_channels: int, init_var: float):
        super().__init__()
        conv = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1, bias=False)  # noqa: E731
        self.mean = nn.Sequential(conv(s_channels, t_channels), nn.ReLU(), conv(t_channels, t_channels),
                                  nn.ReLU(), conv(t_channels, t_channels))
        # softplus^-1(init_var - eps): the variance starts at init_var
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_var - EPS))))

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = pool_to_smaller(f_s, f_t)
        var = (F.softplus(self.log_scale) + EPS).view(1, -1, 1, 1)
        return (0.5 * ((self.mean(f_s) - f_t).pow(2) / var + var.log())).mean()


@register
class VariationalInformationDistillation(Method):
    name = "vid"
    Config = VIDConfig

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.tap_list = sorted(self.config.taps)
        self.regressors = nn.ModuleDict({
            t: VariationalRegressor(student.tap_shapes[t][0], teacher.tap_shapes[t][0], self.config.init_var)
            for t in self.tap_list})

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        loss = sum(self.regressors[t](step.student_feats[t], step.teacher_feats[t]) for t in self.tap_list)
        return {"vid": self.config.weight * loss}
