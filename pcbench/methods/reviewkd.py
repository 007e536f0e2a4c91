"""reviewkd: distilling knowledge via knowledge review (Chen et al., CVPR 2021), as mdistiller
runs it on CIFAR-100. The student's stage outputs and its pooled feature are fused from the
deepest to the shallowest by attention-based fusion (ABF): each level is reduced to a common
width, mixed with the fused level below it by two attention maps, and projected to the
teacher's shape, so each teacher level is matched by a blend of the student's level and all
deeper ones. The hierarchical context loss (HCL) compares each projection with the teacher's
pre-activation (the pooled feature at the top) by MSE at full size and at 4x4, 2x2 and 1x1
average-pooled sizes smaller than the map, weighted 1, 1/2, 1/4, 1/8 and normalised.
mdistiller's CIFAR setting: weight 5, ramped in over 20 of 240 epochs, fusion width
min(512, the student's pooled width)."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step, TapList, WarmupShare, ramp
from pcbench.methods.ofd import PreActivations, check_preacts
from pcbench.models import PREACT, ModelInfo
from pcbench.models.roles import common_stages

MAX_FUSION_WIDTH = 512  # the reference code's cap on the fusion width
POOLED = "embedding"  # the pooled feature, the deepest level


class ReviewKDConfig(MethodConfig):
    name: Literal["reviewkd"] = "reviewkd"
    weight: NonNegativeFloat = 5.0
    warmup_share: WarmupShare = 20 / 240
    taps: TapList = ["all_stages"]  # mdistiller: every stage and the pooled feature, the stem not
    # The teacher's stages before their ReLU (mdistiller's preact_feats); false reads them after
    # it, for teachers whose pre-activations cannot be read (torchvision's ResNets).
    teacher_preact: bool = True
    # The student's stages before their ReLU: mdistiller's ImageNet setting (STU_PREACT).
    student_preact: bool = False


class AttentionFusion(nn.Module):
    """One ABF: reduce the student's level to the fusion width (1x1 conv, BN); where a deeper
    fused level exists, resize it to this level (nearest) and blend the two with two sigmoid
    attention maps computed from both; resize to the teacher's size where it differs; project
    to the teacher's channels (3x3 conv, BN). Returns the projection and the fused level."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.project = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.attention = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None,
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, deeper], 1))
            x = x * a[:, :1] + deeper * a[:, 1:]
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.project(x), x


def hierarchical_context_loss(fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of the weighted mean of MSE at full size and at the pooled sizes 4, 2, 1
    that are smaller than the map's height, weighted 1, 1/2, 1/4, ... in that order."""
    total = 0.0
    for s, t in zip(fs, ft):
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= s.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total


@register
class ReviewKD(Method):
    name = "reviewkd"
    Config = ReviewKDConfig
    min_batch = 2  # the fusion's BatchNorm on the 1x1 pooled level needs two samples

    def __init__(self, config: ReviewKDConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.tap_list = list(self.config.taps)
        self.epochs = data.epochs
        levels = [*self.tap_list, POOLED]  # shallow to deep; the pooled feature as 1x1

        def shape(info: ModelInfo, tap: str) -> tuple[int, int, int]:
            c, *size = info.tap_shapes[tap]
            return c, *(size or (1, 1))

        s_shapes, t_shapes = [shape(student, t) for t in levels], [shape(teacher, t) for t in levels]
        width = min(MAX_FUSION_WIDTH, s_shapes[-1][0])
        # deepest first, the order the fusion runs in; the pooled level has nothing to fuse with
        self.fusions = nn.ModuleList(AttentionFusion(s[0], width, t[0], fuse=i > 0)
                                     for i, (s, t) in enumerate(zip(s_shapes[::-1], t_shapes[::-1])))
        self.out_sizes = [t[1:] for t in t_shapes[::-1]]
        self.student_preacts, self.teacher_preacts = PreActivations(), PreActivations()

    @classmethod
    def taps(cls, config: ReviewKDConfig, stages):
        stages = super().taps(config, stages)
        preact = {t + PREACT for t in stages} if config.teacher_preact or config.student_preact else set()
        return stages | preact | {POOLED}

    @classmethod
    def check_pair(cls, config, student, teacher):
        taps = cls.resolved(config, common_stages(student.stages, teacher.stages)).taps
        # both models compute the same taps, so either side's pre-activations need both's
        for knob in ("teacher_preact", "student_preact"):
            if getattr(config, knob):
                check_preacts("reviewkd", taps, student, teacher, fix=f"set reviewkd.{knob}=false")

    def levels(self, feats: dict[str, torch.Tensor], model, preact: bool,
               preacts: PreActivations) -> list[torch.Tensor]:
        stages = preacts(feats, model, self.tap_list) if preact else [feats[t] for t in self.tap_list]
        return [*stages, feats[POOLED][:, :, None, None]]

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        fs = self.levels(step.student_feats, step.student, cfg.student_preact, self.student_preacts)
        with torch.no_grad():
            ft = self.levels(step.teacher_feats, step.teacher, cfg.teacher_preact, self.teacher_preacts)
        reviewed, fused = [], None
        for fusion, f, size in zip(self.fusions, fs[::-1], self.out_sizes):
            out, fused = fusion(f, fused, size)
            reviewed.append(out)
        loss = hierarchical_context_loss(reviewed[::-1], ft)
        return {"reviewkd": cfg.weight * ramp(step.epoch, cfg.warmup_share, self.epochs) * loss}
