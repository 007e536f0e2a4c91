"""fcfd: function-consistent feature distillation (Liu et al., ICLR 2023).

Features are judged by what the rest of the network does with them: student features are fed
through the teacher's later stages (s->t) and teacher features through the student's (t->s),
and the outputs must agree with the teacher's. See docs/methods.md.
"""

import contextlib
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from pcbench.methods import register
from pcbench.methods.base import DataInfo, Method, MethodConfig, Step, WarmupShare, kd_loss, ramp
from pcbench.models import ModelInfo


class FCFDConfig(MethodConfig):
    name: Literal["fcfd"] = "fcfd"
    temperature: PositiveFloat = 4.0  # of the mixed paths' KL (and fcfd+kd's KD term, by default)
    weight: NonNegativeFloat = 5.0  # w_l2: the feature terms (L_app + L_func)
    w_mix: NonNegativeFloat = 1.0
    paths: PositiveInt = 2  # mixed paths sampled per step, without replacement (at most all)
    warmup_share: WarmupShare = 20 / 240  # of the epochs, over which the feature terms ramp up
    directions: Literal["both", "s2t", "t2s"] = "both"
    teacher_train_mode: bool = False  # the reference code's teacher BatchNorm on batch stats


def bridge(source: tuple[int, ...], target: tuple[int, ...], post_relu: bool) -> nn.Sequential:
    """conv3x3 + BN from one network's stage output to the other's; strided when the target
    is half the size, transposed when it is double; LeakyReLU when the receiver expects
    post-ReLU features."""
    (c_in, h_in, _), (c_out, h_out, _) = source, target
    if h_out == h_in:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    elif 2 * h_out == h_in:
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
    elif h_out == 2 * h_in:
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
    else:
        raise ValueError(f"no FCFD bridge from spatial size {h_in} to {h_out}")
    layers = [conv, nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.LeakyReLU(0.1)) if post_relu else nn.Sequential(*layers)


@contextlib.contextmanager
def batch_stats_only(module: nn.Module) -> Iterator[None]:
    """Mixed paths normalise with their own batch statistics and leave the running statistics
    of the network they pass through untouched (they are never used at evaluation)."""
    saved = []
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.training:
            saved.append((bn, bn.running_mean, bn.running_var, bn.num_batches_tracked))
            bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    try:
        yield
    finally:
        for bn, mean, var, count in saved:
            bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, count


def pooled(f: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1)


@register
class FCFD(Method):
    name = "fcfd"
    Config = FCFDConfig
    reads_teacher_logits = True  # s->t paths end in the teacher's classifier, matched to its logits
    same_stages = True
    sometimes_unused = True  # only the sampled paths' bridges take part in a step
    nesterov = True  # the authors' trainer: SGD(..., nesterov=True)
    cohort_shared_knobs = ("teacher_train_mode",)

    def __init__(self, config: FCFDConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        if len(student.stages) != len(teacher.stages):
            raise ValueError(f"FCFD needs as many stages in the student ({len(student.stages)}) "
                             f"as in the teacher ({len(teacher.stages)})")
        self.stages = list(student.stages)
        self.epochs = data.epochs
        s_shapes = [student.tap_shapes[t] for t in student.stages]
        t_shapes = [teacher.tap_shapes[t] for t in teacher.stages]
        self.s2t = nn.ModuleList(bridge(s, t, teacher.stages_post_relu)
                                 for s, t in zip(s_shapes, t_shapes))
        self.t2s = nn.ModuleList(bridge(t, s, student.stages_post_relu)
                                 for s, t in zip(s_shapes, t_shapes))
        n = len(self.stages)
        directions = ["s2t", "t2s"] if config.directions == "both" else [config.directions]
        self.mixed_paths = [(d, k) for d in directions for k in range(1, n)]
        # Seeded from the trial's seed (set before construction), alike on every DDP rank so
        # all ranks take the same paths; saved in checkpoints so a resumed trial goes on alike.
        self.path_sampler = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))

    @classmethod
    def taps(cls, config: FCFDConfig, stages: Sequence[str]) -> set[str]:
        return set(stages)

    @classmethod
    def teacher_in_train_mode(cls, config: FCFDConfig) -> bool:
        return config.teacher_train_mode

    def ramp(self, epoch: int) -> float:
        return ramp(epoch, self.config.warmup_share, self.epochs)

    def get_extra_state(self) -> torch.Tensor:
        return self.path_sampler.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.path_sampler.set_state(state)

    def sample_paths(self) -> list[tuple[str, int]]:
        order = torch.randperm(len(self.mixed_paths), generator=self.path_sampler)
        return [self.mixed_paths[i] for i in order[: self.config.paths].tolist()]

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        fs = [step.student_feats[t] for t in self.stages]
        ft = [step.teacher_feats[t] for t in self.stages]
        z_t = step.teacher_feats["logits"]

        bridged = [b(f) for b, f in zip(self.s2t, fs)]
        appearance = sum(F.mse_loss(b, t) for b, t in zip(bridged, ft))
        appearance = appearance + F.mse_loss(pooled(bridged[-1]), pooled(ft[-1]))

        function, mixed = 0.0, 0.0
        for direction, k in self.sample_paths():
            if direction == "s2t":
                with batch_stats_only(step.teacher):
                    outs = step.teacher.run_stages(bridged[k - 1], k)
                    z = step.teacher.head(outs[-1])
                function = function + sum(F.mse_loss(o, t) for o, t in zip(outs, ft[k:]))
                function = function + F.mse_loss(pooled(outs[-1]), pooled(ft[-1]))
            else:
                with batch_stats_only(step.student):
                    outs = step.student.run_stages(self.t2s[k - 1](ft[k - 1]), k)
                    z = step.student.head(outs[-1])
            mixed = mixed + kd_loss(z, z_t, cfg.temperature)
        return {"mix": cfg.w_mix * mixed,
                "feat": cfg.weight * self.ramp(step.epoch) * (appearance + function)}
