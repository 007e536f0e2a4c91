"""pkt: probabilistic knowledge transfer (Passalis & Tefas, 2018). Cosine similarities of the
embeddings become conditional probabilities per row; KL(teacher || student). Weight 30000."""

from typing import Literal

import torch
from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step

_EPS = 1e-7


class PKTConfig(MethodConfig):
    name: Literal["pkt"] = "pkt"
    weight: NonNegativeFloat = 30000.0
    tap: str = "embedding"


def conditional_probabilities(f: torch.Tensor) -> torch.Tensor:
    unit = f / (f.norm(dim=1, keepdim=True) + _EPS)
    similarity = (unit @ unit.T + 1.0) / 2.0  # cosine, moved to [0, 1]
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    p_s = conditional_probabilities(fs.flatten(1))
    p_t = conditional_probabilities(ft.flatten(1))
    return (p_t * torch.log((p_t + _EPS) / (p_s + _EPS))).mean()


@register
class PKT(Method):
    name = "pkt"
    Config = PKTConfig
    min_batch = 2  # conditional probabilities over the other samples: one sample has none

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        loss = pkt_loss(step.student_feats[self.config.tap], step.teacher_feats[self.config.tap])
        return {"pkt": self.config.weight * loss}
