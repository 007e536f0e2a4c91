"""RepDistiller's CIFAR MobileNetV2 (its mobile_half: expansion 6, width 0.5; mdistiller's
MobileNetV2): a stride-2 stem, seven groups of inverted residual blocks, a 1x1 conv to 1280.

Module names follow RepDistiller's models/mobilenetv2.py, so its checkpoints load with
strict=True. Stages end where RepDistiller's feature list does: after groups 1, 2, 4 and 6
(16, 8, 4 and 2 pixels for a 32x32 input). Blocks end in BN (a linear bottleneck), so stage
outputs are not post-ReLU.
"""

from typing import ClassVar

import torch
from torch import nn

from pcbench.models.base import TapModel, in_order

# Per group: output channels (before the width multiplier), blocks, stride of the first block.
# The first group does not expand; the others expand by the model's expansion ratio.
GROUPS = [(16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (strided), 1x1 project with no ReLU; a residual where shapes
    agree. The expanding conv is kept even at expansion 1, as in RepDistiller."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(TapModel):
    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "conv1",
        "stage1": "blocks.1",
        "stage2": "blocks.2",
        "stage3": "blocks.4",
        "stage4": "blocks.6",
        "embedding": "flatten",
        "logits": "classifier",
    }
    STAGES_POST_RELU = False

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        c = int(32 * width)
        self.conv1 = conv_bn_relu(in_channels, c, 3, stride=2)
        self.blocks = nn.ModuleList()
        for i, (c_group, n, s) in enumerate(GROUPS):
            t = 1 if i == 0 else expansion
            c_out = int(c_group * width)
            group = []
            for stride in [s] + [1] * (n - 1):
                group.append(InvertedResidual(c, c_out, stride, t))
                c = c_out
            self.blocks.append(nn.Sequential(*group))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn_relu(c, last, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        # RepDistiller's pool, sized for 32x32 inputs: a 2x2 window (ceil mode) over the 2x2
        # last map; other input sizes are not pooled to 1x1 (nor are they in RepDistiller).
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x):
        return self.conv1(x)

    def stage_blocks(self):
        b = self.blocks
        return [in_order(b[0], b[1]), b[2], in_order(b[3], b[4]), in_order(b[5], b[6])]

    def head(self, h):
        return self.classifier(torch.flatten(self.avgpool(self.conv2(h)), 1))


def mobilenetv2_half(**kw) -> MobileNetV2:
    return MobileNetV2(expansion=6, width=0.5, **kw)
