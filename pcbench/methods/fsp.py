"""fsp: flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller: an initialisation
stage alone transfers. For each pair of consecutive layers (stem, stage1, ..., the last
stage) the FSP matrix G[b, j, i] = mean over positions of top_j * bottom_i (the larger map
average-pooled to the smaller) is matched in MSE between student and teacher, summed over the
pairs. Needs a teacher and a student with as many channels at each of those layers.
Distillation afterwards is the label term (plus KD in the `+kd` variant), as RepDistiller's
`loss_kd = 0` for fsp."""

from typing import Literal

import torch
import torch.nn.functional as F

from pcbench.methods import register
from pcbench.methods.base import InitStageConfig, InitStageMethod, Step, pool_to_smaller
from pcbench.models.roles import common_stages


class FSPConfig(InitStageConfig):
    name: Literal["fsp"] = "fsp"


def fsp_matrices(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """B x C_top x C_bottom per consecutive pair of maps."""
    matrices = []
    for bottom, top in zip(maps, maps[1:]):
        bottom, top = pool_to_smaller(bottom, top)
        matrices.append(torch.einsum("bihw,bjhw->bji", bottom, top) / (bottom.shape[2] * bottom.shape[3]))
    return matrices


@register
class FlowOfSolutionProcedure(InitStageMethod):
    name = "fsp"
    distils_after_init = False  # then the label term alone: no teacher forward
    Config = FSPConfig
    same_stages = True

    @classmethod
    def taps(cls, config, stages):
        return {"stem", *stages}

    @classmethod
    def check_pair(cls, config, student, teacher):
        layers = ["stem", *common_stages(student.stages, teacher.stages)]
        s = [student.tap_shapes[t][0] for t in layers]
        t = [teacher.tap_shapes[t][0] for t in layers]
        if len(student.stages) != len(teacher.stages) or s != t:
            raise ValueError(f"fsp matches the channels of the stem and every stage one to one, but the "
                             f"student has {s} and the teacher {t}; choose a pair of one width")

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        self.layers = ["stem", *student.stages]

    def initialise(self, step: Step) -> dict[str, torch.Tensor]:
        s = fsp_matrices([step.student_feats[t] for t in self.layers])
        t = fsp_matrices([step.teacher_feats[t] for t in self.layers])
        return {"fsp": sum(F.mse_loss(a, b) for a, b in zip(s, t))}
