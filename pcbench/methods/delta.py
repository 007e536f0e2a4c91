"""delta: DELTA (Li et al., ICLR 2019), fine-tuning that keeps the starting model's feature
maps, each channel weighted by how much the starting model needs it. The student starts from
the teacher's weights (train.init_from_teacher), so the frozen teacher is the starting model
and its taps are the reference maps.

Channel attention, measured once, as the authors' channel_eval.py (lixingjian/DELTA): a new
classifier (the probe) is trained on the starting model's embedding for the first
`init_share` of the epochs (an initialisation stage: the student does not train meanwhile);
then, on the last ATTENTION_BATCHES training batches of that stage, each channel j of each
tap is zeroed and the rise of the probe's cross-entropy is its importance; per tap,
a = softmax(zscore(importance) / attention_temperature). The loss, as the authors' train.py:
    delta = weight * sum over taps of 1/2 * sum_j C * a_j * mean over positions (s_j - t_j)^2
    head  = beta / 2 * ||classifier||^2     (the new layer's weight and bias)
averaged over the batch where the authors sum it: their alpha 0.01 on a sum over 64 images is
weight 0.64 here (their 0.1 for Stanford Dogs, 6.4)."""

import copy
from typing import ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import InitStageConfig, InitStageMethod, Step, TapList
from pcbench.methods.l2sp import head_prefix
from pcbench.models import TapModel
from pcbench.models.roles import common_stages

ATTENTION_BATCHES = 4  # the authors measure importance on 4 training batches
ABLATED_SAMPLES = 256  # images per forward while measuring (channels zeroed side by side)


class DELTAConfig(InitStageConfig):
    name: Literal["delta"] = "delta"
    weight: NonNegativeFloat = 0.64  # the authors' alpha 0.01, summed over their batch of 64
    beta: NonNegativeFloat = 0.01  # the new classifier towards zero
    attention_temperature: PositiveFloat = 5.0  # of the softmax over z-scored channel importances
    taps: TapList = ["all_stages"]  # the authors: the last block of each of ResNet's stages


def attention_weights(importance: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(zscore(importance) / temperature) over a tap's channels (uniform when every
    channel matters alike)."""
    spread = importance.std(unbiased=False)
    z = (importance - importance.mean()) / spread if spread > 0 else torch.zeros_like(importance)
    return torch.softmax(z / temperature, dim=0)


def delta_distance(fs: torch.Tensor, ft: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """1/2 * sum_j C * a_j * mean over positions of (fs_j - ft_j)^2, averaged over the batch."""
    per_channel = (fs - ft).pow(2)
    if per_channel.ndim > 2:
        per_channel = per_channel.flatten(2).mean(2)
    return 0.5 * (fs.shape[1] * attention * per_channel).sum(1).mean()


@torch.no_grad()
def channel_importance(model: TapModel, probe: nn.Module, taps: list[str],
                       batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per tap, per channel: the probe's cross-entropy with that channel zeroed minus intact,
    on `model`'s features (a copy in eval mode, its classifier replaced by the probe), the
    mean over `batches`."""
    body = copy.deepcopy(model).eval()
    parent, _, leaf = body.TAP_NODES["logits"].rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, leaf, nn.Identity())  # head -> embedding
    points = ["stem", *body.stage_taps]

    def logits_from(h: torch.Tensor, tap: str) -> torch.Tensor:
        if tap == "embedding":
            return probe(h)
        outputs = body.run_stages(h, points.index(tap))
        return probe(body.head(outputs[-1] if outputs else h))

    totals = {tap: 0.0 for tap in taps}
    for x, y in batches:
        maps = {"stem": body.forward_stem(x)}
        h = maps["stem"]
        for tap, stage in zip(body.stage_taps, body.stage_blocks()):
            h = maps[tap] = stage(h)
        maps["embedding"] = body.head(h)
        intact = F.cross_entropy(probe(maps["embedding"]), y)
        batch = len(y)
        side_by_side = max(1, ABLATED_SAMPLES // batch)
        for tap in taps:
            h = maps[tap]
            rises = []
            for first in range(0, h.shape[1], side_by_side):
                channels = torch.arange(first, min(first + side_by_side, h.shape[1]), device=h.device)
                copies = h.unsqueeze(0).repeat(len(channels), *[1] * h.ndim)  # k x B x C x ...
                copies[torch.arange(len(channels)), :, channels] = 0
                losses = F.cross_entropy(logits_from(copies.flatten(0, 1), tap), y.repeat(len(channels)),
                                         reduction="none")
                rises.append(losses.view(len(channels), batch).mean(1) - intact)
            totals[tap] = totals[tap] + torch.cat(rises)
    return {tap: total / len(batches) for tap, total in totals.items()}


@register
class DELTA(InitStageMethod):
    name = "delta"
    Config = DELTAConfig
    # Refused, when the configuration is built, unless the student starts from the teacher's
    # weights: the teacher is then its starting model.
    starts_from_teacher: ClassVar[bool] = True

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.tap_list = list(self.config.taps)
        self.probe = nn.Linear(teacher.tap_shapes["embedding"][0], data.num_classes)
        for tap in self.tap_list:  # buffers: saved with the trial's checkpoints
            channels = teacher.tap_shapes[tap][0]
            self.register_buffer(self._attention_name(tap), torch.full((channels,), 1.0 / channels))
        self.register_buffer("attention_measured", torch.zeros((), dtype=torch.bool))
        self._measured = False  # the buffer, read once: no device sync at every step
        self._recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # the stage's last batches

    @staticmethod
    def _attention_name(tap: str) -> str:
        return f"attention_{tap}"

    def attention(self, tap: str) -> torch.Tensor:
        return getattr(self, self._attention_name(tap))

    @classmethod
    def taps(cls, config, stages):
        return super().taps(config, stages) | {"embedding"}  # the probe's input

    @classmethod
    def check_pair(cls, config, student, teacher):
        taps = cls.resolved(config, common_stages(student.stages, teacher.stages)).taps
        measurable = {"stem", *teacher.stages, "embedding"}
        if wrong := [t for t in taps if t not in measurable]:
            raise ValueError(f"delta weighs each channel by zeroing it and running the rest of the "
                             f"network, which it can do at the stem, a stage or the embedding, not at "
                             f"{', '.join(wrong)}; choose those taps")

    def initialise(self, step: Step) -> dict[str, torch.Tensor]:
        self._recent = [*self._recent, (step.x.detach(), step.y.detach())][-ATTENTION_BATCHES:]
        return {"probe": F.cross_entropy(self.probe(step.teacher_feats["embedding"]), step.y)}

    def _measure_attention(self, step: Step) -> None:
        batches = self._recent or [(step.x.detach(), step.y.detach())]  # none kept: resumed here
        self._recent = []
        importance = channel_importance(step.teacher, self.probe, self.tap_list, batches)
        for tap in self.tap_list:
            if dist.is_available() and dist.is_initialized():  # one attention on every rank
                dist.all_reduce(importance[tap])
                importance[tap] /= dist.get_world_size()
            self.attention(tap).copy_(attention_weights(importance[tap], self.config.attention_temperature))
        self.attention_measured.fill_(True)

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        if not self._measured:
            if not self.attention_measured:  # measured already where a trial resumes
                self._measure_attention(step)
            self._measured = True
        loss = sum(delta_distance(step.student_feats[t], step.teacher_feats[t], self.attention(t))
                   for t in self.tap_list)
        new = head_prefix(step.student)
        head = sum(p.pow(2).sum() for name, p in step.student.named_parameters() if name.startswith(new))
        return {"delta": self.config.weight * loss, "head": self.config.beta / 2 * head}
