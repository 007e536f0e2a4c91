"""RepDistiller's wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2): pre-activation blocks,
so the stem and stage outputs are sums, not post-ReLU; the head applies the final BN-ReLU.

Module names follow RepDistiller's models/wrn.py (convShortcut included), so its checkpoints
load with strict=True.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcbench.models.base import TapModel


class PreActBlock(nn.Module):
    """bn-relu-conv twice. Where the shape changes, the shortcut is a 1x1 conv of the
    activated input; otherwise the identity of the raw input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.convShortcut = None
        if c_in != c_out:
            self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class WideStage(nn.Module):
    """RepDistiller's NetworkBlock: the blocks live under `.layer`."""

    def __init__(self, blocks: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(PreActBlock(c_in, c_out, stride),
                                   *(PreActBlock(c_out, c_out, 1) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(TapModel):
    """depth = 6n + 4: n blocks per stage, widths 16k, 32k, 64k for widen factor k."""

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "conv1",
        "stage1": "block1",
        "stage2": "block2",
        "stage3": "block3",
        "embedding": "flatten",
        "logits": "fc",
    }
    STAGES_POST_RELU = False  # pre-activation blocks end in a sum

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet's depth is 6n + 4, not {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1)
        self.block2 = WideStage(n, widths[1], widths[2], 2)
        self.block3 = WideStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_stem(self, x):
        return self.conv1(x)

    def stage_blocks(self):
        return [self.block1, self.block2, self.block3]

    def head(self, h):
        h = F.avg_pool2d(self.relu(self.bn1(h)), 8)  # as RepDistiller: 8x8 (a 32x32 input) to 1x1
        return self.fc(torch.flatten(h, 1))


def wrn(depth: int, widen: int):
    return lambda **kw: WideResNet(depth, widen, **kw)
