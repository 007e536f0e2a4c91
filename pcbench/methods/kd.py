"""kd: Hinton et al. (2015), softened logits. RepDistiller's CIFAR weights: w_ce 0.1, w_kd 0.9, T 4."""

from typing import Literal

from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import DistillConfig, Method


class KDConfig(DistillConfig):
    name: Literal["kd"] = "kd"
    w_ce: NonNegativeFloat = 0.1
    w_kd: NonNegativeFloat = 0.9


@register
class KD(Method):
    name = "kd"
    reads_teacher_logits = True
    Config = KDConfig
