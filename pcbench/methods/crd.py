"""crd: contrastive representation distillation (Tian et al., 2020), as in RepDistiller.

Student and teacher embeddings are projected to `feat_dim` and L2-normalised; each is
contrasted against a momentum memory bank of the *other* network's embeddings of the whole
training set: its own sample is the positive, `negatives` other samples are the negatives
(NCE with noise distribution 1/N). The memory is N x feat_dim per network, so it grows with the
data set and nothing else. Negatives are drawn uniformly from all other samples; RepDistiller's
default draws them from the other classes only (on CIFAR-100 about 1% of uniform negatives
share the positive's class, on 10-class digits about 10%).

Under DDP every rank applies every rank's memory update (an all-gather), so the banks stay
identical and no rank's update is lost.
"""

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step
from pcbench.models import ModelInfo

_EPS = 1e-7


class CRDConfig(MethodConfig):
    name: Literal["crd"] = "crd"
    weight: NonNegativeFloat = 0.8
    tap: str = "embedding"
    feat_dim: PositiveInt = 128
    negatives: PositiveInt = 16384  # capped at the training-set size minus one
    nce_temperature: PositiveFloat = 0.07
    momentum: float = Field(0.5, ge=0.0, lt=1.0)


def nce_loss(scores: torch.Tensor, train_size: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss: column 0 holds the positive's score, the rest negatives'."""
    k = scores.shape[1] - 1
    noise = k / train_size  # m * Pn
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + noise + _EPS))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + _EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


@register
class CRD(Method):
    name = "crd"
    Config = CRDConfig

    def __init__(self, config: CRDConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.train_size = data.train_size
        self.k = min(config.negatives, data.train_size - 1)
        self.embed_s = nn.Linear(math.prod(student.tap_shapes[self.config.tap]), config.feat_dim)
        self.embed_t = nn.Linear(math.prod(teacher.tap_shapes[self.config.tap]), config.feat_dim)
        bound = 1.0 / math.sqrt(config.feat_dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(data.train_size, config.feat_dim) * 2 * bound - bound)
        self.register_buffer("normalizer", torch.zeros(2))  # Z of each side, set on the first step
        self._calibrated = False  # checked once, not on every step (it would sync the GPU)

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        v_s = F.normalize(self.embed_s(step.student_feats[cfg.tap].flatten(1)))
        v_t = F.normalize(self.embed_t(step.teacher_feats[cfg.tap].flatten(1)))
        index = step.index
        others = torch.randint(0, self.train_size - 1, (len(index), self.k), device=index.device)
        others = others + (others >= index[:, None]).long()  # skip the positive itself
        rows = torch.cat([index[:, None], others], 1)
        # Each side's embedding is scored against the other side's memory.
        scores_s = torch.exp(torch.bmm(self.memory_t[rows], v_s[:, :, None]).squeeze(2) / cfg.nce_temperature)
        scores_t = torch.exp(torch.bmm(self.memory_s[rows], v_t[:, :, None]).squeeze(2) / cfg.nce_temperature)
        if not self._calibrated:
            if self.normalizer[0] <= 0:  # a fresh trial, not one resumed from a checkpoint
                z = torch.stack([scores_s.mean(), scores_t.mean()]).detach() * self.train_size
                self.normalizer.copy_(_mean_over_ranks(z))
            self._calibrated = True
        loss = (nce_loss(scores_s / self.normalizer[0], self.train_size)
                + nce_loss(scores_t / self.normalizer[1], self.train_size))
        with torch.no_grad():
            index, v_s, v_t = (_gather_from_ranks(t.detach()) for t in (index, v_s, v_t))
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                memory[index] = F.normalize(memory[index] * cfg.momentum + v * (1 - cfg.momentum))
        return {"crd": cfg.weight * loss}


def _gather_from_ranks(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, concatenated (ranks take equal batches); `t` itself without DDP."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t
