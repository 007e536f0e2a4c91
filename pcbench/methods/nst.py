"""nst: neuron selectivity transfer (Huang & Wang, 2017), as RepDistiller: at each stage each
channel's spatial map is L2-normalised, and the squared maximum mean discrepancy between the
student's and the teacher's channels under the polynomial kernel k(a, b) = (a . b)^2 is
matched (mean K_tt, detached, + mean K_ss - 2 mean K_st; means over the batch and both
channel indices), summed over the stages. RepDistiller's CIFAR weight: 50."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, TapList, pool_to_smaller


class NSTConfig(MethodConfig):
    name: Literal["nst"] = "nst"
    weight: NonNegativeFloat = 50.0
    taps: TapList = ["all_stages"]  # RepDistiller: feat[1:-1], every stage


def _channels(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.flatten(2), dim=2)  # B x C x HW, each channel's map of unit norm


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B x C_b x C_a of (a_i . b_j)^2 (RepDistiller's broadcast form, without its B x C x C x HW
    intermediate)."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    s, t = map(_channels, pool_to_smaller(f_s, f_t))
    return poly_kernel(t, t).mean().detach() + poly_kernel(s, s).mean() - 2 * poly_kernel(s, t).mean()


@register
class NeuronSelectivityTransfer(Method):
    name = "nst"
    Config = NSTConfig

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        loss = sum(nst_loss(step.student_feats[t], step.teacher_feats[t]) for t in sorted(self.config.taps))
        return {"nst": self.config.weight * loss}
