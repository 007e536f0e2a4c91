"""RepDistiller's CIFAR ResNet50 (models/resnetv2.py): ImageNet's bottleneck stages behind a 3x3,
stride-1 stem with no max pool, so a 32x32 input reaches the four stages at 32, 16, 8, 4 pixels.

Module names follow RepDistiller's, so its checkpoints load with strict=True.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcbench.models.base import TapModel


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the shortcut (1x1 conv-bn where the
    shape changes)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class BottleneckResNet(TapModel):
    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "stage4": "layer4",
        "embedding": "flatten",
        "logits": "linear",
    }

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 2, 2))):
            stage = [Bottleneck(c, planes, stride)]
            c = planes * Bottleneck.expansion
            stage += [Bottleneck(c, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stage_blocks(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self, h):
        return self.linear(torch.flatten(self.avgpool(h), 1))


def resnet50_cifar(**kw) -> BottleneckResNet:
    return BottleneckResNet((3, 4, 6, 3), **kw)
