"""How close a student's representation came to its teacher's, measured every epoch on a fixed
set of held-out images (the first DIAGNOSTIC_IMAGES of the validation split, or of the test
split where a final run has none):

- linear CKA (Kornblith et al. 2019) between the teacher's and the student's features at each
  tap the method reads, and at the embedding for every method: <K, L> / (|K| |L|) over the
  centred Gram matrices of the flattened features; 1 means the same representation up to a
  rotation and a scale, whatever the two widths are;
- rank agreement at the embedding: for each image, the Spearman correlation between the
  teacher's and the student's cosine dissimilarities to every other image, averaged over the
  images. It is what perception coherence optimises, measured for every method.

The teacher is frozen, so its side is computed once per trial (Reference). Plain PyTorch.
The first images of a split: right for CIFAR and digits, whose splits are shuffled; ImageNet
folders list their images by class, so there they cover a few classes only."""

import torch

from pcbench.data import DataSource
from pcbench.models import Tapped

DIAGNOSTIC_IMAGES = 512  # CKA and Spearman estimates settle well below this; 1 MB Grams
EMBEDDING = "embedding"


def diagnostic_split(data: DataSource) -> str | None:
    """Held-out images to measure on: validation, or test for a run trained on all the rest."""
    return next((split for split in ("val", "test") if data.size(split) >= 3), None)


@torch.no_grad()
def features(model: Tapped, data: DataSource, split: str, memory_format=torch.contiguous_format,
             batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The model's taps on the split's first DIAGNOSTIC_IMAGES images, in evaluation mode, as
    float32 rows (one per image)."""
    was_training = model.model.training  # the wrapped model's mode, not the new wrapper's
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    seen = 0
    for x, _, _ in data.batches(split, batch_size):
        x = x[:DIAGNOSTIC_IMAGES - seen].contiguous(memory_format=memory_format)
        for name, value in model(x).items():
            if name != "logits":
                parts.setdefault(name, []).append(value.float().flatten(1))
        seen += len(x)
        if seen >= DIAGNOSTIC_IMAGES:
            break
    model.train(was_training)
    return {name: torch.cat(values) for name, values in parts.items()}


def centred_gram(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(0, keepdim=True)
    gram = rows @ rows.T
    return gram / gram.norm().clamp_min(1e-12)  # unit Frobenius norm: CKA is then a dot product


def cosine_dissimilarity(rows: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(rows, dim=1, eps=1e-12)
    return 1.0 - unit @ unit.T


def row_ranks(d: torch.Tensor) -> torch.Tensor:
    """Each row's ranks of its off-diagonal entries, standardised (mean 0, norm 1): the dot
    product of two such rows is their Spearman correlation. Ties are broken by position; with
    real-valued dissimilarities they are rare."""
    n = d.shape[0]
    off = d[~torch.eye(n, dtype=torch.bool, device=d.device)].view(n, n - 1)
    ranks = off.argsort(1).argsort(1).double()
    ranks = ranks - ranks.mean(1, keepdim=True)
    return ranks / ranks.norm(dim=1, keepdim=True)


class Reference:
    """The teacher's side of the diagnostics, computed once: its centred Grams per tap and the
    ranks of its embedding's dissimilarities."""

    def __init__(self, teacher_feats: dict[str, torch.Tensor]):
        self.grams = {name: centred_gram(rows) for name, rows in teacher_feats.items()}
        self.ranks = (row_ranks(cosine_dissimilarity(teacher_feats[EMBEDDING]))
                      if EMBEDDING in teacher_feats else None)

    def compare(self, student_feats: dict[str, torch.Tensor]) -> dict[str, float]:
        """`cka/<tap>` for each tap both sides have, and `rank_agreement` at the embedding."""
        out = {f"cka/{name}": float((gram * centred_gram(student_feats[name])).sum())
               for name, gram in sorted(self.grams.items()) if name in student_feats}
        if self.ranks is not None and EMBEDDING in student_feats:
            mine = row_ranks(cosine_dissimilarity(student_feats[EMBEDDING]))
            out["rank_agreement"] = float((mine * self.ranks).sum(1).mean())
        return out
