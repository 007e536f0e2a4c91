"""RepDistiller's CIFAR ShuffleNets (ShuffleV1: groups 3; ShuffleV2: net size 1): a 1x1 stem
with no downsampling, three downsampling stages at 16, 8 and 4 pixels, a 4x4 average pool.

Module names follow RepDistiller's models/ShuffleNetv1.py and ShuffleNetv2.py, so its
checkpoints load with strict=True. Channel shuffle and split are functions of the forward
(they hold no weights), written without reading sizes into Python so torch.fx can trace them.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcbench.models.base import TapModel


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*k, H, W] -> [N, k*g, H, W]: channel j of group i moves to position j*g + i."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def pointwise(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False)


def depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, then add the input, or (strided)
    concatenate its 3x3 average pool. The unit right after the 24-channel stem does not group
    its first conv (too few channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        mid = c_out // 4
        self.first_groups = 1 if c_in == 24 else groups
        self.stride = stride
        self.conv1 = pointwise(c_in, mid, self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = depthwise(mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = pointwise(mid, c_out, groups)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(TapModel):
    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "embedding": "flatten",
        "logits": "linear",
    }

    def __init__(self, widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = pointwise(in_channels, 24)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for i, (width, n) in enumerate(zip(widths, blocks)):
            # The strided first unit concatenates its input, so it adds only width - c channels.
            units = [ShuffleV1Unit(c, width - c, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            c = width
        self.linear = nn.Linear(c, num_classes)

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stage_blocks(self):
        return [self.layer1, self.layer2, self.layer3]

    def head(self, h):
        return self.linear(torch.flatten(F.avg_pool2d(h, 4), 1))  # as RepDistiller: 4x4 to 1x1


class ShuffleV2Unit(nn.Module):
    """Split the channels in halves; keep the first, run the second through 1x1, depthwise
    3x3, 1x1; concatenate and shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.conv1 = pointwise(self.half, self.half)
        self.bn1 = nn.BatchNorm2d(self.half)
        self.conv2 = depthwise(self.half, 1)
        self.bn2 = nn.BatchNorm2d(self.half)
        self.conv3 = pointwise(self.half, self.half)
        self.bn3 = nn.BatchNorm2d(self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, through = x[:, : self.half], x[:, self.half:]
        out = F.relu(self.bn1(self.conv1(through)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Two strided branches, each to half the output channels: depthwise then 1x1 (left),
    1x1, depthwise, 1x1 (right); concatenate and shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.conv1 = depthwise(c_in, 2)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = pointwise(c_in, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = pointwise(c_in, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = depthwise(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = pointwise(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(TapModel):
    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "embedding": "flatten",
        "logits": "linear",
    }

    def __init__(self, widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
                 blocks: tuple[int, int, int] = (3, 7, 3), num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = pointwise(in_channels, 24)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for i, (width, n) in enumerate(zip(widths, blocks)):
            units = [ShuffleV2Down(c, width), *(ShuffleV2Unit(width) for _ in range(n))]
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
            c = width
        self.conv2 = pointwise(c, widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stage_blocks(self):
        return [self.layer1, self.layer2, self.layer3]

    def head(self, h):
        h = F.relu(self.bn2(self.conv2(h)))  # the 1x1 conv to 1024 channels belongs to the head
        return self.linear(torch.flatten(F.avg_pool2d(h, 4), 1))  # as RepDistiller: 4x4 to 1x1
