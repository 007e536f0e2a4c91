"""ce: the student trained alone on labels (no teacher): the 'student' row of every KD table."""

from typing import Literal

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig


class CEConfig(MethodConfig):
    name: Literal["ce"] = "ce"


@register
class CrossEntropy(Method):
    name = "ce"
    Config = CEConfig
    needs_teacher = False
