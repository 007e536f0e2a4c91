"""torchvision's ImageNet models with taps: resnet18, resnet34, resnet50, mobilenet_v2.

Each subclasses torchvision's own class (TapModel first, so its forward is the one that runs),
so the modules, the state_dict keys and torchvision's weights are exactly torchvision's.
"""

from itertools import pairwise
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenetv2 as tv_mobilenet
from torchvision.models import resnet as tv_resnet

from pcbench.models.base import TapModel, in_order


class ImageNetResNet(TapModel, tv_resnet.ResNet):
    """stem = 7x7 conv, BN, ReLU, max pool (1/4); stages = layer1..layer4 (1/4 .. 1/32)."""

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "maxpool",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "stage4": "layer4",
        "embedding": "flatten",
        "logits": "fc",
    }

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__(block, layers, num_classes=num_classes)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward_stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_blocks(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self, h):
        return self.fc(torch.flatten(self.avgpool(h), 1))


class ImageNetMobileNetV2(TapModel, tv_mobilenet.MobileNetV2):
    """stem = features[0] (1/2); stages end, as in RepDistiller's MobileNetV2, after the 24-,
    32-, 96- and 320-channel groups (1/4, 1/8, 1/16, 1/32); the head is the 1x1 conv to 1280,
    global average pool, classifier. Blocks end in BN, so stages are not post-ReLU."""

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "features.0",
        "stage1": "features.3",
        "stage2": "features.6",
        "stage3": "features.13",
        "stage4": "features.17",
        "embedding": "flatten",
        "logits": "classifier",
    }
    STAGES_POST_RELU = False
    STAGE_ENDS = (1, 4, 7, 14, 18)  # features[STAGE_ENDS[i]:STAGE_ENDS[i + 1]] is stage i + 1

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__(num_classes=num_classes)
        if in_channels != 3:
            conv = self.features[0][0]
            self.features[0][0] = nn.Conv2d(in_channels, conv.out_channels, 3, stride=2, padding=1,
                                            bias=False)
            nn.init.kaiming_normal_(self.features[0][0].weight, mode="fan_out")

    def forward_stem(self, x):
        return self.features[0](x)

    def stage_blocks(self):
        return [in_order(*self.features[a:b]) for a, b in pairwise(self.STAGE_ENDS)]

    def head(self, h):
        h = F.adaptive_avg_pool2d(self.features[-1](h), 1)
        return self.classifier(torch.flatten(h, 1))


def resnet18(**kw) -> ImageNetResNet:
    return ImageNetResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw) -> ImageNetResNet:
    return ImageNetResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw) -> ImageNetResNet:
    return ImageNetResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], **kw)


def mobilenet_v2(**kw) -> ImageNetMobileNetV2:
    return ImageNetMobileNetV2(**kw)
