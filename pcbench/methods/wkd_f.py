"""wkd_f: Wasserstein distance for feature distillation, WKD-F (Lv et al., NeurIPS 2024), as the
authors' code (JiamingLv/WKD) runs it on CIFAR-100.

Each channel of a feature map is modelled as a Gaussian over its H x W positions (mean and
standard deviation); the student's map, through a projector, is pulled towards the teacher's
by the 2-Wasserstein distance between the two diagonal Gaussians, which for diagonal
covariances is ||mu_s - mu_t||^2 + ||sigma_s - sigma_t||^2. The authors weight the mean term
(x4 on CIFAR-100) and decay the loss weight by cosine over the last epochs, as WKD-L.
"""

from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step
from pcbench.methods.fitnet import conv_regressor
from pcbench.methods.wkd_l import cosine_decay
from pcbench.models import ModelInfo
from pcbench.models.roles import common_stages


class WKDFConfig(MethodConfig):
    name: Literal["wkd_f"] = "wkd_f"
    weight: NonNegativeFloat = 0.08  # 0.02 on ImageNet; 0.3 for wrn_40_2 -> ShuffleNetV1
    mean_weight: NonNegativeFloat = 4.0  # the authors' MEAN_COV_RATIO: the mean term's weight
    eps: PositiveFloat = 1e-5  # added to the variance before its square root
    tap: str = "last_stage"  # the authors' HINT_LAYER -1
    # the weight stays until this share of the epochs (150 of 240), then decays by cosine to 0
    # at the last epoch (their ImageNet configs: 0, a decay over the whole run)
    decay_share: float = Field(150 / 240, ge=0.0, le=1.0)


def gaussian_wasserstein(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-5,
                         mean_weight: float = 1.0) -> torch.Tensor:
    """(mean_weight * sum_c (mu_s - mu_t)^2 + sum_c (sigma_s - sigma_t)^2), batch mean, with
    mu and sigma^2 the mean and unbiased variance of each channel over H x W, sigma =
    sqrt(sigma^2 + eps)."""
    mu_s, mu_t = f_s.mean((2, 3)), f_t.mean((2, 3))
    sigma_s, sigma_t = (f_s.var((2, 3)) + eps).sqrt(), (f_t.var((2, 3)) + eps).sqrt()
    return (mean_weight * (mu_s - mu_t).square().sum() + (sigma_s - sigma_t).square().sum()) / len(f_s)


@register
class WKDFeature(Method):
    name = "wkd_f"
    Config = WKDFConfig

    @classmethod
    def check_pair(cls, config: WKDFConfig, student, teacher) -> None:
        tap = cls.resolved(config, common_stages(student.stages, teacher.stages)).tap
        s, t = student.tap_shapes[tap], teacher.tap_shapes[tap]
        if len(s) != 3 or len(t) != 3:
            raise ValueError(f"wkd_f models each channel over the positions of a feature map, but "
                             f"{tap} is a vector; set wkd_f.tap to a stage")
        if t[1] * t[2] < 2:
            raise ValueError(f"wkd_f needs a variance over at least two positions, but the teacher's "
                             f"{tap} is {t[1]}x{t[2]}; set wkd_f.tap to an earlier stage")
        if s[1] < t[1] and 2 * s[1] != t[1]:
            raise ValueError(f"wkd_f's projector maps the student's {tap} ({s[1]}x{s[2]}) to the "
                             f"teacher's size ({t[1]}x{t[2]}) only when it is larger, equal or half; "
                             f"set wkd_f.tap to another stage")

    def __init__(self, config: WKDFConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.epochs = data.epochs
        tap = self.config.tap
        # the authors' "conv1x1" projector is RepDistiller's ConvReg (a 1x1 conv when the sizes
        # agree), with BatchNorm and a closing ReLU
        self.projector = conv_regressor(student.tap_shapes[tap], teacher.tap_shapes[tap], relu=True)

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        f_s = self.projector(step.student_feats[cfg.tap])
        loss = gaussian_wasserstein(f_s, step.teacher_feats[cfg.tap], cfg.eps, cfg.mean_weight)
        return {"wkd_f": cfg.weight * cosine_decay(step.epoch, cfg.decay_share, self.epochs) * loss}
