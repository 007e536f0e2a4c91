"""at: attention transfer (Zagoruyko & Komodakis, 2017). Spatial attention maps, the channel
mean of |f|^p, L2-normalised, matched at each inner stage. RepDistiller's CIFAR weight: 1000."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, TapList, pool_to_smaller


class ATConfig(MethodConfig):
    name: Literal["at"] = "at"
    weight: NonNegativeFloat = 1000.0
    p: PositiveFloat = 2.0
    taps: TapList = ["all_stages"]  # layer roles or tap names (see pcbench.models.roles)


def attention(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.abs().pow(p).mean(1).flatten(1))


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """As RepDistiller: the larger map is average-pooled to the smaller one's size first."""
    fs, ft = pool_to_smaller(fs, ft)
    return (attention(fs, p) - attention(ft, p)).pow(2).mean()


@register
class AttentionTransfer(Method):
    name = "at"
    Config = ATConfig

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.tap_list = sorted(self.config.taps)

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        loss = sum(at_loss(step.student_feats[t], step.teacher_feats[t], self.config.p)
                   for t in self.tap_list)
        return {"at": self.config.weight * loss}
