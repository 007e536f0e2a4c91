"""ot: representation transfer by optimal transport (Li et al., arXiv 2007.06737).

A layer is a set of neurons, each the vector of its responses over the batch. Two layers are
close when their neurons can be matched, in any order, to neurons that respond alike: the OT
cost between the two sets. Invariant to neuron order, and teacher and student widths may
differ (no projector). Gradients hold the optimal plan fixed (envelope theorem).
"""

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step, TapList


class OTConfig(MethodConfig):
    name: Literal["ot"] = "ot"
    weight: NonNegativeFloat = 1.0
    taps: TapList = ["last_stage"]  # layer roles or tap names (see pcbench.models.roles)
    solver: Literal["exact", "sinkhorn"] = "exact"
    epsilon: PositiveFloat = 0.05  # Sinkhorn regularisation, relative to the median cost
    normalize: Literal["none", "zscore"] = "none"
    spatial: Literal["pool", "flatten"] = "pool"


def neurons(f: torch.Tensor, spatial: str, normalize: str) -> torch.Tensor:
    """Channels as rows: (channels, responses). Conv maps are pooled over space, or flattened
    so that each response is one (sample, position)."""
    if f.dim() == 4:
        f = f.mean((2, 3)) if spatial == "pool" else f.permute(0, 2, 3, 1).flatten(0, 2)
    a = f.flatten(1).T if f.dim() > 2 else f.T
    if normalize == "zscore":
        a = (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-6)
    return a


def neuron_cost(a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """C_kl = ||a^T_k - a^S_l||^2 / n over the n responses."""
    import ot  # POT (and SciPy) load when an OT loss runs, not with every method
    return ot.dist(a_t, a_s, metric="sqeuclidean") / a_t.shape[1]


def ot_loss(cost: torch.Tensor, solver: str = "exact", epsilon: float = 0.05) -> torch.Tensor:
    import ot
    p, q = cost.shape
    a = torch.full((p,), 1.0 / p, dtype=cost.dtype, device=cost.device)
    b = torch.full((q,), 1.0 / q, dtype=cost.dtype, device=cost.device)
    if solver == "exact":
        return ot.emd2(a, b, cost)  # POT sets the envelope gradient: the optimal plan
    reg = epsilon * cost.detach().flatten().quantile(0.5).clamp_min(1e-12)
    plan = ot.sinkhorn(a, b, cost.detach(), reg.item(), method="sinkhorn_log",
                       numItermax=5000, stopThr=1e-6)
    return (plan * cost).sum()


@register
class OptimalTransport(Method):
    name = "ot"
    Config = OTConfig

    @classmethod
    def check_pair(cls, config: OTConfig, student, teacher) -> None:
        if config.spatial != "flatten":
            return
        for tap in config.taps:
            s, t = student.tap_shapes[tap][1:], teacher.tap_shapes[tap][1:]
            if s != t:
                raise ValueError(f"ot spatial=flatten matches responses position by position, but "
                                 f"{tap} is {'x'.join(map(str, s)) or 'flat'} in the student and "
                                 f"{'x'.join(map(str, t)) or 'flat'} in the teacher; use "
                                 f"ot.spatial=pool or taps of the same size")

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        total = 0.0
        for tap in cfg.taps:
            a_t = neurons(step.teacher_feats[tap].float(), cfg.spatial, cfg.normalize)
            a_s = neurons(step.student_feats[tap].float(), cfg.spatial, cfg.normalize)
            total = total + ot_loss(neuron_cost(a_t, a_s), cfg.solver, cfg.epsilon)
        return {"ot": cfg.weight * total}
