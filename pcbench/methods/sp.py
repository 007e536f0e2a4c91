"""sp: similarity-preserving KD (Tung & Mori, 2019). The batch's row-normalised Gram matrices
of the last stage must agree. RepDistiller's CIFAR weight: 3000."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step


class SPConfig(MethodConfig):
    name: Literal["sp"] = "sp"
    weight: NonNegativeFloat = 3000.0
    tap: str = "last_stage"  # a layer role or a tap name (see pcbench.models.roles)


def sp_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """||G_t - G_s||_F^2 / B^2 with G = row-normalised f f^T."""
    b = fs.shape[0]
    g_s = F.normalize(fs.flatten(1) @ fs.flatten(1).T)
    g_t = F.normalize(ft.flatten(1) @ ft.flatten(1).T)
    return (g_t - g_s).pow(2).sum() / (b * b)


@register
class SimilarityPreserving(Method):
    name = "sp"
    Config = SPConfig
    min_batch = 2  # a similarity between samples of the batch: one sample's is 1, whatever it is

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.tap = self.config.tap

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        loss = sp_loss(step.student_feats[self.tap], step.teacher_feats[self.tap])
        return {"sp": self.config.weight * loss}
