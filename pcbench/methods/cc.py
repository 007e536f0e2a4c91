"""cc: correlation congruence (Peng et al., ICCV 2019), as RepDistiller runs it: the code its
authors shared, not the paper's kernel-matrix form. Both embeddings (pooled features) are
projected to 128 dimensions by trainable linear maps, the teacher's included; with
delta = |e_s - e_t|, the loss is the mean over consecutive samples of the batch of
sum_d delta_i,d * delta_i+1,d. RepDistiller's CIFAR weight: 0.02."""

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveInt
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step


class CCConfig(MethodConfig):
    name: Literal["cc"] = "cc"
    weight: NonNegativeFloat = 0.02
    dim: PositiveInt = 128  # RepDistiller's feat_dim


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register
class CorrelationCongruence(Method):
    name = "cc"
    Config = CCConfig
    min_batch = 2  # pairs of consecutive samples

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.embed_s = nn.Linear(student.tap_shapes["embedding"][0], self.config.dim)
        self.embed_t = nn.Linear(teacher.tap_shapes["embedding"][0], self.config.dim)

    @classmethod
    def taps(cls, config, stages):
        return {"embedding"}

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        e_s = self.embed_s(step.student_feats["embedding"])
        e_t = self.embed_t(step.teacher_feats["embedding"])  # trained too, as RepDistiller's
        return {"cc": self.config.weight * cc_loss(e_s, e_t)}
