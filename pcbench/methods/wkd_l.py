"""wkd_l: Wasserstein distance for logit distillation, WKD-L (Lv et al., NeurIPS 2024), as the
authors' code (JiamingLv/WKD) runs it on CIFAR-100.

The student's softened prediction over the non-target classes is moved onto the teacher's by
entropic optimal transport (Sinkhorn), with a ground cost between classes taken from how alike
the teacher finds them: 1 - exp(-(1 - CKA)), CKA the linear centred kernel alignment of the
teacher's last-stage features of two classes. So probability put on a class the teacher finds
close to the right one costs little, unlike KL's class-by-class comparison. NKD's target term
(the teacher's target probability times the student's log-probability) is added unweighted.

The class cost is fixed before training, from the teacher alone: the authors compute it once,
offline, from the frozen teacher over the training set (no augmentation) and load it from a
file. Here `prepare` computes it the same way before the first step; the engine must call it
(the method sees no data set otherwise). `cost: classifier` is the authors' other option
(cosine distances of the teacher's classifier rows), which needs no data.
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
from pcbench.methods.nkd import target_term
from pcbench.models import ModelInfo, TapModel, Tapped

# Features held on the device while the class cost is computed: beyond this, a clear error
# instead of running out of memory (ImageNet's last-stage maps need 128 GB; its logits 5 GB).
_MAX_CKA_BYTES = 24 * 2**30


class WKDLConfig(MethodConfig):
    name: Literal["wkd_l"] = "wkd_l"
    weight: NonNegativeFloat = 600.0  # 200 (and T 6) for wrn_40_2 -> ShuffleNetV1; 30 on ImageNet
    temperature: PositiveFloat = 8.0
    # entropic regularisation, in units of the cost (below 0.0125 exp(-cost / lambda) leaves
    # float32's normal range)
    sinkhorn_lambda: float = Field(0.05, ge=0.0125)
    sinkhorn_iterations: PositiveInt = 10
    # where the class cost comes from: CKA of the teacher's last-stage features (the authors'
    # CIFAR-100 matrices), of its logits (their ImageNet ones), or its classifier's rows
    cost: Literal["cka_features", "cka_logits", "classifier"] = "cka_features"
    # the weight stays until this share of the epochs (150 of 240), then decays by cosine to 0
    # at the last epoch (their ImageNet configs: 0, a decay over the whole run)
    decay_share: float = Field(150 / 240, ge=0.0, le=1.0)


def cosine_decay(epoch: int, share: float, epochs: int) -> float:
    """The authors' loss-weight schedule: 1 through the first `share` of the epochs, then
    0.5 (1 + cos(pi (e - start) / (epochs - start))), reaching 0 at the last epoch (e counted
    from 1, as theirs)."""
    start, e = share * epochs, epoch + 1
    return 1.0 if e <= start else 0.5 * (1.0 + math.cos(math.pi * (e - start) / (epochs - start)))


def _log_kernel_times(kernel: torch.Tensor, log_x: torch.Tensor) -> torch.Tensor:
    """log(K exp(log_x)) for a batch, exp taken after subtracting the largest entry, so the
    scalings neither overflow nor underflow however far the iterations drive them."""
    top = log_x.max(1, keepdim=True).values.detach()
    return torch.bmm(kernel, torch.exp(log_x - top)[:, :, None]).squeeze(2).log() + top


def sinkhorn_plan(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, reg: float,
                  iterations: int) -> torch.Tensor:
    """Entropic transport plans of a batch of problems, rows with mass a (B x n), columns b
    (B x m), cost B x n x m: Sinkhorn's iteration as the authors run it (u from 1/n, then v
    and u in turn, u last, so the rows hold a exactly), differentiated through every iteration.

    The scalings are kept as logarithms, the kernel K = exp(-cost / reg) as a matrix (a normal
    float32 while cost / reg < 87: the cost is below 1 and reg >= 0.0125). The authors' code
    keeps plain scalings and adds 1e-8 to each division, which pulls the plan off its
    marginals once small probabilities meet a small reg; at their setting the two agree to
    about 1e-4 (tests/test_wkd.py). Not POT: ot.sinkhorn2 solves one problem a call (B calls a
    step), and ot.batch (POT >= 0.9.6) checks convergence with a host sync on every call,
    allocates its plain-domain scalings on the CPU (it fails on a GPU), and its log-domain
    solver keeps a B x n x m tensor per iteration for the backward (1 GB each at ImageNet's
    1000 classes); here the backward keeps K once and vectors per iteration."""
    kernel = torch.exp(-cost / reg)
    tiny = torch.finfo(a.dtype).tiny  # a probability that underflowed to 0 carries no mass
    log_a, log_b = a.clamp_min(tiny).log(), b.clamp_min(tiny).log()
    log_u = torch.full_like(a, -math.log(a.shape[1]))
    for _ in range(iterations):
        log_v = log_b - _log_kernel_times(kernel.transpose(1, 2), log_u)
        log_u = log_a - _log_kernel_times(kernel, log_v)
    return torch.exp(log_u[:, :, None] + log_v[:, None, :] - cost / reg)


def wkd_logit_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, cost: torch.Tensor,
                   t: float | torch.Tensor, reg: float = 0.05, iterations: int = 10) -> torch.Tensor:
    """Batch mean of sum(P * M) for the Sinkhorn plan P between softmax(z^S/T) and
    softmax(z^T/T) over each sample's non-target classes, M the class cost without the
    target's row and column. No T^2."""
    batch, classes = z_s.shape
    others = ~F.one_hot(y, classes).bool()
    p_s = F.softmax(z_s[others].view(batch, classes - 1) / t, 1)
    p_t = F.softmax(z_t[others].view(batch, classes - 1) / t, 1)
    index = torch.arange(classes, device=y.device).expand(batch, classes)[others].view(batch, classes - 1)
    m = cost[index[:, :, None], index[:, None, :]]
    plan = sinkhorn_plan(p_s, p_t, m, reg, iterations)
    return (plan * m).sum((1, 2)).mean()


