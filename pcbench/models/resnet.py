"""RepDistiller's CIFAR ResNets (resnet8..110, resnet8x4, resnet32x4): a 3x3 stem and three
stages of basic blocks at 32, 16 and 8 pixels, then an 8x8 average pool.

Module names follow RepDistiller's models/resnet.py, so its checkpoints load with strict=True.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcbench.models.base import TapModel


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, plus the shortcut (a strided 1x1 conv-bn where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def basic_stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride),
                         *(BasicBlock(c_out, c_out) for _ in range(blocks - 1)))


class CifarResNet(TapModel):
    """depth = 6n + 2: n basic blocks per stage; widths = (stem, stage1, stage2, stage3)."""

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "embedding": "flatten",
        "logits": "fc",
    }

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2, not {depth}")
        n = (depth - 2) // 6
        w0, w1, w2, w3 = widths
        self.conv1 = conv3x3(in_channels, w0)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = basic_stage(w0, w1, n, stride=1)
        self.layer2 = basic_stage(w1, w2, n, stride=2)
        self.layer3 = basic_stage(w2, w3, n, stride=2)
        self.avgpool = nn.AvgPool2d(8)  # as RepDistiller: the 8x8 map of a 32x32 input, to 1x1
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stem(self, x):
        return self.relu(self.bn1(self.conv1(x)))

    def stage_blocks(self):
        return [self.layer1, self.layer2, self.layer3]

    def head(self, h):
        return self.fc(torch.flatten(self.avgpool(h), 1))


def resnet(depth: int, wide: bool = False):
    """RepDistiller's resnet<depth>, or resnet<depth>x4 (4x the channels, a 32-channel stem)."""
    widths = (32, 64, 128, 256) if wide else (16, 16, 32, 64)
    return lambda **kw: CifarResNet(depth, widths, **kw)
