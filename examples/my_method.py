"""Your method in one file (docs/tutorial.md): the student's features, projected to the
teacher's width, point the same way as the teacher's. Load it with --plugin."""

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat
from torch import nn

from pcbench.methods import Method, MethodConfig, Step, register


class MineConfig(MethodConfig):
    name: Literal["mine"] = "mine"
    weight: PositiveFloat = 1.0
    tap: str = "embedding"  # a tap name, or a layer role such as last_stage


@register
class Mine(Method):
    name = "mine"
    Config = MineConfig
    # searched with the training knobs every method shares; the first point is the default above
    space: ClassVar[dict[str, Any]] = {
        "method.weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        "method.tap": {"type": "categorical", "choices": ["embedding", "last_stage"]},
    }

    def __init__(self, config, student, teacher, data):
        super().__init__(config, student, teacher, data)
        tap = self.config.tap
        # trained with the student; 1x1 conv for maps, linear for vectors
        s, t = student.tap_shapes[tap][0], teacher.tap_shapes[tap][0]
        self.project = nn.Conv2d(s, t, 1) if len(student.tap_shapes[tap]) == 3 else nn.Linear(s, t)

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        s = self.project(step.student_feats[self.config.tap]).flatten(1)
        t = step.teacher_feats[self.config.tap].flatten(1)
        return {"mine": self.config.weight * (1 - F.cosine_similarity(s, t)).mean()}
