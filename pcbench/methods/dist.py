"""dist: DIST (Huang et al., NeurIPS 2022), "knowledge distillation from a stronger teacher".
Instead of matching the softened predictions exactly (KL), the student matches their
relations: the Pearson correlation of each sample's predictions over the classes
(inter-class) and of each class's predictions over the batch (intra-class). CIFAR-100, as the
authors' dist_cifar.yaml: weight 2, beta 1, gamma 1, T 4, CE 1; T^2 scales both terms."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step


class DISTConfig(MethodConfig):
    name: Literal["dist"] = "dist"
    weight: NonNegativeFloat = 2.0  # the DIST term (the authors' kd_loss_weight)
    beta: NonNegativeFloat = 1.0  # inter-class relation
    gamma: NonNegativeFloat = 1.0  # intra-class relation
    temperature: PositiveFloat = 4.0


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b (eps in the denominator, as
    the authors' cosine similarity of the centred rows)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(z_s: torch.Tensor, z_t: torch.Tensor,
               t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) = T^2 * (1 - mean Pearson correlation) of the softened predictions, over
    the classes of each sample and over the batch of each class."""
    y_s, y_t = F.softmax(z_s / t, 1), F.softmax(z_t / t, 1)
    inter = t * t * (1 - pearson_rows(y_s, y_t).mean())
    intra = t * t * (1 - pearson_rows(y_s.T, y_t.T).mean())
    return inter, intra


@register
class DIST(Method):
    name = "dist"
    reads_teacher_logits = True
    logit_hooks = True
    # DIST is itself a KD term on the softened logits (a correlation instead of a KL): dist+kd
    # would add a second such term to the row.
    takes_kd = False
    Config = DISTConfig

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        inter, intra = dist_terms(*self.distill_logits(step), self.temperature(step))
        return {"inter": cfg.weight * cfg.beta * inter, "intra": cfg.weight * cfg.gamma * intra}
