"""The model contract: named taps and stages, so methods ask for layers by name."""

import re
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

Block = Callable[[torch.Tensor], torch.Tensor]


class TapModel(nn.Module):
    """A classifier split as stem -> stages -> head (pool to the embedding, then classify).

    A model says how to run each part (`forward_stem`, `stage_blocks`, `head`) rather than
    holding attributes of fixed names, so zoo models keep the module names, and so the
    state_dict keys, of the code their published checkpoints came from.

    Every model has the taps `stem`, `stage1..n`, `embedding` (pooled and flattened) and
    `logits`; `TAP_NODES` maps them to torchvision feature-extraction node names (a module
    path names the last node inside that module). Stage boundaries are where FCFD switches
    networks; `run_stages` and `head` let it resume a forward mid-network. The forward must
    stay traceable by torch.fx, which `Tapped` uses to read the taps.
    """

    TAP_NODES: ClassVar[dict[str, str]]
    # Whether stage outputs are post-ReLU (FCFD's bridges into this model end in LeakyReLU).
    STAGES_POST_RELU: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "TAP_NODES" in cls.__dict__:  # checked once, where a class declares its taps
            taps = list(cls.TAP_NODES)
            n = len(cls.stage_names())
            expected = ["stem", *(f"stage{i + 1}" for i in range(n)), "embedding", "logits"]
            if taps != expected:
                raise TypeError(f"{cls.__name__}.TAP_NODES must list {expected} in order, not {taps}")

    @classmethod
    def stage_names(cls) -> list[str]:
        """`stage1..n`, known from the class alone (no model needs to be built)."""
        return [t for t in cls.TAP_NODES if re.fullmatch(r"stage\d+", t)]

    @property
    def stage_taps(self) -> list[str]:
        return self.stage_names()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> stem output (the input of stage 1)."""
        raise NotImplementedError

    def stage_blocks(self) -> Sequence[Block]:
        """One callable per stage: stage i maps stage i-1's output (the stem's for i = 1) to
        its own. Registered submodules, or functions over them; never new modules."""
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last stage output -> logits: pool, flatten (the embedding), classify."""
        raise NotImplementedError

    def run_stages(self, h: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Outputs of stages[start:], fed with `h` (the output of stage `start`, 0 = stem)."""
        outputs = []
        for stage in self.stage_blocks()[start:]:
            h = stage(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.forward_stem(x)
        for stage in self.stage_blocks():
            h = stage(h)
        return self.head(h)


def in_order(*modules: nn.Module) -> Block:
    """One stage made of several registered modules, run one after the other. A function,
    not an nn.Sequential, so the modules stay registered once, under their own names."""

    def run(h: torch.Tensor) -> torch.Tensor:
        for module in modules:
            h = module(h)
        return h

    return run
