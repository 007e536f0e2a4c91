"""pc: perception coherence (Nguyen et al., arXiv 2505.06595). The student copies how the
teacher *ranks* the rest of the batch by dissimilarity, seen from every input in turn.

F_r(j) is the normalised rank of j from reference r: the fraction of the other points that
look closer to r than j does (the empirical distribution function of r's row). The teacher's
is hard; the student's replaces the indicator with sigmoid((d_rj - d_rk) / tau_r). See
docs/methods.md. The soft rank needs B x B x B comparisons; they are made in chunks of
reference rows under activation checkpointing, so memory stays O(B^2 + chunk * B^2) in the
forward and the backward alike.
"""

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat
from torch.utils.checkpoint import checkpoint

from pcbench.methods import register
from pcbench.methods.base import Method, MethodConfig, Step

Dissimilarity = Literal["cosine", "euclidean", "sqeuclidean"]

CHUNK_ELEMENTS = 1 << 22  # comparisons held at once: 16 MB of float32 per intermediate
_EPS = 1e-12
# A row with no spread (a collapsed student, a constant row) carries no ranking; its tau is
# floored so the sigmoid's slope, 1 / (4 tau), stays bounded instead of reaching 1e12.
SPREAD_FLOOR_REL = 1e-3  # of the row's mean dissimilarity
SPREAD_FLOOR_ABS = 1e-4  # in the dissimilarity's own units, for rows of zeros
NORM_FLOOR_REL = 1e-3  # cosine: of the batch's mean feature norm


class PCConfig(MethodConfig):
    name: Literal["pc"] = "pc"
    weight: NonNegativeFloat = 1.0
    tau: PositiveFloat = 0.5  # ranking sharpness, relative to each reference row's spread
    tap: str = "embedding"
    delta: Dissimilarity = "cosine"
    delta_student: Dissimilarity | None = None  # None: the same as the teacher's
    rank_loss: Literal["mse", "spearman"] = "mse"


def dissimilarity(f: torch.Tensor, kind: str) -> torch.Tensor:
    """B x B dissimilarities of the flattened features. Euclidean is smoothed at zero so that
    duplicate points keep finite gradients."""
    f = f.flatten(1)
    if kind == "cosine":
        # |f| smoothed by a floor relative to the batch's mean norm: a zero vector (a dead
        # unit's row) has no direction, and F.normalize's slope there is 1e12
        sq = (f * f).sum(1, keepdim=True)
        floor = (NORM_FLOOR_REL * sq.detach().sqrt().mean()).clamp_min(SPREAD_FLOOR_ABS)
        unit = f * torch.rsqrt(sq + floor * floor)
        return 1.0 - unit @ unit.T
    sq = (f * f).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * f @ f.T).clamp_min(0.0)
    return d2 if kind == "sqeuclidean" else (d2 + _EPS).sqrt()


def hard_rank(d: torch.Tensor) -> torch.Tensor:
    """F_r(j) = #{k != r, j : d_rk < d_rj} / (B - 2); zero on the diagonal."""
    b = d.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=d.device)
    d = d.masked_fill(eye, float("inf"))
    closer = torch.searchsorted(d.sort(dim=1).values, d.contiguous(), side="left")
    return (closer.to(d.dtype) / (b - 2)).masked_fill(eye, 0.0)


def _soft_rank_rows(d_rows: torch.Tensor, tau: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    c, b = d_rows.shape
    s = torch.sigmoid((d_rows[:, :, None] - d_rows[:, None, :]) / tau[:, :, None])  # c, j, k
    not_reference = torch.ones(c, b, device=d_rows.device, dtype=d_rows.dtype)
    not_reference[torch.arange(c), rows] = 0.0
    # k == j contributes sigmoid(0) = 1/2; remove it. Row r itself is zeroed afterwards.
    ranks = ((s * not_reference[:, None, :]).sum(-1) - 0.5) / (b - 2)
    return ranks * not_reference


def row_tau(d: torch.Tensor, tau_rel: float) -> torch.Tensor:
    """tau_r = tau_rel * std_k d_rk, the spread floored (SPREAD_FLOOR_*); a scale, no gradient."""
    b = d.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=d.device)
    rows = d.detach()[off].view(b, b - 1)
    floor = (SPREAD_FLOOR_REL * rows.abs().mean(dim=1)).clamp_min(SPREAD_FLOOR_ABS)
    return tau_rel * torch.maximum(rows.std(dim=1), floor)


def soft_rank(d: torch.Tensor, tau_rel: float) -> torch.Tensor:
    """Soft F_r(j) with tau_r from `row_tau`, in chunks of reference rows."""
    b = d.shape[0]
    tau = row_tau(d, tau_rel)[:, None]
    chunk = max(1, min(b, CHUNK_ELEMENTS // (b * b)))
    parts = []
    for start in range(0, b, chunk):
        rows = torch.arange(start, min(b, start + chunk), device=d.device)
        rows_d, rows_tau = d[rows], tau[rows]
        if torch.is_grad_enabled() and d.requires_grad:
            parts.append(checkpoint(_soft_rank_rows, rows_d, rows_tau, rows, use_reentrant=False))
        else:
            parts.append(_soft_rank_rows(rows_d, rows_tau, rows))
    return torch.cat(parts)


def naive_soft_rank(d: torch.Tensor, tau_rel: float) -> torch.Tensor:
    """The definition written out with the full B x B x B tensor: the reference that tests and
    benchmarks/losses.py hold `soft_rank` to. Never used for training."""
    b = d.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=d.device)
    tau = row_tau(d, tau_rel)
    s = torch.sigmoid((d[:, :, None] - d[:, None, :]) / tau[:, None, None])  # r, j, k
    idx = torch.arange(b, device=d.device)
    keep = ((idx[None, None, :] != idx[:, None, None])  # k != r
            & (idx[None, None, :] != idx[None, :, None])).to(d.dtype)  # k != j
    return (s * keep).sum(-1) / (b - 2) * off


def rank_disagreement(fs: torch.Tensor, ft: torch.Tensor, kind: str) -> torch.Tensor:
    b = fs.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=fs.device)
    fs, ft = fs[off].view(b, b - 1), ft[off].view(b, b - 1)
    if kind == "mse":
        return ((fs - ft) ** 2).mean()
    fs, ft = fs - fs.mean(1, keepdim=True), ft - ft.mean(1, keepdim=True)
    corr = (fs * ft).sum(1) / (fs.norm(dim=1) * ft.norm(dim=1) + _EPS)
    return (1.0 - corr).mean()


def pc_loss(s: torch.Tensor, t: torch.Tensor, tau: float, delta: str = "cosine",
            delta_student: str | None = None, rank_loss: str = "mse") -> torch.Tensor:
    """L_PC between student features s and teacher features t (batch first, any shape)."""
    ft = hard_rank(dissimilarity(t.detach(), delta))
    fs = soft_rank(dissimilarity(s, delta_student or delta), tau)
    return rank_disagreement(fs, ft, rank_loss)


@register
class PerceptionCoherence(Method):
    name = "pc"
    Config = PCConfig
    min_batch = 3  # a rank is defined over the other B - 2 points of the batch

    def transfer(self, step: Step) -> dict[str, torch.Tensor]:
        cfg = self.config
        loss = pc_loss(step.student_feats[cfg.tap], step.teacher_feats[cfg.tap], cfg.tau,
                       cfg.delta, cfg.delta_student, cfg.rank_loss)
        return {"pc": cfg.weight * loss}
