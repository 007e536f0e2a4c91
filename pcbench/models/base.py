"""The model contract: named taps and stages, so methods ask for layers by name."""

from typing import ClassVar

import torch
from torch import nn


class TapModel(nn.Module):
    """A classifier split as stem -> stages -> pool (the embedding) -> fc (the logits).

    Tap names map to torchvision feature-extraction node names. Stage boundaries are what
    FCFD switches networks at; `run_stages` and `head` let it resume a forward mid-network.
    """

    stem: nn.Module
    stages: nn.ModuleList
    pool: nn.Module
    fc: nn.Module

    # Subclasses with another structure override this map.
    TAP_NODES: ClassVar[dict[str, str]] = {
        "stage1": "stages.0",
        "stage2": "stages.1",
        "stage3": "stages.2",
        "embedding": "pool",
        "logits": "fc",
    }

    # Whether stage outputs are post-ReLU (FCFD's bridges into this model end in LeakyReLU).
    STAGES_POST_RELU: ClassVar[bool] = True

    @property
    def stage_taps(self) -> list[str]:
        return [f"stage{i + 1}" for i in range(len(self.stages))]

    def run_stages(self, h: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Outputs of stages[start:], fed with `h` (the output of stage `start`, 0 = stem)."""
        outputs = []
        for stage in self.stages[start:]:
            h = stage(h)
            outputs.append(h)
        return outputs

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)
