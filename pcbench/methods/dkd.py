"""dkd: decoupled KD (Zhao et al., 2022). KD split into the target-class term (TCKD, binary:
target vs rest) and the non-target term (NCKD, the distribution over the other classes),
weighted alpha and beta, ramped in over the first `warmup_share` of the epochs. CIFAR: alpha 1,
beta 8, T 4, warm-up 20 of 240 epochs."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step, WarmupShare, ramp


class DKDConfig(MethodConfig):
    name: Literal["dkd"] = "dkd"
    alpha: NonNegativeFloat = 1.0  # TCKD
    beta: NonNegativeFloat = 8.0  # NCKD
    temperature: PositiveFloat = 4.0
    warmup_share: WarmupShare = 20 / 240


def dkd_terms(z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor,
              t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * KL, batch mean."""
    gt = F.one_hot(target, z_s.shape[1]).bool()
    p_s, p_t = F.softmax(z_s / t, 1), F.softmax(z_t / t, 1)
    binary_s = torch.stack([p_s[gt], p_s.masked_fill(gt, 0).sum(1)], 1)
    binary_t = torch.stack([p_t[gt], p_t.masked_fill(gt, 0).sum(1)], 1)
    tckd = F.kl_div(binary_s.log(), binary_t, reduction="batchmean") * t * t
    # Non-target classes only: the target logit pushed to -inf (mdistiller uses -1000).
    log_q_s = F.log_softmax(z_s / t - 1000.0 * gt, 1)
    if isinstance(t, torch.Tensor) and t.requires_grad:
        # A learnt temperature (+ctkd) is differentiated through the teacher's side too, where the
        # target class's probability is exactly 0 and kl_div's target gradient log(0) x 0 is NaN;
        # the log-space target has none. A fixed temperature keeps mdistiller's form.
        log_q_t = F.log_softmax(z_t / t - 1000.0 * gt, 1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True) * t * t
    else:
        q_t = F.softmax(z_t / t - 1000.0 * gt, 1)
        nckd = F.kl_div(log_q_s, q_t, reduction="batchmean") * t * t
    return tckd, nckd


@register
class DKD(Method):
    name = "dkd"
    reads_teacher_logits = True
    logit_hooks = True
    takes_kd = False  # a decomposition of the KD term: dkd+kd would count it twice
    Config = DKDConfig

    def __init__(self, config, student, teacher, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.epochs = data.epochs

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        tckd, nckd = dkd_terms(*self.distill_logits(step), step.y, self.temperature(step))
        scale = ramp(step.epoch, cfg.warmup_share, self.epochs)
        return {"tckd": scale * cfg.alpha * tckd, "nckd": scale * cfg.beta * nckd}
