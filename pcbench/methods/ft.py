"""ft: factor transfer (Kim et al., NeurIPS 2018), as RepDistiller. The initialisation stage
trains a paraphraser, an autoencoder of three 3x3 conv + LeakyReLU(0.1) layers each way
(no BatchNorm; the factor has k = 0.5 of the teacher's channels), to reconstruct the teacher's
map at `tap` (MSE); the student is not trained. Distillation then adds, for a translator (the
same encoder on the student's map, with BatchNorm) against the paraphraser's frozen encoder:
weight * mean |phi(F_S) - phi(F_T)| with phi(F) = L2-normalise(mean over channels of F^2,
flattened), the larger map average-pooled to the smaller. RepDistiller's CIFAR setting:
weight 200 on the last stage."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import InitStageConfig, InitStageMethod, Step, pool_to_smaller

RATE = 0.5  # factor channels per teacher channel (RepDistiller's k)


class FTConfig(InitStageConfig):
    name: Literal["ft"] = "ft"
    weight: NonNegativeFloat = 200.0
    tap: str = "last_stage"  # RepDistiller: feat[-2], the last stage


def conv_stack(convolution, channels: list[int], batch_norm: bool) -> nn.Sequential:
    layers = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [convolution(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if batch_norm else []),
                   nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1))


@register
class FactorTransfer(InitStageMethod):
    name = "ft"
    Config = FTConfig

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        s_c, t_c = student.tap_shapes[self.config.tap][0], teacher.tap_shapes[self.config.tap][0]
        k = int(t_c * RATE)
        self.paraphraser_encoder = conv_stack(nn.Conv2d, [t_c, t_c, k, k], batch_norm=False)
        self.paraphraser_decoder = conv_stack(nn.ConvTranspose2d, [k, k, t_c, t_c], batch_norm=False)
        self.translator = conv_stack(nn.Conv2d, [s_c, s_c, k, k], batch_norm=True)

    def initialise(self, step: Step) -> dict[str, torch.Tensor]:
        f_t = step.teacher_feats[self.config.tap]
        return {"paraphraser": F.mse_loss(self.paraphraser_decoder(self.paraphraser_encoder(f_t)), f_t)}

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # the paraphraser is frozen once trained
            factor_t = self.paraphraser_encoder(step.teacher_feats[self.config.tap])
        factor_s, factor_t = pool_to_smaller(self.translator(step.student_feats[self.config.tap]), factor_t)
        return {"ft": self.config.weight * (factor(factor_s) - factor(factor_t)).abs().mean()}
