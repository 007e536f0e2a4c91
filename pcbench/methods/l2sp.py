"""l2sp: L2-SP (Li, Grandvalet & Davoine, ICML 2018), fine-tuning with the starting point as
the reference. The student starts from the teacher's weights (train.init_from_teacher), so
the teacher's parameters are the starting point w0:
    l2sp = alpha / 2 * ||w_S - w0_S||^2     the weights the student shares with w0
    head = beta / 2 * ||w_new||^2           the new classifier, which has no w0
As the authors' code (holyseven/TransferLearningClassification, `_decay` mode 1, the mode of
their train.sh) penalises variables named `weights`, the penalty reads the conv kernels and
linear matrices (parameters of two or more dimensions), not biases nor BatchNorm's scale and
shift. Their setting: alpha 0.1, beta 0.01."""

from typing import ClassVar, Literal

import torch
from pydantic import NonNegativeFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step
from pcbench.models import TapModel


class L2SPConfig(MethodConfig):
    name: Literal["l2sp"] = "l2sp"
    alpha: NonNegativeFloat = 0.1  # towards the starting point
    beta: NonNegativeFloat = 0.01  # the new classifier towards zero


def head_prefix(model: TapModel) -> str:
    """The parameter-name prefix of the layer that gives the logits (the classifier that
    init_from_teacher leaves at its fresh initialisation)."""
    return model.TAP_NODES["logits"] + "."


def penalised(model: TapModel) -> dict[str, torch.Tensor]:
    """The weights L2-SP reads, by name: conv kernels and linear matrices."""
    return {name: p for name, p in model.named_parameters() if p.ndim > 1}


def l2sp_terms(student: TapModel, start: TapModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(||w_S - w0_S||^2, ||w_new||^2) over the penalised weights: the student's shared ones
    against `start`'s of the same name, and the student's classifier's."""
    new = head_prefix(student)
    reference = dict(start.named_parameters())
    shared, fresh = [], []
    for name, w in penalised(student).items():
        if name.startswith(new):
            fresh.append(w.pow(2).sum())
        else:
            shared.append((w - reference[name].detach()).pow(2).sum())
    zero = next(student.parameters()).new_zeros(())
    return sum(shared, zero), sum(fresh, zero)


@register
class L2SP(Method):
    name = "l2sp"
    Config = L2SPConfig
    # Refused, when the configuration is built, unless the student starts from the teacher's
    # weights: they are its reference.
    starts_from_teacher: ClassVar[bool] = True

    def reads_teacher(self, epoch: int) -> bool:
        return self.adds_kd  # its weights, not its taps: the engine may skip the teacher's forward

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        shared, fresh = l2sp_terms(step.student, step.teacher)
        return {"l2sp": self.config.alpha / 2 * shared, "head": self.config.beta / 2 * fresh}
