"""mlkd: multi-level logit distillation (Jin et al., CVPR 2023). Each batch is seen twice, as
the batch every method sees (weak) and a strongly augmented view of the same images (Step.strong,
data/strong.py), and the logits are aligned at several temperatures on three levels: each
sample's prediction (KD), the batch's sample-by-sample prediction Gram matrix (batch level) and
its class-by-class one (class level).

As the authors' Jin-Ying/Multi-Level-Logit-Distillation (commit 5ee473f, KD_ours.py), where it
departs from the paper:
- temperatures T (4) and 2, 3, 5, 6; CE on both views (w_ce 0.1 each), every other term weighted 0.9;
- the strong view's KD reads the weak view's logits at T 2 and 6 (and the strong view's at T, 3, 5);
- the confidence "masks" scale a term by the share of samples (classes) at or below the median
  confidence instead of selecting them: about 0.5, a constant in effect;
- only the weak view's batch and class terms count (the strong view's are computed and unused).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, kd_loss

# Beside the temperature knob, the authors' fixed ones: the strong view's KD terms at the first
# two read the strong view's logits, at the last two the weak view's
OTHER_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


class MLKDConfig(MethodConfig):
    name: Literal["mlkd"] = "mlkd"
    w_ce: NonNegativeFloat = 0.1  # on each view
    weight: NonNegativeFloat = 0.9  # of every alignment term (the authors' KD weight)
    temperature: PositiveFloat = 4.0


def batch_level(z_s: torch.Tensor, z_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """||P_T P_T^T - P_S P_S^T||_F^2 / B, P = softmax(z / T) (B x C): how alike the model finds
    each two samples."""
    p_s, p_t = F.softmax(z_s / t, 1), F.softmax(z_t / t, 1)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / len(z_s)


def class_level(z_s: torch.Tensor, z_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """||P_T^T P_T - P_S^T P_S||_F^2 / C: how the batch's predictions pair the classes."""
    p_s, p_t = F.softmax(z_s / t, 1), F.softmax(z_t / t, 1)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / z_s.shape[1]


def below_median(values: torch.Tensor) -> torch.Tensor:
    """The share of `values` at or below their median (numpy's percentile 50, interpolated)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


@register
class MLKD(Method):
    name = "mlkd"
    reads_teacher_logits = True
    logit_hooks = True
    takes_kd = False  # it is KD on the logits, at several levels
    label_terms = ("ce", "ce_strong")
    views = 2
    min_batch = 2  # the batch level compares samples
    Config = MLKDConfig

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg, strong = self.config, step.strong
        temperatures = (self.temperature(step), *OTHER_TEMPERATURES)
        weak_s, weak_t = self.distill_logits(step)  # the KD terms' (z-scored by +ls)
        strong_s, strong_t = self.distill_logits(strong)
        # the batch and class levels, and the masks, read the raw logits (LS's MLKD standardises
        # the KD terms only)
        raw_s, raw_t = step.student_feats["logits"], step.teacher_feats["logits"]
        confidence = F.softmax(raw_t, 1)  # the teacher's weak-view confidences, at T 1
        samples, classes = below_median(confidence.max(1).values), below_median(confidence.sum(0))
        kd_strong = (sum(kd_loss(strong_s, strong_t, t) for t in temperatures[:3])
                     + sum(kd_loss(weak_s, weak_t, t) for t in temperatures[3:]))
        return {
            "ce_strong": cfg.w_ce * F.cross_entropy(strong.student_feats["logits"], step.y),
            "kd": cfg.weight * (samples * sum(kd_loss(weak_s, weak_t, t) for t in temperatures) + kd_strong),
            "class_level": cfg.weight * classes * sum(class_level(raw_s, raw_t, t) for t in temperatures),
            "batch_level": cfg.weight * samples * sum(batch_level(raw_s, raw_t, t) for t in temperatures),
        }
