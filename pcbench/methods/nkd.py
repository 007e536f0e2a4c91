"""nkd: normalized KD (Yang et al., ICCV 2023). KD split as DKD does, but with its parts
normalised: the target class learns from the teacher's target probability (a cross-entropy at
T 1, unweighted), the non-target classes from the teacher's distribution over them alone,
renormalised (a cross-entropy at temperature T, weighted gamma T^2). CIFAR-100, as the authors'
yzd-v/cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: T 3, gamma 3.5, CE 1."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step


class NKDConfig(MethodConfig):
    name: Literal["nkd"] = "nkd"
    gamma: NonNegativeFloat = 3.5  # the non-target term (the target term is not weighted)
    temperature: PositiveFloat = 3.0  # of the non-target term; the target term is at T 1


def target_term(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NKD's target term, -mean_i p^T_{y_i} log p^S_{y_i} with p = softmax(z) (T 1); WKD-L adds
    it too."""
    return -(F.softmax(z_t, 1).gather(1, y[:, None]) * F.log_softmax(z_s, 1).gather(1, y[:, None])).mean()


def nkd_terms(z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor,
              t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, non_target), batch means:
    target     = -p^T_y * log p^S_y                         p = softmax(z), T 1
    non_target = -T^2 * sum_{c != y} q^T_c * log q^S_c      q = softmax over the C - 1 other
                                                            classes of z / T"""
    b, c = z_s.shape
    # the target class removed: each row keeps its C - 1 other logits, renormalised
    others = ~F.one_hot(target, c).bool()
    o_s, o_t = z_s[others].view(b, c - 1), z_t[others].view(b, c - 1)
    non_target = -t * t * (F.softmax(o_t / t, 1) * F.log_softmax(o_s / t, 1)).sum(1).mean()
    return target_term(z_s, z_t, target), non_target


@register
class NKD(Method):
    name = "nkd"
    reads_teacher_logits = True
    logit_hooks = True
    # NKD is itself KD on the logits (KD's target and non-target parts, normalised): nkd+kd
    # would count the teacher's predictions twice.
    takes_kd = False
    Config = NKDConfig

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        target, non_target = nkd_terms(*self.distill_logits(step), step.y, self.temperature(step))
        return {"target": target, "non_target": self.config.gamma * non_target}