def sharpened(distance: torch.Tensor) -> torch.Tensor:
    """The authors' ground cost from a class distance d: 1 - exp(-d) (their sharpening 1),
    then relu(.) + 1e-8 as their loss applies it."""
    return F.relu(1.0 - torch.exp(-distance)) + 1e-8


def linear_cka_distance(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - linear CKA between every two classes, as the authors' generate_cost_matrix.py.

    features: N x R x D, each sample's R rows of D numbers (the positions of a feature map, or
    one row of logits). Each class keeps its first m samples in order, m the smallest class's
    count (CIFAR-100's are all equal), and stacks them into an (m R) x D matrix X_c, centred
    over its rows. Then CKA(X_i, X_j) = ||X_j^T X_i||_F^2 / (||X_i^T X_i||_F ||X_j^T X_j||_F):
    rows of the two classes are paired by position in that order, as in the authors' code."""
    counts = torch.bincount(labels, minlength=num_classes)
    m = int(counts.min())
    if m == 0:
        raise ValueError("wkd_l: a class has no training sample, so its CKA cost is undefined; "
                         "use wkd_l.cost=classifier")
    order = torch.argsort(labels, stable=True)
    first = torch.cumsum(counts, 0) - counts
    keep = order[first[:, None] + torch.arange(m, device=labels.device)]  # C x m, in data order
    x = features[keep].flatten(1, 2)  # C x (m R) x D
    x = x - x.mean(1, keepdim=True)
    classes, _, dims = x.shape
    self_norm = torch.linalg.matrix_norm(x.transpose(1, 2) @ x)
    cross = torch.empty(classes, classes, dtype=x.dtype, device=x.device)
    chunk = max(1, 2**26 // (dims * dims))  # D x D blocks at a time: bounded memory
    for i in range(classes):
        for j in range(0, classes, chunk):
            cross[i, j:j + chunk] = (x[i].T @ x[j:j + chunk]).square().sum((1, 2))
    cka = cross / (self_norm[:, None] * self_norm[None, :]).clamp_min(1e-12)
    return 1.0 - cka


def classifier_distance(teacher: TapModel) -> torch.Tensor:
    """1 - cosine similarity of the rows of the teacher's last linear layer (the authors'
    `COST_MATRIX: fc` option)."""
    head = teacher.get_submodule(teacher.TAP_NODES["logits"])
    weight = [m for m in head.modules() if isinstance(m, nn.Linear)][-1].weight.detach().float()
    unit = F.normalize(weight, dim=1)
    return 1.0 - unit @ unit.T


@torch.no_grad()
def teacher_rows(teacher: TapModel, data, tap: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's `tap` on every training sample, unaugmented, in evaluation mode and
    float32: (N x R x D rows, labels), R the positions of a map (1 for logits)."""
    tapped = Tapped(teacher, set() if tap == "logits" else {tap})
    was_training = teacher.training
    tapped.eval()
    rows = labels = None
    seen = 0
    try:
        for x, y, _ in data.batches("train", 256):
            f = tapped(x)[tap].float()
            f = f.flatten(2).transpose(1, 2) if f.dim() == 4 else f[:, None, :]
            if rows is None:
                total = data.size("train")
                if total * f[0].numel() * 4 > _MAX_CKA_BYTES:
                    raise ValueError(f"wkd_l.cost=cka_features keeps the teacher's {tap} of all "
                                     f"{total} training images ({total * f[0].numel() * 4 / 2**30:.0f} "
                                     f"GiB); use wkd_l.cost=cka_logits (the authors' ImageNet "
                                     f"cost) or classifier")
                rows = torch.empty(total, *f.shape[1:], device=f.device)
                labels = torch.empty(total, dtype=torch.long, device=f.device)
            rows[seen:seen + len(f)], labels[seen:seen + len(f)] = f, y
            seen += len(f)
    finally:
        teacher.train(was_training)
    return rows[:seen], labels[:seen]


@register
class WKDLogit(Method):
    name = "wkd_l"
    Config = WKDLConfig
    reads_teacher_logits = True
    logit_hooks = True  # both terms read the logits and T through the hooks (+ls, +ctkd)
    # It is itself a logit distillation (a Wasserstein distance in place of KD's KL, plus
    # NKD's target term): wkd_l+kd would match the logits twice, as dkd+kd would.
    takes_kd = False

    def __init__(self, config: WKDLConfig, student: ModelInfo, teacher: ModelInfo, data: DataInfo):
        super().__init__(config, student, teacher, data)
        self.epochs = data.epochs
        self.teacher_last_stage = teacher.stages[-1]  # the teacher's own deepest stage
        # fixed once computed; saved with checkpoints, so a resumed trial keeps its cost
        self.register_buffer("class_cost", torch.zeros(data.num_classes, data.num_classes))
        self._checked = False  # whether the cost has been seen set (checked once: a GPU sync)

    def prepare(self, teacher: TapModel, data) -> None:
        """Before training: the class cost from the frozen teacher (over the training split of
        `data`, a pcbench DataSource, for the CKA costs), as the authors compute it offline.
        Under DDP rank 0's matrix is used by every rank."""
        cfg = self.config
        if cfg.cost == "classifier":
            distance = classifier_distance(teacher)
        else:
            tap = "logits" if cfg.cost == "cka_logits" else self.teacher_last_stage
            rows, labels = teacher_rows(teacher, data, tap)
            distance = linear_cka_distance(rows, labels, self.class_cost.shape[0])
            del rows
        cost = sharpened(distance)  # on the teacher's device, which a DDP broadcast needs
        if dist.is_initialized():
            dist.broadcast(cost, 0)
        self.class_cost.copy_(cost)
        self._checked = True

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        if not self._checked:
            if not self.class_cost.any():  # neither prepared nor restored from a checkpoint
                if cfg.cost != "classifier":
                    raise RuntimeError("wkd_l's class cost was never computed: call "
                                       "prepare(teacher, data) before training")
                self.class_cost.copy_(sharpened(classifier_distance(step.teacher)))
            self._checked = True
        z_s, z_t = self.distill_logits(step)
        wd = wkd_logit_loss(z_s, z_t, step.y, self.class_cost, self.temperature(step), cfg.sinkhorn_lambda,
                            cfg.sinkhorn_iterations)
        weight = cfg.weight * cosine_decay(step.epoch, cfg.decay_share, self.epochs)
        return {"wkd_l": weight * wd, "target": target_term(z_s, z_t, step.y)}
