"""rkd: relational KD (Park et al., 2019). Distances between embeddings (normalised by their
mean) and angles of triplets must agree, under smooth L1. Distance 25, angle 50, weight 1."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step


class RKDConfig(MethodConfig):
    name: Literal["rkd"] = "rkd"
    weight: NonNegativeFloat = 1.0
    w_distance: NonNegativeFloat = 25.0
    w_angle: NonNegativeFloat = 50.0
    tap: str = "embedding"


def pairwise_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        d_t = pairwise_distance(t)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distance(s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def rkd_angle(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    def cosines(e):
        directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
        return torch.bmm(directions, directions.transpose(1, 2)).flatten()
    with torch.no_grad():
        a_t = cosines(t)
    return F.smooth_l1_loss(cosines(s), a_t)


@register
class RelationalKD(Method):
    name = "rkd"
    Config = RKDConfig
    min_batch = 3  # the angle term compares triplets; one sample has no distance to normalise by

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        s, t = step.student_feats[cfg.tap].flatten(1), step.teacher_feats[cfg.tap].flatten(1)
        loss = cfg.w_distance * rkd_distance(s, t) + cfg.w_angle * rkd_angle(s, t)
        return {"rkd": cfg.weight * loss}
