"""kd: Hinton et al. (2015), softened logits. RepDistiller's CIFAR weights: w_ce 0.1, w_kd 0.9, T 4."""

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, kd_loss


class KDConfig(MethodConfig):
    name: Literal["kd"] = "kd"
    w_ce: NonNegativeFloat = 0.1
    w_kd: NonNegativeFloat = 0.9
    temperature: PositiveFloat = 4.0


@register
class KD(Method):
    name = "kd"
    reads_teacher_logits = True
    logit_hooks = True
    takes_kd = False  # it is the KD term
    Config = KDConfig

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        return {"kd": self.config.w_kd * kd_loss(*self.distill_logits(step), self.temperature(step))}
